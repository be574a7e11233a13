"""The paper's assembly presets: they validate offline and load from local weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import transformers
import yaml
from tiny_models import save_tiny_llama

from chatnt_core import ChatNTModel
from chatnt_core.config import load_config, parse_config, resolve_config
from chatnt_core.modality import Modality
from chatnt_core.presets import preset_path
from chatnt_nt import PRESETS, NTv2Model
from chatnt_nt import checkpoint as nt_checkpoint

PAPER = "chatnt-nt-v2-500m-vicuna-7b"
LLAMA2 = "chatnt-nt-v2-500m-llama-2-7b-chat"
OFFICIAL = "chatnt-official"


def read(name: str) -> dict[str, Any]:
    data = yaml.safe_load(preset_path(name).read_text())
    assert isinstance(data, dict)
    return data


def test_paper_preset_has_the_papers_sizes() -> None:
    resolved = resolve_config(load_config(PAPER))
    assert resolved.config.num_latents == 64
    assert resolved.encoders[Modality.DNA].params.preset == "500m"  # type: ignore[attr-defined]
    perceiver = resolved.projections[Modality.DNA].params
    assert perceiver.num_layers == 3 and perceiver.ffn_dim == 11008  # type: ignore[attr-defined]
    assert resolved.config.decoder.trainable is False
    assert resolved.config.encoders[Modality.DNA].trainable is True
    assert resolved.config.prompt.template == "vicuna"


def test_llama2_variant_differs_only_in_the_decoder() -> None:
    paper, variant = read(PAPER), read(LLAMA2)
    for data in (paper, variant):
        for key in ("name", "description"):
            data.pop(key)
    assert paper["decoder"]["params"]["path"] != variant["decoder"]["params"]["path"]
    paper["decoder"]["params"].pop("path")
    variant["decoder"]["params"].pop("path")
    assert paper == variant


def test_official_preset_is_the_paper_assembly_with_the_published_conventions() -> None:
    paper, official = read(PAPER), read(OFFICIAL)
    for data in (paper, official):
        for key in ("name", "description"):
            data.pop(key)
    assert official.pop("prompt") == {
        "template": "vicuna",
        "placeholder_layout": "insert_before_kept",
        "question_scope": "whole_prompt",
    }
    paper.pop("prompt")
    official_decoder = official["decoder"]["params"]
    assert official_decoder.pop("placeholder_token") == "<DNA>"
    assert official_decoder.pop("placeholder_embedding") == "clamp"
    assert official_decoder.pop("norm_eps") == {"model.norm": 1e-5}
    projection = official["encoders"]["dna"]["projection"]["params"]
    assert projection.pop("question_vocab_size") == 32000
    assert official["encoders"]["dna"].pop("trainable") is False  # weights from convert
    paper["encoders"]["dna"].pop("trainable")
    assert paper == official


@pytest.mark.parametrize("name", [PAPER, LLAMA2, OFFICIAL])
def test_paper_presets_validate_without_touching_weights(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("validation must not load or download weights")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(nt_checkpoint, "resolve_directory", refuse)
    resolve_config(load_config(name))


@pytest.mark.parametrize("name", [PAPER, LLAMA2, OFFICIAL])
def test_paper_presets_load_weights_present_locally(name: str, tmp_path: Path) -> None:
    """The preset, its weights swapped for tiny local checkpoints of the published layouts."""
    nt_dir = nt_checkpoint.save_pretrained(NTv2Model(PRESETS["tiny"]), tmp_path / "nt")
    llama_dir = save_tiny_llama(tmp_path / "decoder", max_position_embeddings=1024)
    data = read(name)
    data["encoders"]["dna"]["params"].pop("preset")  # the tiny checkpoint is not 500m-sized
    data["encoders"]["dna"]["params"]["path"] = str(nt_dir)
    data["decoder"]["params"]["path"] = str(llama_dir)
    model = ChatNTModel.from_config(parse_config(data)).eval()
    assert model.num_latents == 64
    answer = model.generate(
        ["Is there a TATA box in @promoter.fna?"], [{"promoter.fna": "TATAAAAG" * 20}], 3
    )
    assert isinstance(answer[0], str)

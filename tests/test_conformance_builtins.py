"""Every built-in component passes the plugin author's conformance suite.

``CONFORMANCE_TABLE`` says how to build each built-in small (params + BuildContext). The
components under test are read from the registry - every entry whose plugin ships in the
``chatnt`` distribution - so a new built-in without a row here fails CI until it gets one
and passes the same checks an outside plugin is held to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from tiny_models import tiny_decoder_params

from chatnt_core.modality import Modality
from chatnt_core.plugins import (
    BUILTIN_DISTRIBUTION,
    ENTRY_POINT_GROUP,
    BuildContext,
    ComponentKind,
    load_registry,
)
from chatnt_core.testing import check_component

ParamsFor = Callable[[Path], dict[str, Any]]  # a scratch directory -> params


@dataclass(frozen=True)
class Row:
    """One way to build a component small; ``params`` may need a directory for files."""

    params: dict[str, Any] | ParamsFor
    context: BuildContext
    atol: float = 1e-5

    def params_in(self, directory: Path) -> dict[str, Any]:
        return self.params(directory) if callable(self.params) else dict(self.params)


def save_tiny_esm(directory: Path) -> Path:
    """A 1-layer, 16-wide ESM protein model and its tokenizer, saved like a hub checkpoint."""
    from transformers import EsmConfig, EsmModel, EsmTokenizer

    tokens = ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO.-", "<null_1>"]
    tokens.append("<mask>")
    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    EsmTokenizer(str(vocab)).save_pretrained(directory)
    config = EsmConfig(
        vocab_size=len(tokens),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
        position_embedding_type="rotary",
        pad_token_id=tokens.index("<pad>"),
        mask_token_id=tokens.index("<mask>"),
        token_dropout=False,
    )
    EsmModel(config).save_pretrained(directory)  # with its pooler, as AutoModel loads it
    return directory


def tiny_hf_encoder(directory: Path) -> dict[str, Any]:
    return {"path": str(save_tiny_esm(directory / "tiny-esm")), "modality": "protein"}


DNA, RNA, PROTEIN = Modality.DNA, Modality.RNA, Modality.PROTEIN
PROJECTION_CONTEXT = BuildContext(
    modality=DNA, input_dim=24, output_dim=32, num_latents=4, question_vocab_size=300
)
SMALL_PERCEIVER = {"num_layers": 1, "num_heads": 4}

CONFORMANCE_TABLE: dict[str, tuple[Row, ...]] = {
    # encoders
    "char-transformer": (
        Row({}, BuildContext(modality=DNA)),
        Row({"hidden_size": 16, "num_heads": 2}, BuildContext(modality=PROTEIN)),
    ),
    "motif-cnn": (
        Row({}, BuildContext(modality=DNA)),
        Row({"both_strands": True, "kernel_size": 7}, BuildContext(modality=DNA)),
        Row({"hidden_size": 8, "kernel_size": 5}, BuildContext(modality=PROTEIN)),
    ),
    "nucleotide-transformer-v2": (Row({"preset": "tiny"}, BuildContext(modality=DNA)),),
    "esm2": (Row({"preset": "tiny"}, BuildContext(modality=PROTEIN)),),
    "rna-fm": (Row({"preset": "tiny"}, BuildContext(modality=RNA)),),
    "hf-encoder": (Row(tiny_hf_encoder, BuildContext(modality=PROTEIN)),),
    # projections
    "english-aware-perceiver": (
        Row(SMALL_PERCEIVER, PROJECTION_CONTEXT),
        Row({**SMALL_PERCEIVER, "question_embeddings": "decoder"}, PROJECTION_CONTEXT),
    ),
    "perceiver-resampler": (Row(SMALL_PERCEIVER, PROJECTION_CONTEXT),),
    "mlp": (
        Row({}, PROJECTION_CONTEXT),
        Row({"pooling": "max"}, PROJECTION_CONTEXT),
        Row({"pooling": "mean_max", "normalize_output": True}, PROJECTION_CONTEXT),
    ),
    # decoders
    "hf-causal-lm": (Row(tiny_decoder_params(), BuildContext()),),
}


def builtin_components() -> list[tuple[ComponentKind, str]]:
    """(kind, name) of every encoder, projection and decoder a built-in plugin registers."""
    builtins = {
        ep.name
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)
        if ep.dist is not None and ep.dist.name == BUILTIN_DISTRIBUTION
    }
    registry = load_registry()
    return [
        (kind, entry.name)
        for kind in (ComponentKind.ENCODER, ComponentKind.PROJECTION, ComponentKind.DECODER)
        for entry in registry.entries[kind].values()
        if entry.plugin in builtins
    ]


BUILTINS = builtin_components()


def test_every_builtin_component_has_a_conformance_row() -> None:
    components = builtin_components()
    names = {name for _, name in components}
    assert {"char-transformer", "english-aware-perceiver", "mlp", "hf-causal-lm"} <= names
    missing = sorted(names - set(CONFORMANCE_TABLE))
    assert not missing, (
        f"built-in component(s) {missing} have no row in CONFORMANCE_TABLE of "
        "tests/test_conformance_builtins.py: add small params and a BuildContext for each"
    )


@pytest.mark.parametrize(("kind", "name"), BUILTINS, ids=[f"{k}-{n}" for k, n in BUILTINS])
def test_builtin_component_conforms(kind: ComponentKind, name: str, tmp_path: Path) -> None:
    rows = CONFORMANCE_TABLE.get(name)
    if rows is None:
        pytest.fail(f"no conformance row for built-in {kind} '{name}'; add one to the table")
    for row in rows:
        report = check_component((kind, name), row.params_in(tmp_path), row.context, atol=row.atol)
        report.raise_for_failures()
        assert not any(r.reason == "skipped by the caller" for r in report.skipped)

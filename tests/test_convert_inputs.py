"""What ``chatnt convert official-chatnt`` reads and writes: the restricted unpickler, refused
parameter files, the checkpoint's round trip, and the prompt layout helpers it relies on."""

from __future__ import annotations

import io
import os
import pickle
import shutil
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from official_fixture import FIXTURES, convert_args, load_case, save_english_tokenizer, tagged
from test_cli_ask import run_cli as run

from chatnt_core import ChatNTModel
from chatnt_core.api import ChatNT
from chatnt_core.cli import main
from chatnt_core.convert import ConversionError, UnsafePickleError, load_restricted
from chatnt_core.convert.haiku_params import read_params
from chatnt_core.errors import ConfigError
from chatnt_core.merge import slot_mask
from chatnt_core.training.checkpoint import save_model


def fixture_params() -> dict[str, np.ndarray]:
    return read_params(FIXTURES / "params.npz")


def nested(flat: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """The Haiku layout of the published file: {module: {param: array}}."""
    tree: dict[str, dict[str, np.ndarray]] = {}
    for name, array in flat.items():
        module, _, param = name.rpartition("/")
        tree.setdefault(module.replace("chat_nt_", "bio_brain_"), {})[param] = array
    return tree


# ---- the restricted unpickler -----------------------------------------------------------


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "params.joblib"
    evil.write_bytes(pickle.dumps({"module": {"w": _RunsCode(marker)}}))
    with pytest.raises(UnsafePickleError, match=r"refusing to read (posix|os|nt)\.system"):
        load_restricted(evil)
    assert not marker.exists()
    # the same file through joblib's own format, and through the converter's command line
    joblib.dump({"module": {"w": _RunsCode(marker)}}, evil)
    with pytest.raises(UnsafePickleError, match="refusing"):
        load_restricted(evil)
    assert not marker.exists()


def test_other_globals_and_object_arrays_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps({"m": {"x": io.BytesIO()}}))
    with pytest.raises(UnsafePickleError, match="_io.BytesIO"):
        load_restricted(path)
    joblib.dump({"m": {"x": np.array([{"a": 1}], dtype=object)}}, path)
    with pytest.raises(UnsafePickleError, match="object"):
        load_restricted(path)


@pytest.mark.parametrize("compress", [0, 3, ("gzip", 3), ("xz", 1)])
def test_joblib_files_read_like_the_npz(tmp_path: Path, compress: object) -> None:
    flat = fixture_params()
    path = tmp_path / "params.joblib"
    joblib.dump(nested(flat), path, compress=compress)
    read = read_params(path)
    assert read.keys() == flat.keys()
    assert all(np.array_equal(read[k], flat[k]) for k in flat)


def test_plain_pickles_of_arrays_are_read(tmp_path: Path) -> None:
    tree = {"m": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float16(2.0)}}
    path = tmp_path / "p.pkl"
    for protocol in (2, 4, 5):
        path.write_bytes(pickle.dumps(tree, protocol=protocol))
        loaded = load_restricted(path)
        assert np.array_equal(loaded["m"]["w"], tree["m"]["w"])
        assert loaded["m"]["s"] == 2.0


def test_a_folder_of_safetensors_shards_reads_like_the_npz(tmp_path: Path) -> None:
    import json

    from safetensors.numpy import save_file

    flat = fixture_params()
    names = sorted(flat)
    shards = {"a.safetensors": names[::2], "b.safetensors": names[1::2]}
    for file, part in shards.items():
        save_file({n.replace("chat_nt_", "bio_brain_"): flat[n] for n in part}, tmp_path / file)
    weight_map = {n.replace("chat_nt_", "bio_brain_"): f for f, ns in shards.items() for n in ns}
    index = {"weight_map": weight_map}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    read = read_params(tmp_path)
    assert read.keys() == flat.keys()
    assert all(np.array_equal(read[k], flat[k]) for k in flat)


# ---- refused parameter files ------------------------------------------------------------

DROPPED = "chat_nt_decoder/llama_decoder/gpt_decoder_layer_1/~/ffn_RMS_norm/scale"
RESHAPED = "multi_modal_perceiver_resampler_projection/token_embed/embeddings"


@pytest.mark.parametrize(
    ("change", "message"),
    [("missing", f"has no parameter '{DROPPED}'"), ("misshapen", f"'{RESHAPED}' has shape")],
)
def test_a_missing_or_misshapen_array_is_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str, message: str
) -> None:
    flat = fixture_params()
    if change == "missing":
        del flat[DROPPED]
    else:
        flat[RESHAPED] = np.zeros((100, 63), dtype=np.float32)
    source = tmp_path / "params.npz"
    np.savez(source, **flat)
    tokenizer = save_english_tokenizer(tmp_path / "tok")
    code, _, err = run(convert_args(source, tmp_path / "out", tokenizer), capsys)
    assert code == 1
    errors = [line for line in err.splitlines() if not line.startswith("[")]  # not progress
    assert len(errors) == 1 and errors[0].startswith("error: ")
    assert message in errors[0]
    assert not (tmp_path / "out" / "latest").exists()


def test_an_unknown_parameter_and_a_missing_tokenizer_are_refused(tmp_path: Path) -> None:
    from chatnt_core.convert import convert_official

    flat = fixture_params()
    flat["chat_nt_decoder/llama_decoder/~/extra/w"] = np.zeros(3, dtype=np.float32)
    source = tmp_path / "params.npz"
    np.savez(source, **flat)
    with pytest.raises(ConversionError, match="no English tokenizer"):
        convert_official(source, tmp_path / "out")
    from chatnt_core.convert import ConvertOptions

    options = ConvertOptions(english_tokenizer=save_english_tokenizer(tmp_path / "tok"))
    with pytest.raises(ConversionError, match="extra/w"):
        convert_official(source, tmp_path / "out", options)


# ---- the converted checkpoint -----------------------------------------------------------


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("converted")
    tokenizer = save_english_tokenizer(tmp / "english_tokenizer")
    (tmp / "jax_params").mkdir()
    source = tmp / "jax_params" / "params.joblib"  # the Hub repository's layout
    joblib.dump(nested(fixture_params()), source)
    with pytest.raises(SystemExit) as info:
        main(convert_args(source, tmp / "out", tokenizer))
    assert info.value.code == 0
    return tmp / "out"


@torch.no_grad()
def last_logits(model: ChatNTModel) -> torch.Tensor:
    case = load_case("case_two")
    question, sequences = tagged(str(case["questions"][0]), str(case["dna"][0]))
    batch = model.prompt_batch([question], [sequences])
    embeds = model.embed_prompt(batch)
    mask = batch.attention_mask
    positions = torch.arange(mask.shape[1])[None]
    return model.decoder(embeds, mask, positions).logits[0, -1]


def test_the_converted_model_round_trips_through_save_and_load(
    converted: Path, tmp_path: Path
) -> None:
    model = ChatNTModel.from_checkpoint(converted).eval()
    expected = last_logits(model)
    case = load_case("case_two")
    assert np.abs(expected.numpy() - case["logits"][0, case["prompt_lengths"][0] - 1]).max() < 1e-4
    moved = tmp_path / "moved"
    shutil.copytree(converted, moved)  # the frozen parts are referenced inside the folder
    reloaded = ChatNTModel.from_checkpoint(moved).eval()
    assert torch.equal(last_logits(reloaded), expected)
    saved = save_model(reloaded, tmp_path / "resaved")
    assert torch.equal(last_logits(ChatNTModel.from_checkpoint(saved).eval()), expected)


def test_the_converted_checkpoint_is_verified_and_answers(
    converted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = converted / "checkpoint-000000"
    for part in ("encoder/model.safetensors", "decoder/model.safetensors", "english_tokenizer"):
        assert (checkpoint / part).exists()
    bot = ChatNT.from_pretrained(converted)
    assert bot.model.config.prompt.placeholder_layout == "insert_before_kept"
    assert bot.model.config.prompt.question_scope == "whole_prompt"
    code, out, _ = run(
        ["ask", str(converted), "Is there a TATA box in @s.fna ?", "--seq", "s.fna=ACGTACGTAGGC"],
        capsys,
    )
    assert code == 0 and out.strip()


def test_a_damaged_converted_file_is_refused(converted: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(converted, broken)
    weights = broken / "checkpoint-000000" / "decoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(Exception, match="decoder/model.safetensors is corrupt"):
        ChatNTModel.from_checkpoint(broken)


# ---- the layout helpers -----------------------------------------------------------------


def test_slot_mask_leaves_the_kept_placeholder_of_each_tag() -> None:
    p = 9
    ids = torch.tensor([[5, p, p, p, 6, p, p, p, p, p, p, 7]])  # K = 2: two adjacent tags
    replace = slot_mask(ids, p, 2, "replace")
    assert replace.tolist() == (ids == p).tolist()
    kept = slot_mask(ids, p, 2, "insert_before_kept")
    assert kept[0].tolist() == [False, True, True, False, False] + [True, True, False] * 2 + [False]


def test_a_norm_eps_pattern_naming_nothing_is_a_config_error() -> None:
    from tiny_models import tiny_decoder_params

    from chatnt_hf_decoders import HFCausalLM, HFCausalLMParams

    params = HFCausalLMParams.model_validate({**tiny_decoder_params(), "norm_eps": {"nope": 1e-5}})
    with pytest.raises(ConfigError, match="'nope' names no normalisation module"):
        HFCausalLM.from_params(params)
    params = HFCausalLMParams.model_validate(
        {**tiny_decoder_params(), "norm_eps": {"model.norm": 1e-3, "model.layers.*norm": 1e-4}}
    )
    decoder = HFCausalLM.from_params(params)
    modules = dict(decoder.model.named_modules())
    assert modules["model.norm"].variance_epsilon == 1e-3
    assert modules["model.layers.0.input_layernorm"].variance_epsilon == 1e-4

"""The ``nucleotide-transformer-v2`` encoder: tokenizer, checkpoint layout, maths, policies.

Nothing downloads: checkpoints are tiny random NT-v2s written in the published layout.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from chatnt_core.config import parse_config
from chatnt_core.errors import ConfigError, InvalidSequenceError
from chatnt_core.modality import Modality
from chatnt_core.model import ChatNTModel
from chatnt_core.plugins import BuildContext, ComponentKind, get_registry
from chatnt_core.presets import preset_path
from chatnt_nt import (
    NTTokenizer,
    NucleotideTransformerEncoder,
    NucleotideTransformerParams,
    build_vocab,
)

DNA = "ATCGATTTNACGTACGTAAGGCTTACGGATTTAGCNNATCGGCTAG"


def kmer_id(kmer: str) -> int:
    """Independent of the tokenizer: 6 specials, then base-4 digits in A, T, C, G order."""
    return 6 + sum("ATCG".index(ch) * 4 ** (5 - i) for i, ch in enumerate(kmer))


SINGLE = {"A": 4102, "T": 4103, "C": 4104, "G": 4105, "N": 4106}


def encoder(**params: Any) -> NucleotideTransformerEncoder:
    return NucleotideTransformerEncoder.from_params(
        NucleotideTransformerParams.model_validate({"preset": "tiny", **params})
    )


@pytest.fixture(scope="module")
def tiny() -> NucleotideTransformerEncoder:
    return encoder().eval()


@pytest.fixture
def saved(tiny: NucleotideTransformerEncoder, tmp_path: Path) -> Path:
    return tiny.save_pretrained(tmp_path / "nt")


# ---- tokenizer ---------------------------------------------------------------------------


def test_vocab_order_matches_the_published_one() -> None:
    vocab = build_vocab()
    tokens = list(vocab)
    assert len(vocab) == 4107 and list(vocab.values()) == list(range(4107))
    assert tokens[:6] == ["<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>"]
    assert [vocab[k] for k in ("AAAAAA", "AAAAAT", "AAAAAC", "AAAATA")] == [6, 7, 8, 10]
    assert all(
        vocab["".join(p)] == kmer_id("".join(p)) for p in itertools.product("ACGT", repeat=6)
    )
    assert tokens[4102:] == ["A", "T", "C", "G", "N"]


def test_token_ids_on_known_sequences() -> None:
    tok = NTTokenizer()
    assert tok.token_ids("ATCGAT") == [3, kmer_id("ATCGAT")]
    assert tok.token_ids("") == [3]
    # remainder shorter than 6 -> singles; no EOS
    assert tok.token_ids("GGGGGGCA") == [3, kmer_id("GGGGGG"), SINGLE["C"], SINGLE["A"]]
    # each N is its own token and breaks the run: ATCGAT | TT before the N | AC after
    assert tok.token_ids("ATCGATTTNAC") == [
        3, kmer_id("ATCGAT"), SINGLE["T"], SINGLE["T"], SINGLE["N"], SINGLE["A"], SINGLE["C"],
    ]  # fmt: skip
    assert tok.token_ids("NNAAAAAAC") == [
        3, SINGLE["N"], SINGLE["N"], kmer_id("AAAAAA"), SINGLE["C"],
    ]  # fmt: skip
    assert tok.tokens("ACGTACNGGGGGGT") == ["<cls>", "ACGTAC", "N", "GGGGGG", "T"]


def test_documented_input_rule_lower_case_rna_and_iupac() -> None:
    tok = NTTokenizer()
    assert tok.token_ids("atcgat") == tok.token_ids("ATCGAT")
    assert tok.token_ids("AUCGAU") == tok.token_ids("ATCGAT")
    assert tok.token_ids("ATCRYSWKMBDHVacg") == tok.token_ids("ATC" + "N" * 10 + "ACG")
    with pytest.raises(InvalidSequenceError, match=r"'-' at position 5"):
        tok.token_ids("ACGT-ACGT")


def test_padding_uses_id_1_and_mask_marks_real_tokens(tiny: NucleotideTransformerEncoder) -> None:
    tokens = tiny.tokenize(["ATCGAT", "ATCGATA"])
    assert tokens.input_ids.tolist() == [
        [3, kmer_id("ATCGAT"), 1],
        [3, kmer_id("ATCGAT"), SINGLE["A"]],
    ]
    assert tokens.mask.tolist() == [[True, True, False], [True, True, True]]


def test_tokenizer_is_fast_on_12_kb() -> None:
    sequence = ("ACGTTGCA" * 1500)[:12_000]
    start = time.perf_counter()
    ids = NTTokenizer().token_ids(sequence)
    assert time.perf_counter() - start < 0.1
    assert len(ids) == 2001


# ---- checkpoint layout -----------------------------------------------------------------


def test_saved_checkpoint_has_the_published_layout_and_round_trips(
    tiny: NucleotideTransformerEncoder, saved: Path
) -> None:
    config = json.loads((saved / "config.json").read_text())
    assert "model_type" not in config
    assert (config["hidden_size"], config["intermediate_size"], config["vocab_size"]) == (
        32,
        64,
        4107,
    )
    assert config["position_embedding_type"] == "rotary" and config["add_bias_fnn"] is False
    state = load_file(saved / "model.safetensors")
    d, f = 32, 64
    assert state["esm.embeddings.word_embeddings.weight"].shape == (4107, d)
    assert state["esm.encoder.layer.0.attention.LayerNorm.weight"].shape == (d,)
    assert state["esm.encoder.layer.0.attention.self.query.weight"].shape == (d, d)
    assert state["esm.encoder.layer.1.attention.self.value.bias"].shape == (d,)
    assert state["esm.encoder.layer.0.attention.output.dense.weight"].shape == (d, d)
    assert state["esm.encoder.layer.0.LayerNorm.bias"].shape == (d,)
    assert state["esm.encoder.layer.0.intermediate.dense.weight"].shape == (2 * f, d)
    assert state["esm.encoder.layer.0.output.dense.weight"].shape == (d, f)
    assert state["esm.encoder.emb_layer_norm_after.weight"].shape == (d,)
    assert "esm.encoder.layer.0.intermediate.dense.bias" not in state  # no FFN biases
    assert "esm.encoder.layer.0.output.dense.bias" not in state

    loaded = encoder_from(saved)
    assert loaded.model.config == tiny.model.config
    a, b = tiny.encode([DNA, "ACGT"]), loaded.encode([DNA, "ACGT"])
    assert torch.equal(a.embeddings, b.embeddings)


def encoder_from(directory: Path, **params: Any) -> NucleotideTransformerEncoder:
    entry = get_registry().get(ComponentKind.ENCODER, "nucleotide-transformer-v2")
    validated = entry.params_model.model_validate({"path": str(directory), **params})
    built = entry.build(validated, BuildContext(modality=Modality.DNA))
    assert isinstance(built, NucleotideTransformerEncoder)
    return built.eval()


def test_heads_and_unused_tables_are_ignored_and_bin_files_load(
    tiny: NucleotideTransformerEncoder, saved: Path
) -> None:
    state = load_file(saved / "model.safetensors")
    state["lm_head.decoder.weight"] = torch.zeros(4107, 32)
    state["lm_head.bias"] = torch.zeros(4107)
    state["esm.contact_head.regression.weight"] = torch.zeros(1, 32)
    (saved / "model.safetensors").unlink()
    torch.save(state, saved / "pytorch_model.bin")
    loaded = encoder_from(saved)
    assert torch.equal(tiny.encode([DNA]).embeddings, loaded.encode([DNA]).embeddings)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing", r"1 missing keys: esm\.encoder\.layer\.1\.LayerNorm\.weight"),
        ("extra", r"1 unexpected keys: esm\.encoder\.layer\.0\.attention\.self\.extra\.weight"),
        ("shape", r"intermediate\.dense\.weight \[64, 32\] \(expected \[128, 32\]\)"),
    ],
)
def test_mismatched_checkpoints_are_rejected_by_name(
    saved: Path, change: str, message: str
) -> None:
    file = saved / "model.safetensors"
    state = load_file(file)
    if change == "missing":
        del state["esm.encoder.layer.1.LayerNorm.weight"]
    elif change == "extra":
        state["esm.encoder.layer.0.attention.self.extra.weight"] = torch.zeros(2)
    else:  # a non-GLU FFN: W1 with F rows instead of 2F
        state["esm.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(64, 32)
    save_file(state, file)
    with pytest.raises(ConfigError, match=message):
        encoder_from(saved)


def test_config_overrides_and_foreign_configs(saved: Path) -> None:
    assert encoder_from(saved, layer_norm_eps=1e-12).model.final_norm.eps == 1e-12
    # the published config.json files say 1e-12; the weights were trained with 1e-5
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-12}))
    model = encoder_from(saved).model
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}
    config = json.loads((saved / "config.json").read_text())
    config["vocab_size"] = 4096
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="vocab_size is 4096"):
        encoder_from(saved)


def test_hub_ids_go_through_snapshot_download(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    calls: list[dict[str, Any]] = []

    def fake_snapshot_download(**kwargs: Any) -> str:
        calls.append(kwargs)
        return str(saved)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert encoder_from(Path("someone/nt-v2-tiny")).embed_dim == 32
    assert calls[-1]["repo_id"] == "someone/nt-v2-tiny"
    assert "config.json" in calls[-1]["allow_patterns"]
    # a size preset without path means the published repo; the sizes must then agree
    params = NucleotideTransformerParams(preset="50m", local_files_only=True)
    with pytest.raises(ConfigError, match="not the 50m size"):
        NucleotideTransformerEncoder.from_params(params)
    assert calls[-1]["repo_id"] == "InstaDeepAI/nucleotide-transformer-v2-50m-multi-species"
    assert calls[-1]["local_files_only"] is True


# ---- maths ---------------------------------------------------------------------------------


def reference_forward(
    state: dict[str, torch.Tensor], ids: torch.Tensor, heads: int
) -> torch.Tensor:
    """A straightforward NT-v2 on published keys: explicit rotary, softmax and GLU. (N,) ids."""
    eps = 1e-5

    def norm(x: torch.Tensor, key: str) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + eps) * state[f"{key}.weight"] + state[f"{key}.bias"]

    def linear(x: torch.Tensor, key: str) -> torch.Tensor:
        bias = state.get(f"{key}.bias")
        return x @ state[f"{key}.weight"].T + (0 if bias is None else bias)

    x = state["esm.embeddings.word_embeddings.weight"][ids]  # (N, D)
    n, d = x.shape
    hd = d // heads
    half = hd // 2
    angle = torch.tensor(
        [[p / 10000 ** (2 * j / hd) for j in range(half)] for p in range(n)]
    )  # (N, hd/2)
    cos, sin = angle.cos(), angle.sin()

    def rotate(t: torch.Tensor) -> torch.Tensor:  # (heads, N, hd): pair j with j + hd/2
        a, b = t[..., :half], t[..., half:]
        return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)

    layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("esm.encoder.layer."))
    for i in range(layers):
        p = f"esm.encoder.layer.{i}"
        h = norm(x, f"{p}.attention.LayerNorm")
        q, k, v = (
            linear(h, f"{p}.attention.self.{name}").view(n, heads, hd).transpose(0, 1)
            for name in ("query", "key", "value")
        )
        q, k = rotate(q / math.sqrt(hd)), rotate(k)
        weights = torch.exp(q @ k.transpose(1, 2))
        weights = weights / weights.sum(-1, keepdim=True)
        x = x + linear((weights @ v).transpose(0, 1).reshape(n, d), f"{p}.attention.output.dense")
        h = linear(norm(x, f"{p}.LayerNorm"), f"{p}.intermediate.dense")  # (N, 2F)
        gate, lin = h[:, : h.shape[1] // 2], h[:, h.shape[1] // 2 :]
        x = x + linear(gate * torch.sigmoid(gate) * lin, f"{p}.output.dense")
    return norm(x, "esm.encoder.emb_layer_norm_after")


def test_blocks_match_an_independent_reference() -> None:
    model = encoder(seed=3).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # larger weights than the init, norms and biases too
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3, generator=generator)
    state = {k: v.double() for k, v in load_state(model).items()}
    tokens = model.tokenize([DNA])
    expected = reference_forward(state, tokens.input_ids[0], heads=4)
    with torch.no_grad():
        got = model.model.double()(tokens.input_ids, tokens.mask)[0]
    assert (got - expected).abs().max() < 1e-5


def load_state(model: NucleotideTransformerEncoder) -> dict[str, torch.Tensor]:
    from chatnt_nt.checkpoint import published_state_dict

    return published_state_dict(model.model)


def test_sdpa_and_manual_attention_agree(tiny: NucleotideTransformerEncoder) -> None:
    manual = encoder(attention="manual").eval()
    tokens = tiny.tokenize([DNA, "ACGTN"])
    with torch.no_grad():
        a = tiny(tokens.input_ids, tokens.mask).embeddings
        b = manual(tokens.input_ids, tokens.mask).embeddings
    assert manual.model.attention == "manual" and tiny.model.attention == "sdpa"
    assert (a - b).abs().max() < 1e-5


def test_padding_does_not_change_real_positions(tiny: NucleotideTransformerEncoder) -> None:
    with torch.no_grad():
        alone = tiny.encode(["ACGTAC"]).embeddings[0]
        batched = tiny.encode(["ACGTAC", DNA * 3]).embeddings[0]
    assert (batched[: alone.shape[0]] - alone).abs().max() < 1e-5
    assert torch.equal(batched[alone.shape[0] :], torch.zeros_like(batched[alone.shape[0] :]))


# ---- long sequences ------------------------------------------------------------------------


def test_long_sequences_error_by_default() -> None:
    short = encoder(max_tokens=8)
    with pytest.raises(
        InvalidSequenceError, match=r"54 nt is 10 tokens.*max_tokens=8.*long_sequences: chunk"
    ):
        short.tokenize(["ACGTAC" * 9])


def test_chunking_concatenates_windows_run_separately() -> None:
    chunked = encoder(max_tokens=8, long_sequences="chunk", max_chunks=3).eval()
    sequence = "ACGTAC" * 9 + "GGNAAAAAAAATTTTTT"  # 9 + 7 tokens after <cls>: 17 in all
    ids = NTTokenizer().token_ids(sequence)
    assert len(ids) == 17
    with torch.no_grad():
        out = chunked.encode([sequence, "ACGT"])
        windows = [[3, *ids[1 + s : 1 + s + 7]] for s in range(0, 16, 7)]  # 7 + 7 + 2
        parts = [
            chunked(torch.tensor([w]), torch.ones(1, len(w), dtype=torch.bool)).embeddings[0]
            for w in windows
        ]
    expected = torch.cat([parts[0], parts[1][1:], parts[2][1:]])  # (17, D)
    assert out.embeddings.shape == (2, 17, 32) and int(out.mask[0].sum()) == 17
    assert (out.embeddings[0] - expected).abs().max() < 1e-6
    assert (out.embeddings[1, :5] - chunked.encode(["ACGT"]).embeddings[0]).abs().max() < 1e-6
    with pytest.raises(InvalidSequenceError, match=r"needs 4 windows.*max_chunks=3"):
        chunked.tokenize([sequence + "ACGTAC" * 6])  # 22 tokens after <cls>


# ---- params, registry, assembly ------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "give a 'preset'"),
        ({"preset": "tiny", "random_init": False}, "no published weights"),
        ({"preset": "tiny", "path": "/x"}, "drop 'path'"),
        ({"random_init": True, "path": "/x"}, "needs a 'preset'"),
        ({"preset": "500m", "random_init": True, "revision": "main"}, "'revision'"),
        ({"preset": "tiny", "attention": "flash"}, "sdpa"),
    ],
)
def test_impossible_params_are_rejected(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        NucleotideTransformerParams.model_validate(params)


def test_factory_fills_the_dna_slot_only() -> None:
    entry = get_registry().get(ComponentKind.ENCODER, "nucleotide-transformer-v2")
    params = entry.params_model.model_validate({"preset": "tiny"})
    built = entry.build(params, BuildContext())
    assert (built.modality, built.embed_dim, built.max_tokens) == (Modality.DNA, 32, 2048)
    with pytest.raises(ConfigError, match="encodes DNA, not rna"):
        entry.build(params, BuildContext(modality=Modality.RNA))


def test_random_init_is_seeded_and_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b, c = encoder(seed=0), encoder(seed=0), encoder(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.model.word_embeddings.weight, b.model.word_embeddings.weight)
    assert not torch.equal(a.model.word_embeddings.weight, c.model.word_embeddings.weight)


def test_assembles_into_a_full_model_and_answers() -> None:
    data = yaml.safe_load(preset_path("tiny-random").read_text())
    data["encoders"] = {"dna": data["encoders"]["dna"]}
    data["encoders"]["dna"]["name"] = "nucleotide-transformer-v2"
    data["encoders"]["dna"]["params"] = {"preset": "tiny"}
    model = ChatNTModel.from_config(parse_config(data)).eval()
    assert isinstance(model.encoder(Modality.DNA), NucleotideTransformerEncoder)
    answers = model.generate(["Is @p.fna a promoter?"], [{"p.fna": DNA}], max_new_tokens=4)
    assert len(answers) == 1 and isinstance(answers[0], str)

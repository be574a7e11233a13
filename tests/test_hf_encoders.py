"""The ``hf-encoders`` plugin: esm2, rna-fm and hf-encoder on tiny local models, offline."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from pydantic import ValidationError
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, BertModel, EsmModel, PreTrainedTokenizerFast

import chatnt_core
from chatnt_core.config import parse_config
from chatnt_core.errors import ConfigError, InvalidSequenceError
from chatnt_core.interfaces import Encoder
from chatnt_core.modality import Modality
from chatnt_core.plugins import BuildContext, ComponentKind, get_registry
from chatnt_hf_encoders import Esm2Encoder, HFEncoder, RnaFmEncoder, esm2_config
from chatnt_hf_encoders.esm2 import esm2_tokenizer

REGISTRY_MODELS = Path(__file__).resolve().parents[1] / "registry" / "models"

# The ESM-2 vocabulary in id order, as published with facebook/esm2_*.
SPECIALS = ["<cls>", "<pad>", "<eos>", "<unk>"]
ESM_VOCAB = [*SPECIALS, *"LAGVSERTIDPKQNFYMHWCXBUZO.-", "<null_1>", "<mask>"]
# RNA-FM's own alphabet (ml4bio/RNA-FM), and multimolecule's re-ordered RNA vocabulary.
RNAFM_VOCAB = [*SPECIALS, *"ACGURYKMSWBDHVN-"]
MM_VOCAB = ["<pad>", "<cls>", "<eos>", "<unk>", "<mask>", "<null>", *"ACGUNRYSWKMBDHVIX|.*-?"]
TINY = {"hidden": 32, "layers": 2, "heads": 4, "ffn": 64, "positions": 1026}


def build(name: str, params: dict[str, Any], modality: Modality | None) -> Encoder:
    entry = get_registry().get(ComponentKind.ENCODER, name)
    encoder: Encoder = entry.build(
        entry.params_model.model_validate(params), BuildContext(modality=modality)
    )
    return encoder


def real_rows(encoder: Encoder, sequences: list[str]) -> list[torch.Tensor]:
    with torch.no_grad():
        out = encoder.encode(sequences)
    return [out.embeddings[i, out.mask[i]] for i in range(len(sequences))]


def esm_ids(text: str) -> list[int]:
    return [ESM_VOCAB.index(letter) for letter in text]


# ---- esm2 ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def esm() -> Esm2Encoder:
    encoder = build("esm2", {"preset": "tiny"}, Modality.PROTEIN)
    assert isinstance(encoder, Esm2Encoder)
    return encoder


@pytest.fixture(scope="module")
def esm_saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, EsmModel]:
    """A seeded tiny EsmModel (kept in memory) and the directory it was saved to."""
    directory = tmp_path_factory.mktemp("tiny-esm2")
    torch.manual_seed(123)
    model = EsmModel(esm2_config("tiny"), add_pooling_layer=False).eval()
    model.save_pretrained(directory)
    esm2_tokenizer().save_pretrained(directory)
    return directory, model


def test_esm2_tiny_builds_offline(esm: Esm2Encoder) -> None:
    config = esm.model.config
    assert (esm.modality, esm.embed_dim, esm.max_tokens) == (Modality.PROTEIN, 32, 1024)
    assert (config.num_hidden_layers, config.num_attention_heads) == (2, 4)
    assert (config.intermediate_size, config.vocab_size) == (64, 33)
    assert config.position_embedding_type == "rotary"


def test_esm2_ids_follow_the_esm_vocabulary(esm: Esm2Encoder) -> None:
    assert esm.tokenizer.get_vocab() == {token: i for i, token in enumerate(ESM_VOCAB)}
    tokens = esm.tokenize(["MKV", "mkvJJ"])
    assert tokens.input_ids[0, :5].tolist() == [0, 20, 15, 7, 2] == [0, *esm_ids("MKV"), 2]
    # lower case is read as upper case; each letter ESM-2 lacks is one <unk>
    assert tokens.input_ids[1].tolist() == [0, 20, 15, 7, 3, 3, 2]
    assert tokens.mask.tolist() == [[True] * 5 + [False] * 2, [True] * 7]
    assert tokens.input_ids[0, 5:].tolist() == [1, 1]  # <pad>


def test_esm2_loads_a_saved_checkpoint_with_identical_outputs(
    esm_saved: tuple[Path, EsmModel],
) -> None:
    directory, in_memory = esm_saved
    assert (directory / "model.safetensors").is_file()
    encoder = build("esm2", {"path": str(directory)}, Modality.PROTEIN)
    assert isinstance(encoder, Esm2Encoder)
    loaded = encoder.model.state_dict()
    for name, tensor in in_memory.state_dict().items():
        assert torch.equal(loaded[name], tensor), name

    sequences = ["MKVLAGSTW", "PEPTIDE"]
    tokens = encoder.tokenize(sequences)
    with torch.no_grad():
        expected = in_memory(tokens.input_ids, attention_mask=tokens.mask.long()).last_hidden_state
    for i, row in enumerate(real_rows(encoder, sequences)):
        assert row.shape == (len(sequences[i]) + 2, 32)
        assert torch.allclose(row, expected[i, : row.shape[0]], atol=1e-6)
    # different weights from the tiny preset (seed 123 vs 0): the checkpoint was really used
    tiny = build("esm2", {"preset": "tiny"}, Modality.PROTEIN)
    assert not torch.allclose(real_rows(tiny, ["MKV"])[0], real_rows(encoder, ["MKV"])[0])


def test_esm2_padding_does_not_change_real_rows(esm: Esm2Encoder) -> None:
    alone = real_rows(esm, ["MKV"])[0]
    with torch.no_grad():
        out = esm.encode(["MKVLAGSTWYPEPTIDE", "MKV"])
    assert (out.embeddings[1, alone.shape[0] :] == 0).all()  # padded rows are zero
    assert (out.embeddings[1, : alone.shape[0]] - alone).abs().max() < 1e-5


def test_esm2_long_sequence_error_names_length_limit_and_fix() -> None:
    encoder = build("esm2", {"preset": "tiny", "max_tokens": 8}, Modality.PROTEIN)
    encoder.tokenize(["MKVLAG"])  # 6 residues + <cls> + <eos> = 8 tokens fit
    with pytest.raises(InvalidSequenceError) as info:
        encoder.tokenize(["MKVLAGS"])
    message = str(info.value)
    assert "7 characters" in message and "max_tokens=8" in message
    assert "long_sequences: chunk" in message


def test_esm2_chunking_encodes_windows_and_concatenates_them() -> None:
    params = {"preset": "tiny", "max_tokens": 8, "long_sequences": "chunk"}
    encoder = build("esm2", params, Modality.PROTEIN)
    assert isinstance(encoder, Esm2Encoder)
    sequence = "MKVLAGSTWY"  # 10 residues -> two windows of 5 (window = 8 - 2 specials)
    with torch.no_grad():
        out = encoder.encode([sequence, "MKV"])
        first = encoder.model(torch.tensor([[0, *esm_ids(sequence[:5]), 2]])).last_hidden_state
        second = encoder.model(torch.tensor([[0, *esm_ids(sequence[5:]), 2]])).last_hidden_state
    assert out.embeddings.shape == (2, 12, 32) and out.mask[0].all()
    expected = torch.cat([first[0, :6], second[0, 1:]])  # <cls> + 10 residues + <eos>
    assert torch.allclose(out.embeddings[0], expected, atol=1e-6)
    # a short row of the same batch is encoded exactly as on its own
    assert torch.allclose(out.embeddings[1, :5], real_rows(encoder, ["MKV"])[0], atol=1e-6)
    limited = build("esm2", {**params, "max_chunks": 1}, Modality.PROTEIN)
    with pytest.raises(InvalidSequenceError, match="max_chunks=1"):
        limited.tokenize([sequence])


def test_esm2_refuses_other_modalities_and_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="protein") as info:
        build("esm2", {"preset": "tiny"}, Modality.DNA)
    assert "'dna' encoder slot" in str(info.value)
    with pytest.raises(ValidationError, match="preset"):
        build("esm2", {}, Modality.PROTEIN)
    with pytest.raises(ValidationError, match="drop 'path'"):
        build("esm2", {"preset": "tiny", "path": str(tmp_path)}, Modality.PROTEIN)
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match="not found"):
        build("esm2", {"path": str(missing)}, Modality.PROTEIN)


# ---- rna-fm ----------------------------------------------------------------------------


def multimolecule_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny random RNA-FM state dict under multimolecule's key names (RnaFmForPreTraining)."""
    gen = torch.Generator().manual_seed(seed)
    d, f = TINY["hidden"], TINY["ffn"]

    def rand(*shape: int, scale: float = 0.3) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    def norm(prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1 + rand(d, scale=0.1), f"{prefix}.bias": rand(d, scale=0.1)}

    state = {
        "model.embeddings.word_embeddings.weight": rand(len(MM_VOCAB), d),
        "model.embeddings.position_embeddings.weight": rand(TINY["positions"], d),
        **norm("model.embeddings.layer_norm"),
        **norm("model.encoder.layer_norm"),
        "lm_head.transform.dense.weight": rand(d, d),  # heads: ignored by the loader
        "lm_head.bias": rand(len(MM_VOCAB)),
    }
    for i in range(TINY["layers"]):
        p = f"model.encoder.layer.{i}"
        for name in ("query", "key", "value"):
            state[f"{p}.attention.self.{name}.weight"] = rand(d, d)
            state[f"{p}.attention.self.{name}.bias"] = rand(d)
        state[f"{p}.attention.output.dense.weight"] = rand(d, d)
        state[f"{p}.attention.output.dense.bias"] = rand(d)
        state.update(norm(f"{p}.attention.layer_norm"))
        state.update(norm(f"{p}.layer_norm"))
        state[f"{p}.intermediate.dense.weight"] = rand(f, d)
        state[f"{p}.intermediate.dense.bias"] = rand(f)
        state[f"{p}.output.dense.weight"] = rand(d, f)
        state[f"{p}.output.dense.bias"] = rand(d)
    return state


def save_multimolecule(
    directory: Path, state: dict[str, torch.Tensor], vocab: list[str] | None = None, **config: Any
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    settings = {
        "model_type": "rnafm",
        "hidden_size": TINY["hidden"],
        "num_hidden_layers": TINY["layers"],
        "num_attention_heads": TINY["heads"],
        "intermediate_size": TINY["ffn"],
        "max_position_embeddings": TINY["positions"],
        "vocab_size": len(MM_VOCAB),
        "hidden_act": "gelu",
        "position_embedding_type": "absolute",
        "embed_norm": True,
        "token_dropout": False,
        "layer_norm_eps": 1e-5,
        "pad_token_id": 0,
        **config,
    }
    (directory / "config.json").write_text(json.dumps(settings))
    save_file(state, str(directory / "model.safetensors"))
    if vocab is not None:
        (directory / "vocab.txt").write_text("\n".join(vocab))
    return directory


def reference_rnafm(state: dict[str, torch.Tensor], sequence: str) -> torch.Tensor:
    """multimolecule's RnaFmModel forward, re-implemented on its own keys and ids (pad 0)."""
    ids = torch.tensor([MM_VOCAB.index("<cls>"), *map(MM_VOCAB.index, sequence), 2])
    d, heads = TINY["hidden"], TINY["heads"]

    def ln(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.layer_norm(x, (d,), state[f"{prefix}.weight"], state[f"{prefix}.bias"], 1e-5)

    def linear(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.linear(x, state[f"{prefix}.weight"], state[f"{prefix}.bias"])

    positions = torch.arange(1, len(ids) + 1) + 0 + 1  # cumsum(mask) + pad id + 1
    x = state["model.embeddings.word_embeddings.weight"][ids]
    x = ln(
        x + state["model.embeddings.position_embeddings.weight"][positions],
        "model.embeddings.layer_norm",
    )
    for i in range(TINY["layers"]):
        p = f"model.encoder.layer.{i}"
        h = ln(x, f"{p}.attention.layer_norm")
        q, k, v = (
            linear(h, f"{p}.attention.self.{n}").view(len(ids), heads, -1).transpose(0, 1)
            for n in ("query", "key", "value")
        )
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
        attended = (scores.softmax(-1) @ v).transpose(0, 1).reshape(len(ids), d)
        x = x + linear(attended, f"{p}.attention.output.dense")
        h = linear(ln(x, f"{p}.layer_norm"), f"{p}.intermediate.dense")
        x = x + linear(F.gelu(h), f"{p}.output.dense")
    return ln(x, "model.encoder.layer_norm")


@pytest.fixture(scope="module")
def mm_state() -> dict[str, torch.Tensor]:
    return multimolecule_state()


def test_rna_fm_tokenizer_ids() -> None:
    encoder = build("rna-fm", {"preset": "tiny"}, Modality.RNA)
    assert isinstance(encoder, RnaFmEncoder)
    assert [encoder.vocab[t] for t in RNAFM_VOCAB] == list(range(len(RNAFM_VOCAB)))
    ids = encoder.tokenize(["ACGU", "acgt", "NRYKMSWBDHV"]).input_ids.tolist()
    assert ids[0][:6] == ids[1][:6] == [0, 4, 5, 6, 7, 2]  # T read as U, lower case upper-cased
    assert ids[2] == [0, *(RNAFM_VOCAB.index(c) for c in "NRYKMSWBDHV"), 2]  # IUPAC: own tokens
    assert encoder.tokenize(["AXA"]).input_ids.tolist() == [[0, 4, 3, 4, 2]]  # other: <unk>
    assert (encoder.embed_dim, encoder.max_tokens, encoder.modality) == (32, 1024, Modality.RNA)


def test_rna_fm_loads_multimolecule_layout_and_matches_its_forward(
    tmp_path: Path, mm_state: dict[str, torch.Tensor]
) -> None:
    directory = save_multimolecule(tmp_path / "rnafm", mm_state)
    encoder = build("rna-fm", {"path": str(directory)}, Modality.RNA)
    sequences = ["ACGUNRYGGA", "GCAU"]
    for sequence, row in zip(sequences, real_rows(encoder, sequences)):
        expected = reference_rnafm(mm_state, sequence)
        assert row.shape == expected.shape
        assert (row - expected).abs().max() < 1e-5


def test_rna_fm_reads_the_checkpoint_vocabulary_order(
    tmp_path: Path, mm_state: dict[str, torch.Tensor]
) -> None:
    order = list(range(len(MM_VOCAB)))
    random.Random(0).shuffle(order)
    shuffled = dict(mm_state)
    shuffled["model.embeddings.word_embeddings.weight"] = mm_state[
        "model.embeddings.word_embeddings.weight"
    ][order]
    directory = save_multimolecule(tmp_path / "rnafm", shuffled, [MM_VOCAB[i] for i in order])
    encoder = build("rna-fm", {"path": str(directory)}, Modality.RNA)
    row = real_rows(encoder, ["GAUUACA"])[0]
    assert (row - reference_rnafm(mm_state, "GAUUACA")).abs().max() < 1e-5


@pytest.mark.parametrize("layout", ["bare keys", "tied embeddings"])
def test_rna_fm_accepts_other_saved_layouts(
    tmp_path: Path, mm_state: dict[str, torch.Tensor], layout: str
) -> None:
    if layout == "bare keys":  # saved from RnaFmModel itself: no "model." prefix
        state = {k.removeprefix("model."): v for k, v in mm_state.items()}
    else:  # the tied word embeddings kept under the MLM head's name only
        state = dict(mm_state)
        state["lm_head.decoder.weight"] = state.pop("model.embeddings.word_embeddings.weight")
    directory = save_multimolecule(tmp_path / "other", state)
    row = real_rows(build("rna-fm", {"path": str(directory)}, Modality.RNA), ["GAUUACA"])[0]
    assert (row - reference_rnafm(mm_state, "GAUUACA")).abs().max() < 1e-5


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("shape", "encoder.layer.1.intermediate.dense.weight (65, 32) (expected (64, 32))"),
        ("missing", "missing encoder.emb_layer_norm_after.bias"),
        ("unknown", "unknown model.encoder.layer.0.attention.self.distance_embedding.weight"),
    ],
)
def test_rna_fm_checkpoint_mismatch_is_a_config_error_naming_it(
    tmp_path: Path, mm_state: dict[str, torch.Tensor], change: str, named: str
) -> None:
    state = dict(mm_state)
    if change == "shape":
        state["model.encoder.layer.1.intermediate.dense.weight"] = torch.zeros(65, 32)
    elif change == "missing":
        del state["model.encoder.layer_norm.bias"]
    else:
        state["model.encoder.layer.0.attention.self.distance_embedding.weight"] = torch.zeros(3, 8)
    directory = save_multimolecule(tmp_path / change, state)
    with pytest.raises(ConfigError) as info:
        build("rna-fm", {"path": str(directory)}, Modality.RNA)
    assert named in str(info.value)


def test_rna_fm_refuses_unsupported_checkpoints_and_slots(
    tmp_path: Path, mm_state: dict[str, torch.Tensor]
) -> None:
    codon = save_multimolecule(tmp_path / "mrnafm", mm_state, codon=True)
    with pytest.raises(ConfigError, match="codon"):
        build("rna-fm", {"path": str(codon)}, Modality.RNA)
    with pytest.raises(ConfigError, match="'protein' encoder slot"):
        build("rna-fm", {"preset": "tiny"}, Modality.PROTEIN)
    with pytest.raises(ConfigError, match="max_tokens=2000"):
        build("rna-fm", {"preset": "tiny", "max_tokens": 2000}, Modality.RNA)


def test_rna_fm_round_trips_through_its_own_esm_checkpoint(tmp_path: Path) -> None:
    original = build("rna-fm", {"preset": "tiny", "seed": 5}, Modality.RNA)
    assert isinstance(original, RnaFmEncoder)
    original.model.save_pretrained(tmp_path)
    reloaded = build("rna-fm", {"path": str(tmp_path)}, Modality.RNA)
    a, b = real_rows(original, ["ACGUACGU"])[0], real_rows(reloaded, ["ACGUACGU"])[0]
    assert torch.equal(a, b)


# ---- hf-encoder ------------------------------------------------------------------------

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BERT_VOCAB = {token: i for i, token in enumerate([*BERT_SPECIALS, *"ACGTN"])}


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT and a one-letter-per-token fast tokenizer with [CLS] ... [SEP]."""
    directory = tmp_path_factory.mktemp("tiny-bert")
    backend = Tokenizer(models.WordLevel(BERT_VOCAB, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        **{f"{name}_token": f"[{name.upper()}]" for name in ("pad", "unk", "cls", "sep", "mask")},
    )
    tokenizer.save_pretrained(directory)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=len(BERT_VOCAB),
        max_position_embeddings=64,
    )
    torch.manual_seed(7)
    BertModel(config).save_pretrained(directory)
    return directory


def test_hf_encoder_loads_a_local_bert_with_identical_outputs(bert_dir: Path) -> None:
    encoder = build("hf-encoder", {"path": str(bert_dir), "modality": "dna"}, Modality.DNA)
    assert isinstance(encoder, HFEncoder)
    assert (encoder.modality, encoder.embed_dim, encoder.max_tokens) == (Modality.DNA, 32, 64)
    tokens = encoder.tokenize(["ACGT", "acgtnA"])
    assert tokens.input_ids[0].tolist() == [2, 5, 6, 7, 8, 3, 0, 0]  # [CLS] A C G T [SEP] pad
    assert tokens.input_ids[1].tolist() == [2, 5, 6, 7, 8, 9, 5, 3]  # upper-cased
    reference = BertModel.from_pretrained(bert_dir).eval()
    with torch.no_grad():
        expected = reference(tokens.input_ids, attention_mask=tokens.mask.long()).last_hidden_state
    for i, row in enumerate(real_rows(encoder, ["ACGT", "acgtnA"])):
        assert torch.allclose(row, expected[i, : row.shape[0]], atol=1e-6)


def test_hf_encoder_declared_modality_must_match_the_slot(bert_dir: Path) -> None:
    with pytest.raises(ConfigError, match="declares modality 'dna'") as info:
        build("hf-encoder", {"path": str(bert_dir), "modality": "dna"}, Modality.RNA)
    assert "'rna' encoder slot" in str(info.value)
    with pytest.raises(ValidationError, match="modality"):
        build("hf-encoder", {"path": str(bert_dir)}, Modality.DNA)


def test_hf_encoder_chunks_by_token_windows(bert_dir: Path) -> None:
    params = {"path": str(bert_dir), "modality": "dna", "max_tokens": 6}
    with pytest.raises(InvalidSequenceError, match="max_tokens=6"):
        build("hf-encoder", params, Modality.DNA).tokenize(["ACGTAC"])
    encoder = build("hf-encoder", {**params, "long_sequences": "chunk"}, Modality.DNA)
    assert isinstance(encoder, HFEncoder)
    row = real_rows(encoder, ["ACGTAC"])[0]  # 6 letters: windows ACG and TAC
    with torch.no_grad():
        first = encoder.model(torch.tensor([[2, 5, 6, 7, 3]])).last_hidden_state[0]
        second = encoder.model(torch.tensor([[2, 8, 5, 6, 3]])).last_hidden_state[0]
    assert torch.allclose(row, torch.cat([first[:4], second[1:]]), atol=1e-6)


def test_hf_encoder_path_errors_are_one_line_config_errors(tmp_path: Path, bert_dir: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        build("hf-encoder", {"path": str(tmp_path / "nothing"), "modality": "dna"}, Modality.DNA)
    with pytest.raises(ConfigError, match="'bert' model, not ESM"):
        build("esm2", {"path": str(bert_dir)}, Modality.PROTEIN)


# ---- inside a full model ---------------------------------------------------------------


def test_esm2_and_rna_fm_answer_inside_a_full_model() -> None:
    data = yaml.safe_load((REGISTRY_MODELS / "tiny-random.yaml").read_text())
    data["encoders"]["protein"].update(name="esm2", params={"preset": "tiny"})
    data["encoders"]["rna"].update(name="rna-fm", params={"preset": "tiny"})
    model = chatnt_core.ChatNTModel.from_config(parse_config(data)).eval()
    protein, rna = model.encoder(Modality.PROTEIN), model.encoder(Modality.RNA)
    assert isinstance(protein, Esm2Encoder) and isinstance(rna, RnaFmEncoder)
    calls: list[str] = []
    protein.model.register_forward_hook(lambda *_: calls.append("esm2"))
    rna.model.register_forward_hook(lambda *_: calls.append("rna-fm"))
    answers = model.generate(
        ["Compare @a.fna with @b.frn and @c.faa."],
        [{"a.fna": "ACGTACGT", "b.frn": "ACGUACGU", "c.faa": "MKVLAG"}],
        max_new_tokens=2,
    )
    assert len(answers) == 1 and isinstance(answers[0], str)
    assert {"esm2", "rna-fm"} <= set(calls)

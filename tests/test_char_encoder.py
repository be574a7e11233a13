"""The ``char-transformer`` encoder plugin."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from tiny_models import build_tiny_encoder

from chatnt_char_encoder import CharTransformerEncoder, CharTransformerParams, build_vocab
from chatnt_core.errors import ConfigError, InvalidSequenceError
from chatnt_core.interfaces import Encoder
from chatnt_core.modality import ALPHABETS, Modality
from chatnt_core.plugins import BuildContext, ComponentKind, get_registry


def test_builds_through_the_registry_for_the_slot_modality() -> None:
    entry = get_registry().get(ComponentKind.ENCODER, "char-transformer")
    params = entry.params_model.model_validate({"hidden_size": 16, "num_heads": 2})
    encoder = entry.build(params, BuildContext(modality=Modality.PROTEIN))
    assert isinstance(encoder, Encoder)
    assert (encoder.modality, encoder.embed_dim, encoder.max_tokens) == (Modality.PROTEIN, 16, 1024)
    with pytest.raises(ConfigError, match="modality"):
        entry.build(params, BuildContext())


def test_vocab_layout() -> None:
    vocab = build_vocab(Modality.DNA)
    assert list(vocab)[:3] == ["<pad>", "<unk>", "<cls>"]
    assert list(vocab)[3:] == sorted(ALPHABETS[Modality.DNA])
    assert list(vocab.values()) == list(range(len(vocab)))
    assert [vocab[c] for c in "ACGT"] == [3, 5, 7, 14]  # sorted: A B C D G H K M N R S T V W Y
    assert "U" in build_vocab(Modality.RNA) and "U" not in vocab


def test_ids_for_a_known_sequence_and_lower_case() -> None:
    encoder = build_tiny_encoder("dna")
    tokens = encoder.tokenize(["ACGT", "acgtn"])
    assert tokens.input_ids.tolist() == [[2, 3, 5, 7, 14, 0], [2, 3, 5, 7, 14, 11]]
    assert tokens.mask.tolist() == [[True] * 5 + [False], [True] * 6]
    assert tokens.input_ids.dtype == torch.long and tokens.mask.dtype == torch.bool
    assert encoder.token_ids("A?") == [2, 3, 1]  # unknown letters -> <unk>


def test_too_long_sequence_is_rejected_not_truncated() -> None:
    encoder = build_tiny_encoder("dna", max_tokens=9)
    assert len(encoder.tokenize(["A" * 8]).input_ids[0]) == 9
    with pytest.raises(InvalidSequenceError, match=r"length 9 .* limit of 8"):
        encoder.tokenize(["A" * 9])


def test_shapes_and_mask_returned() -> None:
    encoder = build_tiny_encoder("protein", hidden_size=24, num_heads=3, num_layers=1)
    tokens = encoder.tokenize(["MKV", "MKVLAAG*"])
    out = encoder(tokens.input_ids, tokens.mask)
    assert out.embeddings.shape == (2, 9, 24)
    assert torch.equal(out.mask, tokens.mask)
    assert torch.isfinite(out.embeddings).all()
    assert torch.equal(out.embeddings[0, 4:], torch.zeros(5, 24))  # padding is zeroed
    assert encoder.encode(["MKV"]).embeddings.shape == (1, 4, 24)


def test_padding_invariance() -> None:
    encoder = build_tiny_encoder("dna")
    alone = encoder.encode(["ACGTNNAC"]).embeddings[0]
    batch = encoder.encode(["ACGTNNAC", "A" * 40]).embeddings[0]
    assert batch.shape[0] == 41
    assert (batch[: alone.shape[0]] - alone).abs().max() < 1e-5
    # and a change in a padded id changes nothing
    tokens = encoder.tokenize(["ACG", "ACGTACGT"])
    noisy = tokens.input_ids.clone()
    noisy[0, 4:] = 5
    a = encoder(tokens.input_ids, tokens.mask).embeddings
    b = encoder(noisy, tokens.mask).embeddings
    assert (a - b).abs().max() < 1e-5


def test_seed_is_deterministic_and_global_rng_untouched() -> None:
    state = torch.random.get_rng_state()
    a, b, c = build_tiny_encoder(seed=0), build_tiny_encoder(seed=0), build_tiny_encoder(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["token_embedding.weight"], sc["token_embedding.weight"])


def test_outputs_depend_on_the_sequence() -> None:
    encoder = build_tiny_encoder("dna")
    out = encoder.encode(["ACGT", "TTTT"]).embeddings
    assert not torch.allclose(out[0, 1:], out[1, 1:])


def test_params_validation() -> None:
    assert CharTransformerParams().hidden_size == 32
    with pytest.raises(ValidationError, match="must divide"):
        CharTransformerParams(hidden_size=30, num_heads=4)
    with pytest.raises(ValidationError, match="extra"):
        CharTransformerParams.model_validate({"layers": 3})
    assert isinstance(CharTransformerEncoder(Modality.RNA), Encoder)


def test_conv_kernel_changes_the_model_and_keeps_padding_invariance() -> None:
    plain = CharTransformerEncoder(Modality.DNA, CharTransformerParams())
    conv = CharTransformerEncoder(Modality.DNA, CharTransformerParams(conv_kernel=9)).eval()
    assert conv.conv is not None and plain.conv is None
    alone = conv.encode(["ACGTTGCA"])
    batch = conv.encode(["ACGTTGCA", "ACGTTGCAACGTACGTAAAC"])
    n = int(alone.mask[0].sum())
    assert torch.allclose(alone.embeddings[0, :n], batch.embeddings[0, :n], atol=1e-5)
    with pytest.raises(ValueError, match="odd"):
        CharTransformerParams(conv_kernel=4)

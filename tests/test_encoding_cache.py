"""The encoder-output cache: reuse across prompts, LRU bound, invalidation on weight change."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import yaml

from chatnt_core import ChatNTModel, EncodingCache
from chatnt_core.config import parse_config
from chatnt_core.inference.encoding_cache import weights_version
from chatnt_core.modality import Modality
from chatnt_core.presets import preset_path

DNA = "TATAAAAGGCGCGCTTAGCATCGATCG"


def build(cache_size: int = 4) -> ChatNTModel:
    data = yaml.safe_load(preset_path("tiny-random").read_text())
    data["encoders"]["dna"]["cache_size"] = cache_size
    return ChatNTModel.from_config(parse_config(data)).eval()


def count_encodes(model: ChatNTModel, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []
    encoder = model.encoder(Modality.DNA)
    original = encoder.encode

    def spy(sequences: list[str]) -> Any:
        calls.append(list(sequences))
        return original(sequences)

    monkeypatch.setattr(encoder, "encode", spy)
    return calls


def test_frozen_encoder_skips_repeated_sequences_with_identical_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = build()
    calls = count_encodes(model, monkeypatch)
    with torch.no_grad():
        first = model.encode_sequences(Modality.DNA, [DNA, DNA[:10]])
        second = model.encode_sequences(Modality.DNA, [DNA[:10], DNA])
    assert calls == [[DNA, DNA[:10]]]
    assert torch.equal(first[0][0], second[0][1]) and torch.equal(first[1][0], second[1][1])
    assert model.encoding_caches[Modality.DNA].hits == 2


def test_weight_change_invalidates(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build()
    calls = count_encodes(model, monkeypatch)
    encoder = model.encoder(Modality.DNA)
    with torch.no_grad():
        before, _ = model.encode_sequences(Modality.DNA, [DNA])
        next(encoder.parameters()).add_(0.5)  # what an optimizer step does
        after, _ = model.encode_sequences(Modality.DNA, [DNA])
        encoder.load_state_dict({k: v.clone() for k, v in encoder.state_dict().items()})
        model.encode_sequences(Modality.DNA, [DNA])
    assert len(calls) == 3
    assert not torch.allclose(before, after)


def test_no_cache_while_the_encoder_is_trained(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build()
    calls = count_encodes(model, monkeypatch)
    model.train()
    model.encode_sequences(Modality.DNA, [DNA])
    model.encode_sequences(Modality.DNA, [DNA])
    model.eval()
    model.encode_sequences(Modality.DNA, [DNA])  # eval, but gradients are on: still no reuse
    assert len(calls) == 3
    assert len(model.encoding_caches[Modality.DNA]) == 0


def test_cache_size_zero_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build(cache_size=0)
    calls = count_encodes(model, monkeypatch)
    with torch.no_grad():
        model.encode_sequences(Modality.DNA, [DNA])
        model.encode_sequences(Modality.DNA, [DNA])
    assert Modality.DNA not in model.encoding_caches and len(calls) == 2


def test_lru_eviction_and_version_key() -> None:
    cache = EncodingCache(max_entries=2)
    rows = torch.zeros(3, 4)
    cache.put("dna:x", 1, "A", rows)
    cache.put("dna:x", 1, "C", rows)
    assert cache.get("dna:x", 1, "A") is not None  # A is now the most recent
    cache.put("dna:x", 1, "G", rows)
    assert cache.get("dna:x", 1, "C") is None and len(cache) == 2
    assert cache.get("dna:x", 2, "A") is None  # another weights version
    with pytest.raises(ValueError, match="max_entries"):
        EncodingCache(0)


def test_weights_version_tracks_in_place_updates_and_moves() -> None:
    layer = torch.nn.Linear(2, 2)
    version = weights_version(layer)
    assert weights_version(layer) == version
    with torch.no_grad():
        layer.weight.mul_(2)
    assert weights_version(layer) != version
    moved = weights_version(layer)
    layer.double()
    assert weights_version(layer) != moved

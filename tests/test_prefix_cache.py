"""The shared-prefix cache and the no-gradient opening columns give the plain loss exactly."""

from __future__ import annotations

import pytest
import torch

from chatnt_core import ChatNTModel, Example, SequenceInput, Turn
from chatnt_core.batching import IGNORE_INDEX
from chatnt_core.inference.prefix_cache import drop_prefix, frozen_columns, shared_prefix_length

DNA = "TATAAAAGGCGCGCTTAGCATCGATCGATCGGGCTA"


def _examples() -> list[Example]:
    seq = {"s.fna": SequenceInput("s.fna", DNA), "t.fna": SequenceInput("t.fna", DNA[::-1])}
    return [
        Example([Turn("GC content of @s.fna?", "0.5")], {"s.fna": seq["s.fna"]}),
        Example(
            [Turn("A longer question: is there a site in @t.fna?", "no site")],
            {"t.fna": seq["t.fna"]},
        ),
        Example(
            [Turn("Compare @s.fna", "they differ"), Turn("and @t.fna?", "yes")],
            {"s.fna": seq["s.fna"], "t.fna": seq["t.fna"]},
        ),
    ]


def _loss_and_grads(model: ChatNTModel, use_cache: bool) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    model.use_prefix_cache = use_cache
    out = model(model.tokenize(_examples()))
    assert out.loss is not None
    out.loss.backward()
    grads = [p.grad.clone() for p in model.projections.parameters() if p.grad is not None]
    return float(out.loss), grads


def test_prefix_cache_gives_the_same_loss_and_gradients() -> None:
    torch.manual_seed(0)
    model = ChatNTModel.from_config("tiny-random").train()
    model.decoder.eval()
    plain_loss, plain_grads = _loss_and_grads(model, use_cache=False)
    cached_loss, cached_grads = _loss_and_grads(model, use_cache=True)
    assert model.prefix_cache._entry is not None  # the system prompt was cached
    assert cached_loss == pytest.approx(plain_loss, abs=1e-5)
    assert len(cached_grads) == len(plain_grads) > 0
    for cached, plain in zip(cached_grads, plain_grads):
        torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-4)
    # a second batch reuses the entry; the loss stays the same
    again, _ = _loss_and_grads(model, use_cache=True)
    assert again == pytest.approx(plain_loss, abs=1e-5)


def test_a_trainable_decoder_is_never_cached() -> None:
    torch.manual_seed(0)
    model = ChatNTModel.from_config("tiny-random").train()
    for p in model.decoder.parameters():
        p.requires_grad_(True)
    model(model.tokenize(_examples()))
    assert model.prefix_cache._entry is None


def test_shared_prefix_stops_before_answers_and_placeholders() -> None:
    pad, ph = 0, 9
    ids = torch.tensor([[pad, 5, 6, 7, ph, 8], [5, 6, 7, 1, ph, 8]])
    mask = ids != pad
    labels = torch.full_like(ids, IGNORE_INDEX)
    assert shared_prefix_length(ids, mask, labels, ph) == 3  # 5 6 7, then rows differ
    labels[0, 5] = 8  # row 0 answers at its 5th real token: the prefix keeps one before it
    assert shared_prefix_length(ids, mask, labels, ph) == 3
    labels[1, 3] = 1  # row 1 answers at its 4th real token
    assert shared_prefix_length(ids, mask, labels, ph) == 2
    dropped = drop_prefix(ids, mask, 2)
    assert dropped.tolist() == [[pad, 7, ph, 8], [7, 1, ph, 8]]
    assert frozen_columns(dropped, ph, limit=10) == 2
    assert frozen_columns(dropped, ph, limit=1) == 1

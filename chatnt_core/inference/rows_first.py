"""Linear layers computed as ``(W @ x.T).T`` on CPU, where MKL's usual layout is slow.

``nn.Linear`` computes ``x @ W.T``. On this project's CPUs (AMD EPYC, MKL 2024) that
layout is slow whenever ``x`` has few rows, which is every decoding step (one row per
answer) and every short prompt pass; the same product taken the other way round,
``W @ x.T``, runs at up to 2.8x the speed. Measured on the 2-core machine, weights cold
as in a model (``x`` rows: ``nn.Linear`` / rows-first, microseconds):

======================  =========  =========  ===========  ============  ===========
weight                  1 row      8 rows     32 rows      128 rows      512 rows
======================  =========  =========  ===========  ============  ===========
1536 x 576 (MLP up)     260 / 254  391 / 293  681 / 554    2411 / 1683   7379 / 6191
576 x 576 (attention)   89 / 90    138 / 107  235 / 190    816 / 602     2432 / 2342
49152 x 576 (output)    8.5 / 11.4 ms (1)     23.0 / 8.9 ms (8)    31.9 / 22.9 ms (32)
======================  =========  =========  ===========  ============  ===========

One row is a matrix-vector product, faster as ``nn.Linear``; so are more than ``MAX_ROWS``
rows in a whole model (where the microbenchmark above misleads) and results larger than
``MAX_OUTPUT``. The decoder plugin swaps its layers only inside its own calls, without
autograd (:func:`rows_first`): the transformers model itself, training, and anything
else that calls it (``generate``) keep the stock layers. LoRA layers while decoding
(``chatnt_core.inference.adapter_decoding``) call :func:`linear` directly. The results are the same
sums in another order (differences around 1e-6 relative).

Measured on one CPU family only: ``CHATNT_ROWS_FIRST=0`` turns it off, and
``python bench/inference.py`` shows what it gives on another machine.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

# the result is made contiguous (a transposed one slows the layers that read it); past
# about 8M elements that copy (and its memory) costs more than the product saves: for the
# 49,152-wide output layer, 128 rows 64.4 vs 58.5 ms, 256 rows 127 vs 153 ms
MAX_OUTPUT = 8 * 2**20
# past about a hundred rows the weights are reused enough for MKL's own kernel: measured
# in the model (ChatNT.ask_batch, 32 prompts: passes of 480-640 rows) a cap of 128 rows
# gave 254 ms per record, none 273 ms, and no rows-first at all 256 ms
MAX_ROWS = 128


def enabled() -> bool:
    """Off with ``CHATNT_ROWS_FIRST=0`` (read at each call, so tests and benchmarks can
    compare both)."""
    return os.environ.get("CHATNT_ROWS_FIRST", "1") != "0"


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``nn.functional.linear(x, weight, bias)`` for (..., D) ``x``, computed as
    ``(W @ x.T).T`` when ``x`` has at least 2 rows and the result is at most
    ``MAX_OUTPUT`` elements, on CPU."""
    rows = x.numel() // max(x.shape[-1], 1)
    small = 2 <= rows <= MAX_ROWS and rows * weight.shape[0] <= MAX_OUTPUT
    if not small or x.dtype != weight.dtype or x.device.type != "cpu" or not enabled():
        return nn.functional.linear(x, weight, bias)
    out = torch.mm(weight, x.reshape(rows, x.shape[-1]).t()).t()  # (N, out)
    if bias is not None:
        out = out + bias
    return out.contiguous().view(*x.shape[:-1], out.shape[-1])


def _forward_of(layer: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: linear(x, layer.weight, layer.bias)


# walking a peft-wrapped decoder's modules takes ~5 ms, as long as a tenth of a decoding
# step: the layers are listed once per model object (wrapping it in LoRA makes a new one)
_LAYERS: weakref.WeakKeyDictionary[nn.Module, list[nn.Linear]] = weakref.WeakKeyDictionary()


def _linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The plain ``nn.Linear`` layers of ``model`` on CPU (listed once per model)."""
    layers = _LAYERS.get(model)
    if layers is None:
        layers = [m for m in model.modules() if type(m) is nn.Linear]
        _LAYERS[model] = layers
    return [m for m in layers if m.weight.device.type == "cpu"]


@contextmanager
def rows_first(model: nn.Module, rows: int) -> Iterator[None]:
    """Within the block, every plain ``nn.Linear`` of ``model`` (on CPU) computes
    rows-first, for a call on ``rows`` positions (batch x length); with autograd on, or
    a single row, nothing changes."""
    if torch.is_grad_enabled() or rows < 2 or not enabled():
        yield
        return
    layers = [m for m in _linear_layers(model) if "forward" not in m.__dict__]
    for layer in layers:
        layer.forward = _forward_of(layer)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward

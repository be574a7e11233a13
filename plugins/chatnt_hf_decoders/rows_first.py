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

One row is a matrix-vector product, faster as ``nn.Linear``; so is anything past
``MAX_ROWS``. The swap is made only inside our own decoder calls, without autograd
(:func:`rows_first`): the transformers model itself, training, and anything else that
calls it (``generate``) keep the stock layers. The results are the same sums in another
order (differences around 1e-6 relative).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

MAX_ROWS = 4096


def _rows_first_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for (..., D) ``x``, as ``(W @ x.T).T`` when it has 2..MAX_ROWS rows."""
    rows = x.numel() // max(x.shape[-1], 1)
    if not 2 <= rows <= MAX_ROWS or x.dtype != layer.weight.dtype:
        return nn.functional.linear(x, layer.weight, layer.bias)
    out = torch.mm(layer.weight, x.reshape(rows, x.shape[-1]).t()).t()  # (N, out)
    if layer.bias is not None:
        out = out + layer.bias
    # contiguous: a transposed result slows the layers and attention that read it
    return out.contiguous().view(*x.shape[:-1], out.shape[-1])


def _forward_of(layer: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: _rows_first_linear(layer, x)


@contextmanager
def rows_first(model: nn.Module) -> Iterator[None]:
    """Within the block, every plain ``nn.Linear`` of ``model`` (on CPU) computes
    rows-first when autograd is off; with autograd on, or off CPU, nothing changes."""
    if torch.is_grad_enabled():
        yield
        return
    layers = [
        m
        for m in model.modules()
        if type(m) is nn.Linear and m.weight.device.type == "cpu" and "forward" not in m.__dict__
    ]
    for layer in layers:
        layer.forward = _forward_of(layer)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward

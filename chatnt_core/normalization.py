"""Batch normalisation over the real rows of a padded batch.

Why it exists: components trained from scratch together with a decoder (the offline
quickstart) tend to emit vectors that are nearly the same for every sequence - a large
constant plus a small sequence-dependent part - and a decoder reads that part too weakly
to learn from it. Standardising each channel over the batch keeps the sequence-dependent
part at unit scale. It is used by the ``motif-cnn`` encoder (its filter scores) and by the
``mlp`` projection's ``normalize_output`` option.
"""

from __future__ import annotations

import torch
from torch import nn


class MaskedBatchNorm(nn.Module):
    """Batch normalisation over the last dimension, counting only rows the mask marks real.

    Training: each channel is standardised with the mean and variance of the batch's real
    rows (at least two; with fewer the running estimates are used), and running estimates
    are updated. Evaluation uses the running estimates, so an output never depends on what
    else is in its batch.
    """

    running_mean: torch.Tensor  # (C,)
    running_var: torch.Tensor  # (C,)

    def __init__(self, channels: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(..., C) and an optional (...) bool mask of real rows -> (..., C)."""
        real = x[mask] if mask is not None else x.reshape(-1, x.shape[-1])  # (R, C)
        if self.training and real.shape[0] > 1:
            mean, var = real.mean(dim=0), real.var(dim=0, unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(var.detach().to(self.running_var.dtype), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias

"""Helpers every family of checks shares: tolerant comparison, eval mode, safetensors I/O."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from chatnt_core.testing.report import CheckFailed

M = TypeVar("M", bound=nn.Module)

DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-4


@dataclass(frozen=True)
class Tolerance:
    """How close two float tensors must be to count as equal: |a - b| <= atol + rtol*|b|."""

    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL

    def assert_close(self, actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
        """Raise :class:`CheckFailed` naming ``what`` and the worst difference."""
        if actual.shape != expected.shape:
            raise CheckFailed(
                f"{what}: shape {tuple(actual.shape)} differs from {tuple(expected.shape)}"
            )
        a, b = actual.detach().float().cpu(), expected.detach().float().cpu()
        if torch.allclose(a, b, atol=self.atol, rtol=self.rtol, equal_nan=True):
            return
        diff = (a - b).abs().nan_to_num(nan=float("inf"))
        worst = int(diff.argmax())
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), diff.shape))
        raise CheckFailed(
            f"{what}: max abs difference {float(diff.max()):.3g} at index {index} "
            f"exceeds atol={self.atol:g} + rtol={self.rtol:g} x |expected|"
        )


def module_device(module: nn.Module) -> torch.device:
    """The device of the module's first parameter or buffer (CPU when it has neither)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, then every submodule's own train/eval flag restored.

    Restoring per submodule (not ``module.train(was_training)``) matters for wrappers that
    keep an inner model in eval mode on purpose, as the HF decoder does.
    """
    flags = [(sub, sub.training) for sub in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for sub, flag in flags:
            sub.training = flag


def require_finite(tensor: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(tensor.detach())
    if bool(bad.any()):
        raise CheckFailed(f"{what} holds {int(bad.sum())} NaN/inf value(s)")


def _perturb_parameters(module: nn.Module) -> None:
    """Shift every float parameter by seeded noise, so a tensor the load misses shows up.

    Without this, a rebuild that happens to give the same initial weights (same seed, or a
    deep copy) would pass the round-trip even if loading did nothing at all.
    """
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.is_floating_point():
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.add_(noise.to(parameter.device, parameter.dtype))


def check_save_load_roundtrip(
    module: M,
    rebuild: Callable[[], M] | None,
    outputs: Callable[[M], torch.Tensor],
    tolerance: Tolerance,
) -> None:
    """Save the weights with safetensors, load them into a fresh instance, compare outputs.

    ``rebuild`` makes the fresh instance the way the plugin's users would (its factory,
    typically with another seed); without it a deep copy stands in. ``save_model`` and
    ``load_model`` are safetensors' state-dict functions that also handle tied weights.
    """
    with evaluating(module):
        expected = outputs(module)
    with tempfile.TemporaryDirectory(prefix="chatnt-conformance-") as directory:
        path = Path(directory) / "weights.safetensors"
        save_model(module, str(path))
        fresh = rebuild() if rebuild is not None else copy.deepcopy(module)
        if type(fresh) is not type(module):
            raise CheckFailed(
                f"rebuild() returned a {type(fresh).__name__}, expected a {type(module).__name__}"
            )
        fresh.to(module_device(module))
        _perturb_parameters(fresh)
        missing, unexpected = load_model(fresh, str(path), strict=False)
        if missing or unexpected:
            raise CheckFailed(
                f"the saved state dict does not fit a rebuilt instance: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
    with evaluating(fresh):
        actual = outputs(fresh)
    tolerance.assert_close(actual, expected, "outputs after a safetensors save/load round-trip")

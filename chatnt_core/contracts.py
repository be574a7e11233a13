"""What the model checks at each component's boundary, at run time.

A plugin can pass ``config validate`` (its params are fine) and still break its contract
when it runs: a pooled or transposed output, the wrong width, a float or int64 mask, a
bare tensor instead of ``EncoderOutput``, NaNs. Deep inside the projection such mistakes
surface as a long traceback that never names the plugin, or not at all (an int64 mask
indexes rows instead of masking them; NaN vectors give an empty answer). The checks here
turn each into one line naming the plugin, the component and what was expected versus
received. They look at shapes and dtypes and make one pass over the values
(``bench/contracts.py`` measures the cost against the encoder call itself).

The conformance kit (``chatnt_core.testing``) checks the same contracts in a plugin's own
tests, before anyone runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from chatnt_core.errors import ChatNTError
from chatnt_core.interfaces import EncoderOutput


class ContractError(ChatNTError):
    """A component returned something its interface does not allow."""


@dataclass(frozen=True)
class Component:
    """Who is being checked, for the message: ``encoders.dna`` (``motif-cnn`` from ``chatnt``)."""

    path: str
    name: str
    plugin: str

    def fail(self, problem: str) -> ContractError:
        return ContractError(
            f"{self.path} '{self.name}' (plugin {self.plugin}) broke its contract: {problem}; "
            "fix the plugin (its conformance tests: chatnt_core.testing)"
        )


def check_encoder_output(out: Any, who: Component, rows: int, embed_dim: int) -> EncoderOutput:
    """``out`` of ``encode`` on ``rows`` sequences, checked; returned as is."""
    if not isinstance(out, EncoderOutput):
        raise who.fail(
            f"encode() returned {type(out).__name__}, expected EncoderOutput(embeddings "
            "(B, N, D_enc), mask (B, N) bool)"
        )
    embeddings, mask = out.embeddings, out.mask
    if not isinstance(embeddings, torch.Tensor) or not isinstance(mask, torch.Tensor):
        raise who.fail("EncoderOutput.embeddings and .mask must be tensors")
    if embeddings.dim() != 3:
        raise who.fail(
            f"embeddings of shape {tuple(embeddings.shape)}, expected (B, N, D_enc) = "
            f"({rows}, N, {embed_dim}): one vector per token, not pooled"
        )
    if embeddings.shape[0] != rows or embeddings.shape[2] != embed_dim:
        raise who.fail(
            f"embeddings of shape {tuple(embeddings.shape)}, expected ({rows}, N, {embed_dim}) "
            f"(B sequences, N tokens, the encoder's embed_dim {embed_dim})"
        )
    if not embeddings.is_floating_point():
        raise who.fail(f"embeddings of dtype {embeddings.dtype}, expected a floating type")
    if mask.dtype != torch.bool:
        raise who.fail(f"mask of dtype {mask.dtype}, expected torch.bool (True at real tokens)")
    if tuple(mask.shape) != tuple(embeddings.shape[:2]):
        raise who.fail(
            f"mask of shape {tuple(mask.shape)}, expected {tuple(embeddings.shape[:2])} "
            "(the embeddings' B and N)"
        )
    if not bool(mask.any(dim=1).all()):
        raise who.fail("a sequence has no real token in its mask")
    # one reduction, no copy: a NaN or inf anywhere (padding too: attention weights of 0
    # times NaN are NaN) makes the sum non-finite
    if not bool(torch.isfinite(embeddings.sum())):
        raise who.fail("embeddings hold NaN or infinite values")
    return out


def check_projection_output(
    out: Any, who: Component, rows: int, num_latents: int, width: int
) -> torch.Tensor:
    """(P, K, D) projected vectors, checked; returned as is."""
    expected = (rows, num_latents, width)
    if not isinstance(out, torch.Tensor):
        raise who.fail(f"returned {type(out).__name__}, expected a tensor of shape {expected}")
    if tuple(out.shape) != expected:
        raise who.fail(
            f"returned shape {tuple(out.shape)}, expected {expected} (occurrences, K latents, "
            "the decoder's hidden size)"
        )
    if not bool(torch.isfinite(out.sum())):
        raise who.fail("returned NaN or infinite values")
    return out

"""Conformance checks for an :class:`~chatnt_core.interfaces.Encoder`.

What the core relies on, and so what is checked: ``tokenize`` returns right-padded long
ids and a bool mask with at least one real token per row; ``forward`` returns float
(B, N, embed_dim) embeddings and the same mask; the embeddings of a sequence do not depend
on what else is in the batch (the core encodes each unique sequence once and caches the
rows); eval mode is deterministic; ``encode`` is tokenize + forward; the weights survive a
safetensors save/load round-trip (the checkpoint format).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from chatnt_core.interfaces import Encoder, EncoderOutput, EncoderTokens
from chatnt_core.modality import Modality
from chatnt_core.testing._common import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    Tolerance,
    check_save_load_roundtrip,
    evaluating,
    module_device,
    require_finite,
)
from chatnt_core.testing.report import CheckFailed, ConformanceReport, bind_checks, run_checks

# Three sequences per modality whose lengths differ under any plausible tokenizer
# (one letter per token, non-overlapping k-mers, BPE), and short enough for tiny presets.
DEFAULT_SEQUENCES: dict[Modality, tuple[str, ...]] = {
    Modality.DNA: ("ACGTACG", "TATAAAAGGCGCTTAGCA", "GGCGCATTACGATCGTAACGGCTAGCTAGGATCCATG"),
    Modality.RNA: ("ACGUACG", "UAUAAAAGGCGCUUAGCA", "GGCGCAUUACGAUCGUAACGGCUAGCUAGGAUCCAUG"),
    Modality.PROTEIN: ("MKTAY", "MKTAYIAKQRQISFVKSH", "MADEEKLPPGWEKRMSRSSGRVYYFNHITNASQWERPSG"),
}


def default_sequences(modality: Modality | str) -> list[str]:
    """The kit's test sequences for a modality: three, of clearly different lengths."""
    return list(DEFAULT_SEQUENCES[Modality(modality)])


@dataclass
class EncoderCase:
    """An encoder under test with its inputs; each check reads what it needs from here."""

    encoder: Encoder
    sequences: list[str]
    rebuild: Callable[[], Encoder] | None
    tolerance: Tolerance

    def tokenize(self, sequences: Sequence[str], encoder: Encoder | None = None) -> EncoderTokens:
        tokens = (encoder or self.encoder).tokenize(sequences)
        if not isinstance(tokens, EncoderTokens):
            raise CheckFailed(f"tokenize returned a {type(tokens).__name__}, not EncoderTokens")
        return tokens

    def run(self, encoder: Encoder, sequences: Sequence[str]) -> EncoderOutput:
        """tokenize + forward in eval mode without gradients, on the encoder's device."""
        tokens = self.tokenize(sequences, encoder)
        device = module_device(encoder)
        with torch.no_grad(), evaluating(encoder):
            out = encoder(tokens.input_ids.to(device), tokens.mask.to(device))
        if not isinstance(out, EncoderOutput):
            raise CheckFailed(f"forward returned a {type(out).__name__}, not EncoderOutput")
        return out

    def token_lengths(self) -> list[int]:
        """Real tokens of each sequence tokenized alone."""
        return [int(self.tokenize([s]).mask.sum()) for s in self.sequences]

    def require_padding(self) -> list[int]:
        """The alone lengths; fails if the batch would hold no padding to test with."""
        lengths = self.token_lengths()
        if len(set(lengths)) < 2:
            raise CheckFailed(
                f"the test sequences all tokenize to {lengths[0]} tokens, so the batch has no "
                "padding to test; pass sequences of different token lengths"
            )
        return lengths


def _real_rows(out: EncoderOutput, row: int) -> torch.Tensor:
    """(n, D_enc): the embeddings at the real positions of one batch row."""
    return out.embeddings[row][out.mask[row].bool()]


# ---- the checks, in the order they run ------------------------------------------------


def check_attributes(case: EncoderCase) -> None:
    encoder = case.encoder
    if not isinstance(getattr(encoder, "modality", None), Modality):
        raise CheckFailed("encoder.modality must be a chatnt_core.Modality, set in __init__")
    for name in ("embed_dim", "max_tokens"):
        value = getattr(encoder, name, None)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CheckFailed(f"encoder.{name} must be a positive int, got {value!r}")


def check_tokenize_output(case: EncoderCase) -> None:
    tokens = case.tokenize(case.sequences)
    ids, mask = tokens.input_ids, tokens.mask
    batch = len(case.sequences)
    if ids.dtype != torch.long or ids.dim() != 2 or ids.shape[0] != batch:
        raise CheckFailed(
            f"input_ids must be long (B={batch}, N), got {ids.dtype} {tuple(ids.shape)}"
        )
    if mask.dtype != torch.bool or mask.shape != ids.shape:
        raise CheckFailed(
            f"mask must be bool {tuple(ids.shape)} like input_ids, got {mask.dtype} "
            f"{tuple(mask.shape)}"
        )
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise CheckFailed(f"mask rows {empty} have no real token; every sequence needs one")
    if ids.shape[1] > case.encoder.max_tokens:
        raise CheckFailed(f"N={ids.shape[1]} exceeds encoder.max_tokens={case.encoder.max_tokens}")


def check_padding_mask(case: EncoderCase) -> None:
    lengths = case.require_padding()
    batch = case.tokenize(case.sequences)
    for row, (sequence, n) in enumerate(zip(case.sequences, lengths)):
        mask = batch.mask[row].bool()
        expected = torch.arange(mask.shape[0]) < n
        if not torch.equal(mask.cpu(), expected):
            raise CheckFailed(
                f"row {row}: the mask must be True at the {n} real tokens then False at the "
                f"right padding, got {mask.long().tolist()}"
            )
        alone = case.tokenize([sequence])
        if not torch.equal(batch.input_ids[row][mask], alone.input_ids[0][alone.mask[0].bool()]):
            raise CheckFailed(f"row {row}: its ids in a batch differ from its ids alone")


def check_forward_output(case: EncoderCase) -> None:
    tokens = case.tokenize(case.sequences)
    out = case.run(case.encoder, case.sequences)
    expected = (*tokens.input_ids.shape, case.encoder.embed_dim)
    if not out.embeddings.is_floating_point() or tuple(out.embeddings.shape) != expected:
        raise CheckFailed(
            f"embeddings must be float (B, N, embed_dim) = {expected}, got "
            f"{out.embeddings.dtype} {tuple(out.embeddings.shape)}"
        )
    if out.mask.dtype != torch.bool or not torch.equal(out.mask.cpu(), tokens.mask.cpu()):
        raise CheckFailed("forward must return the input mask (bool, same values) as its mask")


def check_finite(case: EncoderCase) -> None:
    require_finite(case.run(case.encoder, case.sequences).embeddings, "embeddings")


def check_padding_invariance(case: EncoderCase) -> None:
    case.require_padding()
    batch = case.run(case.encoder, case.sequences)
    # Every row is compared, padded or not: the core caches a sequence's rows, so they
    # must not depend on what else was in the batch.
    for row, sequence in enumerate(case.sequences):
        alone = case.run(case.encoder, [sequence])
        case.tolerance.assert_close(
            _real_rows(batch, row),
            _real_rows(alone, 0),
            f"sequence {row} encoded in a padded batch vs alone (is the mask honoured?)",
        )


def check_determinism(case: EncoderCase) -> None:
    first = case.run(case.encoder, case.sequences)
    second = case.run(case.encoder, case.sequences)
    case.tolerance.assert_close(
        second.embeddings[second.mask],
        first.embeddings[first.mask],
        "two eval-mode calls on the same batch (dropout or randomness left on?)",
    )


def check_encode_matches_forward(case: EncoderCase) -> None:
    with torch.no_grad(), evaluating(case.encoder):
        encoded = case.encoder.encode(case.sequences)
    reference = case.run(case.encoder, case.sequences)
    if not torch.equal(encoded.mask.cpu(), reference.mask.cpu()):
        raise CheckFailed("encode() returned another mask than tokenize() + forward()")
    case.tolerance.assert_close(
        encoded.embeddings[encoded.mask],
        reference.embeddings[reference.mask],
        "encode() vs tokenize() + forward()",
    )


def check_save_load(case: EncoderCase) -> None:
    def outputs(encoder: Encoder) -> torch.Tensor:
        out = case.run(encoder, case.sequences)
        return out.embeddings[out.mask]

    check_save_load_roundtrip(case.encoder, case.rebuild, outputs, case.tolerance)


ENCODER_CHECKS: dict[str, Callable[[EncoderCase], None]] = {
    "attributes": check_attributes,
    "tokenize_output": check_tokenize_output,
    "padding_mask": check_padding_mask,
    "forward_output": check_forward_output,
    "finite": check_finite,
    "padding_invariance": check_padding_invariance,
    "determinism": check_determinism,
    "encode_matches_forward": check_encode_matches_forward,
    "save_load_roundtrip": check_save_load,
}


def check_encoder(
    encoder: Encoder,
    sequences: Sequence[str] | None = None,
    *,
    rebuild: Callable[[], Encoder] | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    skip: Iterable[str] = (),
) -> ConformanceReport:
    """Run every encoder check; see :data:`ENCODER_CHECKS` for the names.

    ``sequences`` default to :func:`default_sequences` of ``encoder.modality``; give at
    least two that tokenize to different lengths. ``rebuild`` makes a fresh instance for
    the save/load round-trip (e.g. your factory with another seed); by default a deep copy
    with scrambled weights stands in. Loosen ``atol``/``rtol`` for half-precision weights.
    """
    if sequences is None:
        modality = getattr(encoder, "modality", Modality.DNA)
        sequences = default_sequences(modality if isinstance(modality, Modality) else "dna")
    case = EncoderCase(encoder, list(sequences), rebuild, Tolerance(atol, rtol))
    return run_checks(f"encoder {type(encoder).__name__}", bind_checks(ENCODER_CHECKS, case), skip)

"""Conformance checks for a :class:`~chatnt_core.interfaces.Decoder`.

How the core drives a decoder, and so what is checked: prompts are tokenized with the
placeholder as exactly one id, embedded with ``embed_tokens`` (which must accept that id
even if the embedding table has no row for it), left-padded into a batch with position
ids counted from the mask, and run through ``forward``; generation then feeds one token
per row against the returned KV cache. So: logits (B, T, vocab_size); cached incremental
steps equal a full forward; a row's logits do not depend on the left padding next to it;
eval mode is deterministic; text survives tokenize/detokenize; the weights survive a
safetensors save/load round-trip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from chatnt_core.batching import position_ids_from_mask
from chatnt_core.interfaces import Decoder, DecoderOutput
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

DEFAULT_TEXTS = (
    "Hello world",
    "Is there a TATA box in this promoter sequence?",
    "Answer: yes.",
)
CONTINUATION = " no"  # text appended token by token in the KV-cache check


@dataclass
class DecoderCase:
    decoder: Decoder
    texts: list[str]
    rebuild: Callable[[], Decoder] | None
    tolerance: Tolerance

    def ids(self, text: str) -> list[int]:
        return list(self.decoder.tokenize(text, add_bos=True))

    def left_padded(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids with ``pad_token_id`` on the left, and the (B, T) bool mask."""
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.decoder.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, row in enumerate(rows):
            if row:
                ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
                mask[i, width - len(row) :] = True
        return ids, mask

    def forward(
        self,
        decoder: Decoder,
        ids: torch.Tensor,  # (B, T)
        mask: torch.Tensor,  # (B, T_past + T)
        past: object = None,
        use_cache: bool = False,
    ) -> DecoderOutput:
        """Embed ``ids`` and run one eval-mode forward, positions counted from the mask."""
        device = module_device(decoder)
        ids, mask = ids.to(device), mask.to(device)
        positions = position_ids_from_mask(mask)[:, -ids.shape[1] :]  # (B, T)
        with torch.no_grad(), evaluating(decoder):
            out = decoder(
                decoder.embed_tokens(ids),
                mask,
                positions,
                past_key_values=past,
                use_cache=use_cache,
            )
        if not isinstance(out, DecoderOutput):
            raise CheckFailed(f"forward returned a {type(out).__name__}, not DecoderOutput")
        return out

    def batch_logits(self, decoder: Decoder) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the left-padded batch of texts at real positions (R, V), and the mask."""
        ids, mask = self.left_padded([self.ids(text) for text in self.texts])
        logits = self.forward(decoder, ids, mask).logits
        return logits[mask.to(logits.device)], mask


# ---- the checks, in the order they run ------------------------------------------------


def check_attributes(case: DecoderCase) -> None:
    decoder = case.decoder
    for name in ("hidden_size", "vocab_size", "tokenizer_size", "max_context"):
        value = getattr(decoder, name, None)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CheckFailed(f"decoder.{name} must be a positive int, got {value!r}")
    for name in ("placeholder_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(decoder, name, None)
        if not isinstance(value, int) or not 0 <= value < decoder.tokenizer_size:
            raise CheckFailed(
                f"decoder.{name} must be an id below tokenizer_size={decoder.tokenizer_size}, "
                f"got {value!r}"
            )
    if not isinstance(decoder.placeholder_token, str) or not decoder.placeholder_token:
        raise CheckFailed("decoder.placeholder_token must be a non-empty string")


def check_placeholder_token(case: DecoderCase) -> None:
    decoder = case.decoder
    alone = decoder.tokenize(decoder.placeholder_token)
    if list(alone) != [decoder.placeholder_token_id]:
        raise CheckFailed(
            f"tokenize({decoder.placeholder_token!r}) must be [{decoder.placeholder_token_id}] "
            f"(placeholder_token_id), got {list(alone)}"
        )
    inside = decoder.tokenize(f"Is {decoder.placeholder_token} a promoter?")
    count = list(inside).count(decoder.placeholder_token_id)
    if count != 1:
        raise CheckFailed(f"the placeholder inside a sentence tokenizes to {count} placeholder ids")


def check_text_roundtrip(case: DecoderCase) -> None:
    for text in case.texts:
        ids = case.decoder.tokenize(text)
        if not all(isinstance(i, int) for i in ids):
            raise CheckFailed(f"tokenize({text!r}) must return a list of int ids")
        back = case.decoder.detokenize(ids)
        if back.strip() != text.strip():
            raise CheckFailed(f"detokenize(tokenize({text!r})) gave {back!r}")


def check_embed_tokens(case: DecoderCase) -> None:
    decoder = case.decoder
    row = [decoder.placeholder_token_id, decoder.eos_token_id, decoder.pad_token_id]
    ids = torch.tensor([row, row[::-1]])  # (2, 3)
    with torch.no_grad():
        embedded = decoder.embed_tokens(ids.to(module_device(decoder)))
    expected = (2, 3, decoder.hidden_size)
    if not embedded.is_floating_point() or tuple(embedded.shape) != expected:
        raise CheckFailed(
            f"embed_tokens of (2, 3) ids (placeholder id included) must be float (B, T, D) = "
            f"{expected}, got {embedded.dtype} {tuple(embedded.shape)}"
        )
    require_finite(embedded, "token embeddings")


def check_forward_output(case: DecoderCase) -> None:
    ids, mask = case.left_padded([case.ids(text) for text in case.texts])
    logits = case.forward(case.decoder, ids, mask).logits
    expected = (*ids.shape, case.decoder.vocab_size)
    if not logits.is_floating_point() or tuple(logits.shape) != expected:
        raise CheckFailed(
            f"logits must be float (B, T, vocab_size) = {expected}, got {logits.dtype} "
            f"{tuple(logits.shape)}"
        )
    require_finite(logits[mask.to(logits.device)], "logits at real positions")


def check_kv_cache(case: DecoderCase) -> None:
    """Prompt once with ``use_cache=True``, then one token per step, as generation does."""
    decoder = case.decoder
    prompts = [case.ids(text) for text in case.texts]
    steps = decoder.tokenize(CONTINUATION)
    if not steps:
        raise CheckFailed(f"tokenize({CONTINUATION!r}) returned no ids")
    ids, mask = case.left_padded(prompts)
    out = case.forward(decoder, ids, mask, use_cache=True)
    cached = [out.logits[:, -1]]
    for token in steps:
        if out.past_key_values is None:
            raise CheckFailed("forward(use_cache=True) returned no past_key_values")
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        step_ids = torch.full((len(prompts), 1), token, dtype=torch.long)
        out = case.forward(decoder, step_ids, mask, past=out.past_key_values, use_cache=True)
        cached.append(out.logits[:, -1])
    full_ids, full_mask = case.left_padded([row + list(steps) for row in prompts])
    full = case.forward(decoder, full_ids, full_mask).logits  # (B, T + S, V)
    expected = full[:, -len(steps) - 1 :]  # the prompt's last position, then each step
    case.tolerance.assert_close(
        torch.stack(cached, dim=1), expected, "cached incremental logits vs a full forward"
    )


def _guessed_step(case: DecoderCase) -> tuple[torch.Tensor, DecoderOutput, torch.Tensor]:
    """A cached prompt, then one step feeding each row's next token and a wrong guess
    after it: the logits after the first token (B, V), the step's output and its mask."""
    decoder = case.decoder
    ids, mask = case.left_padded([case.ids(text) for text in case.texts])
    out = case.forward(decoder, ids, mask, use_cache=True)
    rows = ids.shape[0]
    wrong = decoder.eos_token_id  # the guess after the first token: rejected
    mask = torch.cat([mask, torch.ones((rows, 2), dtype=torch.bool)], dim=1)
    guessed = torch.tensor([[_continuation(case)[0], wrong]] * rows)
    out = case.forward(decoder, guessed, mask, past=out.past_key_values, use_cache=True)
    return out.logits[:, 0], out, mask


def _continuation(case: DecoderCase) -> list[int]:
    return list(case.decoder.tokenize(CONTINUATION)) * 3  # three tokens at least


def _rest_matches_full_forward(
    case: DecoderCase, first: torch.Tensor, past: object, mask: torch.Tensor, what: str
) -> None:
    """Feed the continuation's other tokens against ``past`` (mask ``mask``): with
    ``first``, the logits must be those of a full forward over prompt and continuation."""
    steps = _continuation(case)
    rest = torch.tensor([steps[1:]] * mask.shape[0])
    mask = torch.cat([mask, torch.ones(rest.shape, dtype=torch.bool)], dim=1)
    out = case.forward(case.decoder, rest, mask, past=past, use_cache=True)
    cached = torch.cat([first[:, None], out.logits], dim=1)  # (B, S, V)
    prompts = [case.ids(text) for text in case.texts]
    full_ids, full_mask = case.left_padded([row + steps for row in prompts])
    expected = case.forward(case.decoder, full_ids, full_mask).logits[:, -len(steps) :]
    case.tolerance.assert_close(cached, expected, what)


def check_kv_cache_with_guesses(case: DecoderCase) -> None:
    """As greedy generation checks guessed tokens (``chatnt_core.inference.drafting``): a cached
    step of several tokens, one of them a wrong guess that is then masked out in the
    middle of the cache, must give the logits of a full forward without it."""
    first, out, mask = _guessed_step(case)
    mask[:, -1] = False  # the wrong guess stays in the cache, masked out
    _rest_matches_full_forward(
        case,
        first,
        out.past_key_values,
        mask,
        "a cached multi-token step with a masked-out guess vs a full forward (mask holes or "
        "explicit position ids ignored?)",
    )


def check_kv_cache_tail_dropped(case: DecoderCase) -> None:
    """As greedy generation drops a guess no row kept (``Decoder.drop_cache_tail``): once
    the wrong guess is dropped from the cache, the next steps must give the logits of a
    full forward without it. A decoder that cannot drop (returns False) has nothing to
    check."""
    first, out, mask = _guessed_step(case)
    if not case.decoder.drop_cache_tail(out.past_key_values, 1):
        return
    _rest_matches_full_forward(
        case,
        first,
        out.past_key_values,
        mask[:, :-1],
        "steps after drop_cache_tail vs a full forward (the cache still holds the dropped "
        "position?)",
    )


def check_left_padding_invariance(case: DecoderCase) -> None:
    rows = [case.ids(text) for text in case.texts]
    if len({len(row) for row in rows}) < 2:
        raise CheckFailed("the test texts all tokenize to the same length; give texts that differ")
    ids, mask = case.left_padded(rows)
    batch = case.forward(case.decoder, ids, mask).logits
    for i, row in enumerate(rows):
        alone_ids, alone_mask = case.left_padded([row])
        alone = case.forward(case.decoder, alone_ids, alone_mask).logits
        case.tolerance.assert_close(
            batch[i][mask[i].to(batch.device)],
            alone[0],
            f"text {i} in a left-padded batch vs alone (attention mask or position ids ignored?)",
        )


def check_determinism(case: DecoderCase) -> None:
    first, _ = case.batch_logits(case.decoder)
    second, _ = case.batch_logits(case.decoder)
    case.tolerance.assert_close(
        second, first, "two eval-mode calls on the same batch (dropout or randomness left on?)"
    )


def check_save_load(case: DecoderCase) -> None:
    check_save_load_roundtrip(
        case.decoder, case.rebuild, lambda d: case.batch_logits(d)[0], case.tolerance
    )


DECODER_CHECKS: dict[str, Callable[[DecoderCase], None]] = {
    "attributes": check_attributes,
    "placeholder_token": check_placeholder_token,
    "text_roundtrip": check_text_roundtrip,
    "embed_tokens": check_embed_tokens,
    "forward_output": check_forward_output,
    "kv_cache": check_kv_cache,
    "kv_cache_with_guesses": check_kv_cache_with_guesses,
    "kv_cache_tail_dropped": check_kv_cache_tail_dropped,
    "left_padding_invariance": check_left_padding_invariance,
    "determinism": check_determinism,
    "save_load_roundtrip": check_save_load,
}


def check_decoder(
    decoder: Decoder,
    texts: Sequence[str] | None = None,
    *,
    rebuild: Callable[[], Decoder] | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    skip: Iterable[str] = (),
) -> ConformanceReport:
    """Run every decoder check; see :data:`DECODER_CHECKS` for the names.

    ``texts`` (plain English, of different token lengths) default to :data:`DEFAULT_TEXTS`.
    ``rebuild`` makes a fresh instance for the save/load round-trip (by default a deep
    copy with scrambled weights). Loosen ``atol``/``rtol`` for half-precision weights.
    """
    case = DecoderCase(decoder, list(texts or DEFAULT_TEXTS), rebuild, Tolerance(atol, rtol))
    return run_checks(f"decoder {type(decoder).__name__}", bind_checks(DECODER_CHECKS, case), skip)

"""Draft tokens for draft-and-verify decoding: n-gram lookup in what a row has already read.

Answers about sequences copy a lot: the tag from the question, the factor name, the task
card's own phrasings ("No, @a.fna does not contain a CTCF motif."). A decoding step on a
small batch reads every weight once whatever the number of tokens it feeds, so feeding a
row's next token together with a guess of the few after it costs little more than feeding
the token alone; the decoder then checks the guess and keeps its longest correct part
(``chatnt_core.inference.generation``). The guess here is the lookup the literature calls prompt
lookup decoding: find the row's last n tokens earlier in its context (the prompt, the
answer so far, then any reference texts such as the card's phrasings) and propose what
followed them there. No draft model, no training; a wrong guess costs only its share of
one step, and greedy answers come out identical.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from chatnt_core.prompt import find_tags

if TYPE_CHECKING:
    from chatnt_core.batching import ModelBatch
    from chatnt_core.data.tasks import TaskCard

# longest n-gram matched; shorter ones are tried when it finds nothing
MAX_NGRAM = 3
# draft source: a reference text (the n-gram lengths 1..MAX_NGRAM name own-context matches)
REFERENCE = MAX_NGRAM + 1
# longest continuation a reference n-gram keeps (drafts are shorter: draft_tokens)
MAX_DRAFT = 8


class ReferenceIndex:
    """Texts an answer is likely to copy (a card's phrasings), indexed for lookup: each
    n-gram maps to what follows it, cut where the texts disagree ("@seq1 carries a" is
    followed by CTCF in one phrasing and by TBP in another, so it predicts nothing past
    "a"; once the model has written TBP, " motif." follows). Built once and shared by
    every row with the same references."""

    def __init__(self, references: Sequence[Sequence[int]], max_ngram: int = MAX_NGRAM):
        self.continuations: dict[tuple[int, ...], list[int]] = {}
        for ref in references:
            for end in range(1, len(ref)):  # n-grams followed by at least one token
                for n in range(1, min(max_ngram, end) + 1):
                    key, follows = tuple(ref[end - n : end]), list(ref[end : end + MAX_DRAFT])
                    known = self.continuations.get(key)
                    if known is not None:
                        follows = known[: common_prefix(known, follows)]
                    self.continuations[key] = follows


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two token lists share."""
    size = 0
    while size < min(len(a), len(b)) and a[size] == b[size]:
        size += 1
    return size


class NgramDrafter:
    """Draft continuations for one row by n-gram lookup in its own tokens and references.

    ``context`` is what the row has read (its prompt ids, padding excluded) and grows with
    every accepted token (:meth:`extend`). The longest n-gram that predicts something
    wins; at one length the references (:class:`ReferenceIndex`) beat the row's own
    tokens, since they predict the answer's own wording. Lookups are dictionary reads:
    in the row's tokens each n-gram maps to the position after its latest occurrence.
    """

    def __init__(
        self,
        context: Sequence[int],
        references: ReferenceIndex | None = None,
        max_ngram: int = MAX_NGRAM,
    ) -> None:
        self.max_ngram = max_ngram
        self.tokens: list[int] = []
        self.index: dict[tuple[int, ...], int] = {}  # n-gram -> position after it in tokens
        self.references = references if references is not None else ReferenceIndex(())
        self.extend(context)

    def extend(self, tokens: Sequence[int]) -> None:
        """Append tokens the row has read (accepted answer tokens)."""
        for token in tokens:
            end = len(self.tokens)  # the n-grams ending just before ``token`` now have a successor
            for n in range(1, min(self.max_ngram, end) + 1):
                self.index[tuple(self.tokens[end - n : end])] = end
            self.tokens.append(token)

    def draft(self, limit: int) -> tuple[list[int], int]:
        """Up to ``limit`` tokens likely to follow the row's tokens (possibly none), and
        where they come from: ``REFERENCE``, or the length n of the n-gram matched in the
        row's own tokens (0 with no draft)."""
        if limit < 1 or not self.tokens:
            return [], 0
        for n in range(min(self.max_ngram, len(self.tokens)), 0, -1):
            key = tuple(self.tokens[-n:])
            follows = self.references.continuations.get(key)
            if follows:
                return follows[:limit], REFERENCE
            start = self.index.get(key)
            if start is not None:
                return self.tokens[start : start + limit], n
        return [], 0


# Before any guess of a kind was checked, its tokens are assumed right at these rates
# (per token, given the previous one was): the card's phrasings and long matches are
# fair guesses, a single repeated token is a poor one. Each counts as PRIOR_WEIGHT
# checks. Every row's guess is checked against the tokens that came, whether it was fed
# or not, so the rates follow the call's own record from its first steps.
PRIOR_ACCEPTANCE = {REFERENCE: 0.5, 3: 0.3, 2: 0.2, 1: 0.1}
PRIOR_WEIGHT = 2.0
# How many fed tokens cost as much as reading the decoder's weights once: a step feeding
# N tokens costs about (WEIGHT_READ_TOKENS + N) units. Measured on the SmolLM2-135M
# assembly, 2 CPU threads: 1, 2, 3, 5 tokens per row took 127, 216, 281, 430 ms at batch
# 32 (about 51 + 2.4 N ms: 21 tokens) and 1, 2, 4, 8 tokens 96, 118, 155, 216 ms at batch
# 8 (79 + 2.1 N: 37 tokens); the lower end is taken, since a wasted guess costs more than
# a missed one. It decides when guesses pay: at batch 1 a guessed token costs 4% of a
# step, at batch 8 a quarter, at batch 32 more than half of one.
WEIGHT_READ_TOKENS = 24.0
# Guessing must promise this much more answer per unit of time than not guessing: near
# the break-even point the cost model's error is larger than the expected gain.
MARGIN = 0.1


class Acceptance:
    """How often each kind of draft token has been right so far in one decoding call."""

    def __init__(self) -> None:
        self.accepted = {kind: PRIOR_ACCEPTANCE[kind] * PRIOR_WEIGHT for kind in PRIOR_ACCEPTANCE}
        self.checked = dict.fromkeys(PRIOR_ACCEPTANCE, PRIOR_WEIGHT)

    def rate(self, kind: int) -> float:
        return self.accepted[kind] / self.checked[kind] if kind else 0.0

    def record(self, kind: int, checked: int, accepted: int) -> None:
        """``checked`` tokens of a guess of ``kind`` were compared with the tokens that
        came and the first ``accepted`` were right: ``accepted`` successes, and one
        failure unless all were right."""
        if kind and checked:
            self.accepted[kind] += accepted
            self.checked[kind] += accepted + (accepted < checked)

    def width(self, drafts: Sequence[tuple[Sequence[int], int]], limit: int) -> int:
        """How many draft tokens every row should feed this step (0 to ``limit``): the
        number that maximizes the expected answer tokens per unit of step time, counting
        a step feeding N tokens as ``WEIGHT_READ_TOKENS + N`` units, and 0 unless that
        beats not guessing by ``MARGIN``. ``drafts`` holds each still decoded row's draft
        and its kind (:meth:`NgramDrafter.draft`)."""
        rows = len(drafts)
        if not rows:
            return 0
        plain = rows / (WEIGHT_READ_TOKENS + rows)
        best, best_rate = 0, plain * (1 + MARGIN)
        gained = [0.0] * rows  # expected accepted tokens per row at the width tried
        for width in range(1, limit + 1):
            for r, (tokens, kind) in enumerate(drafts):
                if width <= len(tokens):
                    gained[r] += self.rate(kind) ** width
            rate = (rows + sum(gained)) / (WEIGHT_READ_TOKENS + rows * (width + 1))
            if rate > best_rate:
                best, best_rate = width, rate
        return best


def card_references(
    card: TaskCard, tags: Sequence[str], tokenize: Callable[[str], list[int]]
) -> list[list[int]]:
    """A task card's answer phrasings as draft references: placeholders filled with
    ``tags`` (the names the decoder reads, in the card's placeholder order), tokenized.
    A ``{value}`` splits a phrasing into the parts around it (the number is the model's
    to say). Fewer tags than placeholders: no references."""
    from chatnt_core.data.tasks import fill

    placeholders = card.seq_placeholders
    if len(tags) < len(placeholders):
        return []
    names = dict(zip(placeholders, tags))
    if card.labels:
        phrasings = [text for label in card.labels for text in label.answers]
    else:
        phrasings = list(card.answers or [])
    references = []
    for text in phrasings:
        for part in fill(text, names).split("{value}"):
            ids = tokenize(part)
            if len(ids) > 1:
                references.append(ids)
    return references


def batch_references(
    batch: ModelBatch,
    questions: Sequence[str],
    cards: Sequence[TaskCard | None],
    tokenize: Callable[[str], list[int]],
) -> list[list[list[int]]]:
    """Per row of ``batch``, the answer phrasings of its card (``cards[row]``, None: no
    references) as the decoder would write them: the tags of ``questions[row]`` (the
    row's last message) as the prompt shows them (``batch.user_names`` maps the aliases
    the decoder reads back to the user's names). Rows alike are tokenized once."""
    references: list[list[list[int]]] = []
    done: dict[tuple[str, tuple[str, ...]], list[list[int]]] = {}
    for row, (question, card) in enumerate(zip(questions, cards)):
        if card is None:
            references.append([])
            continue
        names = batch.user_names[row] if batch.user_names else {}
        shown = {user: alias for alias, user in names.items()}
        tags = tuple(shown.get(tag, tag) for tag in dict.fromkeys(find_tags(question)))
        if (card.name, tags) not in done:
            done[card.name, tags] = card_references(card, tags, tokenize)
        references.append(done[card.name, tags])
    return references

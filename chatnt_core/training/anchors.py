"""Label anchors: the projected vectors learn to spell the answer's label in the LLM's words.

Why: a frozen pretrained LLM reads the K projected vectors it is given like token
embeddings. Trained only through the chat loss, the projection first learns to *hide* the
sequence (its variation is noise to a decoder that is learning the answer templates) and
the decoder never starts to read it: measured on the demo tasks with SmolLM2, 80 updates
shrank the between-sequence spread of the vectors from 38% to 6% of their size and left
CTCF at chance, LoRA or not (docs/training.md, "The quickstart recipe"). An LLM does know
how to use words in its context, so the projection is taught to produce vectors that *are*
the label's words: each of a sequence's K vectors, read through the decoder's own
(frozen) embedding table as a distribution over its vocabulary, should give the anchor's
tokens in turn ("Yes", or "0", ".", "3", "4" for a GC fraction of 0.34, or "GATA1"). A
short warm-up does this before the chat training (no decoder pass, so it is cheap), and the
same loss, weighted, keeps the vectors anchored while the chat loss trains.

The anchor of a record comes from its task card: a regression value is printed with the
card's decimals; a class uses its label's ``anchor`` if the card gives one, else the first
word shared by all of the label's answers when that word tells the labels apart ("Yes" /
"No"), else the label's name. Only records with one sequence take part; the vectors of the
sequence's first mention (the question the record's label answers) are anchored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from chatnt_core.batching import Example
from chatnt_core.data.records import record_to_example
from chatnt_core.data.tasks import TaskCard
from chatnt_core.errors import ConfigError
from chatnt_core.prompt import Turn, find_tags

if TYPE_CHECKING:
    from chatnt_core.model import ChatNTModel
    from chatnt_core.training.config import LabelAnchorsConfig


def _first_word(answer: str) -> str:
    words = answer.split()
    return re.sub(r"[^\w]", "", words[0]) if words else ""


def label_anchor(card: TaskCard, label: str) -> str:
    """The word that stands for ``label`` of a classification card (see module docstring)."""
    specs = card.labels or []
    spec = next(s for s in specs if s.name == label)
    if spec.anchor:
        return spec.anchor
    firsts = [{_first_word(a) for a in s.answers} for s in specs]
    if all(len(f) == 1 and "" not in f for f in firsts):
        words = [next(iter(f)) for f in firsts]
        if len({w.lower() for w in words}) == len(words):
            return words[specs.index(spec)]
    return spec.name


def anchor_text(card: TaskCard, record: Mapping[str, Any]) -> str | None:
    """The anchor of a record's label or value; None when the record has neither."""
    if card.kind == "regression":
        if record.get("value") is None:
            return None
        decimals = card.value.decimals if card.value is not None else 2
        return f"{float(record['value']):.{decimals}f}"
    if record.get("label") not in {s.name for s in card.labels or []}:
        return None
    return label_anchor(card, str(record["label"]))


def anchor_targets(token_ids: Sequence[int], num_latents: int) -> list[int]:
    """The anchor's tokens repeated over the K vectors: vector k spells token k mod n."""
    if not token_ids:
        raise ValueError("an anchor must have at least one token")
    return [token_ids[k % len(token_ids)] for k in range(num_latents)]


@dataclass
class AnchoredExample:
    """A record cut to its first turn that mentions a sequence, and its anchor tokens (K,)."""

    example: Example
    targets: list[int]


def anchored_example(
    record: Mapping[str, Any], cards: Mapping[str, TaskCard], model: ChatNTModel
) -> AnchoredExample | None:
    """The record's anchored first sequence turn, or None if it has no anchor."""
    card = cards.get(str(record["task"]))
    if card is None or len(record["sequences"]) != 1:
        return None
    text = anchor_text(card, record)
    if text is None:
        return None
    example = record_to_example(dict(record))
    turn = next((t for t in example.turns if find_tags(t.user)), None)
    if turn is None:
        return None
    targets = anchor_targets(model.decoder.tokenize(text), model.num_latents)
    return AnchoredExample(Example([Turn(turn.user, turn.assistant)], example.sequences), targets)


REGRESSION_CHARACTERS = "0123456789.-"


def anchor_vocabulary(cards: Mapping[str, TaskCard], model: ChatNTModel) -> list[int]:
    """Sorted decoder ids of every token any anchor of ``cards`` can hold.

    Why: a softmax over these few dozen words rather than the LLM's whole vocabulary is a
    well-posed classification the projection learns in hundreds of updates (measured on
    the demo tasks: CTCF-site token accuracy 0.91 after 400 warm-up updates, against
    0.83 after 600 over the full vocabulary), and a word-output projection then picks
    among words that can answer, never a look-alike token.
    """
    words: set[str] = set()
    for card in cards.values():
        if card.kind == "regression":
            words.update(REGRESSION_CHARACTERS)
        else:
            words.update(label_anchor(card, spec.name) for spec in card.labels or [])
    ids = {token for word in words for token in model.decoder.tokenize(word)}
    return sorted(ids)


def embedding_table(model: ChatNTModel) -> torch.Tensor:
    """(V, D) the decoder's input embeddings of its whole vocabulary, detached."""
    ids = torch.arange(model.decoder.vocab_size, device=model.device)
    with torch.no_grad():
        return model.decoder.embed_tokens(ids[None, :])[0].detach()


def anchor_loss(
    projected: torch.Tensor,  # (n, K, D)
    targets: torch.Tensor,  # (n, K) long
    table: torch.Tensor,  # (V, D)
    kind: str = "logits",
    vocabulary: torch.Tensor | None = None,  # (W,) long: the ids the softmax runs over
) -> torch.Tensor:
    """How far each vector is from being its anchor token.

    ``logits`` (default): cross-entropy of the vector's dot products with the table (a
    logit lens) - what picks the word a word-output projection hands the decoder - over
    ``vocabulary`` if given (targets outside it are ignored), else the whole table.
    ``embedding``: squared distance to the token's embedding, relative to the table's
    mean square.
    """
    if kind == "logits":
        if vocabulary is not None:
            lookup = torch.full((table.shape[0],), -100, dtype=torch.long, device=table.device)
            lookup[vocabulary] = torch.arange(len(vocabulary), device=table.device)
            table, targets = table[vocabulary], lookup[targets]
        logits = projected.float() @ table.float().T  # (n, K, V or W)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    wanted = table[targets].float()  # (n, K, D)
    return (projected.float() - wanted).pow(2).mean() / table.float().pow(2).mean()


def collect_anchored(
    records: Iterable[Mapping[str, Any]],
    cards: Mapping[str, TaskCard],
    model: ChatNTModel,
    max_per_task: int,
) -> list[AnchoredExample]:
    """Anchored examples, at most ``max_per_task`` per task, in record order."""
    per_task: dict[str, int] = {}
    out = []
    for record in records:
        task = str(record["task"])
        if per_task.get(task, 0) >= max_per_task:
            continue
        item = anchored_example(record, cards, model)
        if item is not None:
            per_task[task] = per_task.get(task, 0) + 1
            out.append(item)
    return out


def warm_up_projections(
    model: ChatNTModel,
    examples: Sequence[AnchoredExample],
    config: LabelAnchorsConfig,
    seed: int,
    progress: Any = None,
    vocabulary: torch.Tensor | None = None,
) -> list[float]:
    """Train the projections alone on the anchor loss; returns the loss of every update.

    Encoders are held (eval mode, no gradient), so their outputs are cached across
    updates; the decoder only lends its embedding table. The rate warms up linearly over 20
    updates and then follows a cosine to a tenth. ``progress`` is called with the number
    of updates done; ``vocabulary`` restricts the softmax (see ``anchor_loss``).
    """
    if not examples:
        raise ConfigError(
            "label_anchors: no training record has one sequence and a label or value of a "
            "known task card; remove label_anchors.warmup_steps or add such data"
        )
    table = embedding_table(model)
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.projections.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    held = [(p, p.requires_grad) for p in model.encoders.parameters()]
    modes = [(m, m.training) for m in (*model.encoders.values(), *model.projections.values())]
    for p, _ in held:
        p.requires_grad_(False)
    model.encoders.eval()
    model.projections.train()
    losses = []
    try:
        for step in range(1, config.warmup_steps + 1):
            for group in optimizer.param_groups:
                group["lr"] = config.lr * _rate(step, config.warmup_steps)
            rows = torch.randint(len(examples), (config.batch_size,), generator=generator)
            picked = [examples[int(i)] for i in rows]
            batch = model.tokenize([e.example for e in picked]).to(model.device)
            first = first_occurrences([e.example for e in picked], batch.num_occurrences)
            projected = model.project_occurrences(batch)[first]  # (n, K, D)
            targets = torch.tensor([e.targets for e in picked], device=model.device)
            loss = anchor_loss(projected, targets, table, vocabulary=vocabulary)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step)
    finally:
        # the last step's gradients would otherwise add to the first chat update's
        optimizer.zero_grad(set_to_none=True)
        for p, flag in held:
            p.requires_grad_(flag)
        for module, training in modes:
            module.train(training)
    return losses


def _rate(step: int, total: int) -> float:
    """Multiplier of the warm-up's learning rate at ``step`` (1-based) of ``total``."""
    if step <= 20:
        return step / 20
    progress = (step - 20) / max(1, total - 20)
    return 0.1 + 0.45 * (1.0 + math.cos(math.pi * progress))


def first_occurrences(examples: Sequence[Example], total: int) -> torch.Tensor:
    """Index of each example's first tag occurrence among a batch's ``total`` occurrences.

    Occurrences are numbered in batch order: example by example, tags in order of
    appearance, so example j's first is the count of all tags before it.
    """
    counts = [sum(len(find_tags(t.user)) for t in e.turns) for e in examples]
    starts = [sum(counts[:j]) for j in range(len(counts))]
    if sum(counts) != total:
        raise ValueError(f"expected {sum(counts)} tag occurrences in the batch, got {total}")
    return torch.tensor(starts, dtype=torch.long)

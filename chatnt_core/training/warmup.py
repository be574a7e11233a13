"""Encoder warm-up: supervised probes on the training labels before the chat training.

Why: the paper starts from a pretrained encoder (NT-v2), whose features already tell
binding sites apart. An encoder trained from scratch *through* a decoder that is itself
learning English gets almost no signal at first: the decoder learns the answer templates,
ignores the sequence, and the encoder never learns the motifs (on the demo CTCF task the
answers stayed at chance after 3,000 updates). A short warm-up fixes the order: the
encoder first learns features from the labels directly, through throw-away linear probes,
then the usual training teaches the decoder to read them.

The probes see a position-invariant summary of each sequence (the element-wise maximum of
the encoder's outputs over its real tokens) - "is there a match anywhere" - so the
encoder learns motif detectors rather than where sites happened to sit. One probe per task
card with labels or values: classification (binary, multi_label) by cross-entropy over the
card's labels, regression by squared error on standardised values. Only records with one
sequence of the encoder's modality take part. The probes are discarded afterwards; the
warm-up is seeded, so every process of a launch computes the same weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from chatnt_core.data.tasks import TaskCard
from chatnt_core.errors import ConfigError
from chatnt_core.interfaces import Encoder
from chatnt_core.training.config import EncoderWarmupConfig


@dataclass
class ProbeTask:
    """One task's sequences (pre-tokenized) and targets for the warm-up."""

    name: str
    input_ids: torch.Tensor  # (R, N) long
    mask: torch.Tensor  # (R, N) bool
    targets: torch.Tensor  # (R,) long class index, or (R,) float standardised value
    num_classes: int  # 0 for regression

    @property
    def regression(self) -> bool:
        return self.num_classes == 0


def probe_tasks(
    records: Iterable[Mapping[str, Any]],
    cards: Mapping[str, TaskCard],
    encoder: Encoder,
    max_per_task: int,
) -> list[ProbeTask]:
    """Group usable records by task: one sequence of the encoder's modality and a target."""
    sequences: dict[str, list[str]] = {}
    targets: dict[str, list[float]] = {}
    for record in records:
        card = cards.get(str(record["task"]))
        seqs = record["sequences"]
        if card is None or len(seqs) != 1 or seqs[0]["modality"] != encoder.modality.value:
            continue
        if card.kind == "regression":
            if record["value"] is None:
                continue
            target = float(record["value"])
        else:
            names = [label.name for label in card.labels or []]
            if record["label"] not in names:
                continue
            target = float(names.index(record["label"]))
        if len(sequences.setdefault(card.name, [])) < max_per_task:
            sequences[card.name].append(seqs[0]["sequence"])
            targets.setdefault(card.name, []).append(target)
    tasks = []
    for name in sorted(sequences):
        card = cards[name]
        tokens = encoder.tokenize(sequences[name])
        values = torch.tensor(targets[name])
        if card.kind == "regression":
            values = (values - values.mean()) / values.std().clamp(min=1e-6)
            tasks.append(ProbeTask(name, tokens.input_ids, tokens.mask, values, 0))
        else:
            count = len(card.labels or [])
            tasks.append(ProbeTask(name, tokens.input_ids, tokens.mask, values.long(), count))
    return tasks


def summarise(encoder: Encoder, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, N) ids -> (B, D_enc): each channel's maximum over the real tokens."""
    out = encoder(input_ids, mask)
    lowest = torch.finfo(out.embeddings.dtype).min
    return out.embeddings.masked_fill(~out.mask[..., None], lowest).amax(dim=1)


def warm_up_encoder(
    encoder: Encoder,
    tasks: list[ProbeTask],
    config: EncoderWarmupConfig,
    seed: int,
    device: torch.device,
    progress: Any = None,
) -> list[float]:
    """Train ``encoder`` with one linear probe per task; returns the loss of every update.

    ``progress``, if given, is called with the number of updates done after each one.
    """
    if not tasks:
        raise ConfigError(
            f"encoder_warmup: no training record has one {encoder.modality} sequence and a "
            "label or value of a known task card; remove encoder_warmup or add such data"
        )
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probes = nn.ModuleList(
            nn.Linear(encoder.embed_dim, max(task.num_classes, 1)) for task in tasks
        ).to(device)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *probes.parameters()], lr=config.lr)
    was_training = encoder.training
    encoder.train()
    losses = []
    for step in range(1, config.steps + 1):
        total = torch.zeros((), device=device)
        for task, probe in zip(tasks, probes, strict=True):
            rows = torch.randint(len(task.targets), (config.batch_size,), generator=generator)
            ids, mask = task.input_ids[rows].to(device), task.mask[rows].to(device)
            prediction = probe(summarise(encoder, ids, mask))  # (B, C) or (B, 1)
            target = task.targets[rows].to(device)
            if task.regression:
                total = total + F.mse_loss(prediction[:, 0], target)
            else:
                total = total + F.cross_entropy(prediction, target)
        loss = total / len(tasks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step)
    optimizer.zero_grad(set_to_none=True)  # or the last step's gradients join update 1
    encoder.train(was_training)
    return losses

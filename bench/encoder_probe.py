"""How fast does an encoder trained from scratch learn the demo CTCF task, directly?

Why this exists: the quickstart trains its encoder from random weights, and a decoder can
only read what the encoder has learned. This trains each candidate encoder with a linear
probe straight on the demo labels (no decoder, fresh demo examples every batch) and prints
held-out accuracy as it goes, so encoder choices are measured rather than guessed.

    python bench/encoder_probe.py [--steps 1000] [--batch 16]

Each row: encoder, update, held-out accuracy (400 sequences), seconds so far.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from chatnt_char_encoder import (
    CharTransformerEncoder,
    CharTransformerParams,
    MotifCNNEncoder,
    MotifCNNParams,
)
from chatnt_core.data.demo import DemoGenerator
from chatnt_core.interfaces import Encoder
from chatnt_core.modality import Modality

TASK = "demo-ctcf-site"


def candidates() -> dict[str, Encoder]:
    dna = Modality.DNA
    return {
        "char-transformer (64 x 2, conv 15)": CharTransformerEncoder(
            dna, CharTransformerParams(hidden_size=64, num_layers=2, conv_kernel=15)
        ),
        "motif-cnn (64, width 19)": MotifCNNEncoder(dna, MotifCNNParams(hidden_size=64)),
        "motif-cnn (64, width 19, both strands)": MotifCNNEncoder(
            dna, MotifCNNParams(hidden_size=64, both_strands=True)
        ),
    }


def batch(generator: DemoGenerator, size: int) -> tuple[list[str], torch.Tensor]:
    examples = [generator.draw(TASK) for _ in range(size)]
    labels = torch.tensor([float(e.label == "ctcf_site") for e in examples])
    return [e.sequence for e in examples], labels


def summary(encoder: Encoder, sequences: list[str]) -> torch.Tensor:
    """Each channel's maximum over the real tokens: (B, D_enc)."""
    out = encoder.encode(sequences)
    lowest = torch.finfo(out.embeddings.dtype).min
    return out.embeddings.masked_fill(~out.mask[..., None], lowest).amax(dim=1)


def run(name: str, encoder: Encoder, steps: int, size: int) -> None:
    torch.manual_seed(0)
    probe = nn.Linear(encoder.embed_dim, 1)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *probe.parameters()], lr=2e-3)
    train, held_out = DemoGenerator(0), DemoGenerator(1)
    test_sequences, test_labels = batch(held_out, 400)
    started = time.perf_counter()
    for step in range(steps + 1):
        if step % max(steps // 5, 1) == 0:
            encoder.eval()
            with torch.no_grad():
                logits = probe(summary(encoder, test_sequences))[:, 0]
            accuracy = float(((logits > 0).float() == test_labels).float().mean())
            elapsed = time.perf_counter() - started
            print(f"{name:40s} update {step:5d}  accuracy {accuracy:.3f}  {elapsed:6.1f} s")
            encoder.train()
        if step == steps:
            break
        sequences, labels = batch(train, size)
        loss = F.binary_cross_entropy_with_logits(probe(summary(encoder, sequences))[:, 0], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name, encoder in candidates().items():
        run(name, encoder, args.steps, args.batch)


if __name__ == "__main__":
    main()

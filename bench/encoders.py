"""Encoder throughput on CPU: NT-v2 forward with SDPA vs explicit-softmax attention.

Builds the 500M-shaped NT-v2 layer stack (hidden 1024, 16 heads, GLU width 4096) at reduced
depth (default 2 of its 29 layers: tokens/s scales ~1/depth, so multiply the time per layer
by 29 for the full model) with random weights, and times one forward of a full 2048-token
window, batch 1, in eval mode under ``torch.no_grad``: one warm-up, then the median of
``--repeats`` runs, for ``attention=sdpa`` and ``attention=manual``.

    python bench/encoders.py                       # defaults above
    python bench/encoders.py --layers 4 --tokens 1024 --repeats 5 --threads 8
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from chatnt_nt.model import PRESETS, AttentionImpl, NTv2Model
from chatnt_nt.tokenizer import CLS_ID, VOCAB_SIZE


def time_forward(
    model: NTv2Model, attention: AttentionImpl, tokens: int, batch: int, repeats: int
) -> float:
    """Median seconds per forward of a (batch, tokens) window."""
    model.set_attention(attention)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(6, VOCAB_SIZE, (batch, tokens), generator=generator)  # (B, N)
    ids[:, 0] = CLS_ID
    mask = torch.ones(batch, tokens, dtype=torch.bool)  # (B, N)
    times = []
    with torch.no_grad():
        model(ids, mask)  # warm-up: allocator, kernels
        for _ in range(repeats):
            start = time.perf_counter()
            model(ids, mask)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="500m", choices=sorted(PRESETS), help="layer shape")
    parser.add_argument("--layers", type=int, default=2, help="depth to run (500m has 29)")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=1, help="sequences per forward")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    full = PRESETS[args.preset]
    config = dataclasses.replace(full, num_hidden_layers=args.layers)
    torch.manual_seed(0)
    model = NTv2Model(config).eval()
    model.init_weights()
    print(
        f"NT-v2 {args.preset}-shaped stack: hidden {config.hidden_size}, "
        f"{config.num_attention_heads} heads, F {config.intermediate_size}, "
        f"{config.num_hidden_layers}/{full.num_hidden_layers} layers; batch {args.batch} x "
        f"{args.tokens} tokens; {torch.get_num_threads()} threads; torch {torch.__version__}"
    )
    rates: dict[str, float] = {}
    for attention in ("sdpa", "manual"):
        seconds = time_forward(model, attention, args.tokens, args.batch, args.repeats)
        rates[attention] = args.batch * args.tokens / seconds
        per_layer = seconds / config.num_hidden_layers
        print(
            f"  attention={attention:<6}  {seconds * 1000:8.1f} ms/forward  "
            f"{rates[attention]:9.0f} tokens/s  "
            f"(~{per_layer * full.num_hidden_layers:.2f} s for all {full.num_hidden_layers} layers)"
        )
    print(f"  sdpa / manual throughput: {rates['sdpa'] / rates['manual']:.2f}x")


if __name__ == "__main__":
    main()

"""Benchmark: KV-cached generation vs full recomputation, shared-prefix vs naive scoring.

Not a test: it prints figures. The model is randomly initialised (nothing downloaded):
a char-transformer DNA encoder, an English-aware Perceiver (K = 64) and a mid-size
Llama (8 layers, hidden 512, 8 heads, MLP 1376, byte vocabulary) behind ``hf-causal-lm``.
Each prompt is ~512 decoder tokens (64 of them the sequence placeholders), as in the
paper's evaluation (Methods §1.4: 40 new tokens, batches of 32).

* generation: ``--new-tokens`` tokens per row, forced (EOS disabled on the bench's own
  decoder instance so a random model cannot stop early), with the KV cache and with
  ``GenerationConfig(use_cache=False)``, which re-runs the whole prompt every step as the
  released ChatNT code did;
* scoring: one question x (2 classes x 8 phrasings) answers, shared-prefix
  (``score_candidates``) vs one full forward per answer (``score_candidates_naive``) and
  vs all 16 full conversations in one padded forward.

The encoders' output cache is off, so every call pays for the encoder as a fresh
question would. Run: ``python bench/generation.py`` (about 3 minutes on 2 CPU cores;
``--threads 1`` gives steadier figures when other jobs share the cores).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from chatnt_core import ChatNTModel, Example, GenerationConfig, SequenceInput, Turn
from chatnt_core.config import parse_config
from chatnt_core.inference.generation import generate_ids
from chatnt_core.inference.scoring import CandidateScores, score_candidates, score_candidates_naive

POSITIVE = [
    "Yes",
    "yes, it is",
    "Yes, this sequence is accessible.",
    "It is accessible.",
    "Indeed, the chromatin is open here.",
    "Yes, open chromatin.",
    "The answer is yes.",
    "Accessible",
]
NEGATIVE = [
    "No",
    "no, it is not",
    "No, this sequence is not accessible.",
    "It is not accessible.",
    "The chromatin is closed here.",
    "No, closed chromatin.",
    "The answer is no.",
    "Inaccessible",
]
FILLER = (
    "Chromatin accessibility varies between cell types and is measured by DNase-seq "
    "or ATAC-seq assays over the whole genome. "
)


def bench_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": "bench-mid",
        "num_latents": args.num_latents,
        "encoders": {
            "dna": {
                "name": "char-transformer",
                "params": {"hidden_size": 256, "num_layers": 2, "num_heads": 8, "max_tokens": 1024},
                "cache_size": 0,
                "projection": {
                    "name": "english-aware-perceiver",
                    "params": {"num_layers": 3, "num_heads": 8},
                },
            }
        },
        "decoder": {
            "name": "hf-causal-lm",
            "params": {
                "random_init": {
                    "model_type": "llama",
                    "hidden_size": 512,
                    "intermediate_size": 1376,
                    "num_hidden_layers": args.layers,
                    "num_attention_heads": 8,
                    "num_key_value_heads": 8,
                    "max_position_embeddings": 2048,
                },
                "tokenizer": "bytes",
            },
        },
        "prompt": {"template": "vicuna"},
    }


def build_model(config: dict[str, Any]) -> tuple[ChatNTModel, int]:
    """The seeded random assembly in eval mode, and its decoder's parameter count."""
    torch.manual_seed(0)
    model = ChatNTModel.from_config(parse_config(config)).eval()
    return model, sum(p.numel() for p in model.decoder.parameters())


def make_prompts(model: ChatNTModel, count: int, target: int, seed: int) -> list[Example]:
    """``count`` one-tag questions padded with filler text to ``target`` decoder tokens."""
    rng = random.Random(seed)
    filler = ""

    def build(text: str) -> list[Example]:
        examples = []
        for _ in range(count):
            dna = "".join(rng.choice("ACGT") for _ in range(500))
            question = f"{text}Is the chromatin of @seq.fna accessible in HepG2 cells?"
            examples.append(Example([Turn(question)], {"seq.fna": SequenceInput("seq.fna", dna)}))
        return examples

    for _ in range(20):  # grow the filler until the prompt reaches the target length
        length = model.tokenize(build(filler)[:1]).input_ids.shape[1]
        if length >= target:
            break
        missing = target - length
        filler = (FILLER * (len(filler) // len(FILLER) + missing // 10 + 2))[
            : len(filler) + missing
        ]
    return build(filler)


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_generation(model: ChatNTModel, args: argparse.Namespace) -> None:
    """Tokens/s per batch size and mode; the slow runs are timed once, without warm-up.

    Recomputation at batch > 1 runs only ``--baseline-steps`` new tokens: each of its steps
    re-runs the whole prompt, so its cost per token is flat, and its tokens/s over a few
    steps is, if anything, optimistic (later steps see a longer prompt).
    """
    print(f"\n== generation: greedy, EOS disabled, {args.new_tokens} new tokens unless noted ==")
    print(
        f"{'batch':>5} {'prompt T':>8} {'mode':>10} {'new tok':>7} {'runs':>5} {'median s':>9} "
        f"{'tok/s':>8}"
    )
    warm = True
    for batch_size in args.batch_sizes:
        examples = make_prompts(model, batch_size, args.prompt_tokens, seed=batch_size)
        batch = model.tokenize(examples)
        large = batch_size > 1
        rates: dict[str, float] = {}
        for mode, use_cache in (("kv-cache", True), ("recompute", False)):
            steps = args.baseline_steps if large and not use_cache else args.new_tokens
            config = GenerationConfig(max_new_tokens=steps, use_cache=use_cache, ignore_eos=True)
            repeats = args.repeats if use_cache and not large else args.baseline_repeats
            warmup = 1 if warm else 0  # one warm-up for the whole benchmark
            warm = False

            def run(
                config: GenerationConfig = config, steps: int = steps, batch: Any = batch
            ) -> None:
                ids = generate_ids(model, batch, config)
                assert all(len(row) == steps for row in ids), "generation stopped early"

            seconds = median_seconds(run, repeats, warmup)
            rates[mode] = batch_size * steps / seconds
            print(
                f"{batch_size:>5} {batch.input_ids.shape[1]:>8} {mode:>10} {steps:>7} "
                f"{warmup}+{repeats:<3} {seconds:>9.2f} {rates[mode]:>8.2f}"
            )
        ratio = rates["kv-cache"] / rates["recompute"]
        print(f"{batch_size:>5} {'':>8} {'speed-up':>10} {'':>7} {'':>5} {'':>9} {ratio:>7.1f}x")


def bench_scoring(model: ChatNTModel, args: argparse.Namespace) -> None:
    examples = make_prompts(model, 1, args.prompt_tokens, seed=99)
    candidates = [POSITIVE + NEGATIVE]
    n_tokens = [len(model.decoder.tokenize(f" {a}")) + 1 for a in candidates[0]]
    print(
        f"\n== scoring: 1 question x {len(candidates[0])} answers "
        f"({min(n_tokens)}-{max(n_tokens)} tokens each, EOS included) =="
    )
    runs = {
        "shared-prefix": lambda: score_candidates(model, examples, candidates),
        "naive, 1 per forward": lambda: score_candidates_naive(model, examples, candidates),
        "naive, 16 per forward": lambda: score_candidates_naive(
            model, examples, candidates, batch_size=len(candidates[0])
        ),
    }
    seconds: dict[str, float] = {}
    results: dict[str, CandidateScores] = {}
    for name, fn in runs.items():
        shared = name == "shared-prefix"
        repeats = args.repeats if shared else args.baseline_repeats
        times = []
        for _ in range(repeats + int(shared)):  # the shared path gets one warm-up run
            start = time.perf_counter()
            results[name] = fn()
            times.append(time.perf_counter() - start)
        seconds[name] = statistics.median(times[int(shared) :])
        runs_text = f"{int(shared)}+{repeats}"
        print(f"{name:>22}: median {seconds[name] * 1000:8.1f} ms over {runs_text} runs")
    reference = results["naive, 1 per forward"].log_likelihood
    gap = float((results["shared-prefix"].log_likelihood - reference).abs().max())
    print(f"max |log-likelihood difference| shared vs naive: {gap:.2e}")
    base = seconds["shared-prefix"]
    for name in list(runs)[1:]:
        print(f"{'speed-up vs ' + name:>34}: {seconds[name] / base:5.1f}x")


# ---- the published ChatNT's shape: the official method vs ours ---------------------------


def official_shape_config(args: argparse.Namespace) -> dict[str, Any]:
    """Vicuna-7B's layer shape (hidden 4096, MLP 11008, 32 heads, vocabulary 32000) and the
    published Perceiver's (32 x 128 heads, MLP 11008) at ``--official-layers`` depth, with
    the ``chatnt-official`` prompt conventions; a tiny random NT-v2 (its cost is the same
    for both methods: the official code also encodes and projects once per prompt)."""
    return {
        "name": "bench-official-shape",
        "num_latents": 64,
        "encoders": {
            "dna": {
                "name": "nucleotide-transformer-v2",
                "params": {"preset": "tiny"},
                "cache_size": 0,
                "projection": {
                    "name": "english-aware-perceiver",
                    "params": {
                        "num_layers": args.official_layers,
                        "num_heads": 32,
                        "head_dim": 128,
                        "ffn_dim": 11008,
                    },
                },
            }
        },
        "decoder": {
            "name": "hf-causal-lm",
            "params": {
                "random_init": {
                    "model_type": "llama",
                    "hidden_size": 4096,
                    "intermediate_size": 11008,
                    "num_hidden_layers": args.official_layers,
                    "num_attention_heads": 32,
                    "num_key_value_heads": 32,
                    "vocab_size": 32000,
                    "max_position_embeddings": 2048,
                },
                "tokenizer": "bytes",
                "placeholder_embedding": "clamp",
                "norm_eps": {"model.norm": 1e-5},
            },
        },
        "prompt": {
            "template": "vicuna",
            "placeholder_layout": "insert_before_kept",
            "question_scope": "whole_prompt",
        },
    }


@torch.no_grad()
def official_method(model: ChatNTModel, batch: Any, steps: int, window: int) -> list[list[int]]:
    """What the released JAX code does per generated token: the whole right-padded window
    (``window`` positions, no padding mask) through the decoder, logits at every position,
    the argmax at the last real one written into the next pad slot. The projected vectors
    are computed once, as the official code caches them after the first step."""
    decoder = model.decoder
    embeds = model.embed_prompt(batch)  # (B, T, D), left-padded
    lengths = batch.attention_mask.sum(dim=1)  # (B,)
    pad = decoder.embed_tokens(torch.full((1, 1), decoder.pad_token_id))[0, 0]  # (D,)
    rows = embeds.new_empty((embeds.shape[0], window, embeds.shape[-1]))
    rows[:] = pad
    for i, n in enumerate(lengths.tolist()):
        rows[i, :n] = embeds[i, embeds.shape[1] - n :]  # right padding, as the official
    positions = torch.arange(window)[None].expand(embeds.shape[0], -1)
    mask = torch.ones((embeds.shape[0], window), dtype=torch.bool)
    produced: list[list[int]] = [[] for _ in range(embeds.shape[0])]
    for _ in range(steps):
        logits = decoder(rows, mask, positions, logits_to_keep=0).logits  # (B, window, V)
        for i, n in enumerate(lengths.tolist()):
            token = int(logits[i, n - 1].argmax())
            produced[i].append(token)
            rows[i, n] = decoder.embed_tokens(torch.tensor([[token]]))[0, 0]
        lengths = lengths + 1
    return produced


def bench_official(args: argparse.Namespace) -> None:
    """Tokens/s of the official method and of ours on the published ChatNT's layer shape."""
    model, params = build_model(official_shape_config(args))
    print(
        f"\n== published-ChatNT shape ({args.official_layers} decoder layer(s) of Vicuna-7B's "
        f"shape, {params / 1e6:.0f}M decoder params, vocabulary 32000, K = 64, official "
        f"window {args.window}): {args.official_new_tokens} new tokens ours, "
        f"{args.official_steps} official steps (its cost per token is flat) =="
    )
    print(f"{'batch':>5} {'prompt T':>8} {'method':>22} {'new tok':>7} {'seconds':>8} {'tok/s':>8}")
    for batch_size in args.batch_sizes:
        examples = make_prompts(model, batch_size, args.official_prompt_tokens, seed=batch_size)
        batch = model.tokenize(examples)
        config = GenerationConfig(max_new_tokens=args.official_new_tokens, ignore_eos=True)
        generate_ids(model, model.tokenize(examples[:1]), GenerationConfig(max_new_tokens=1))
        rates = {}
        runs = (
            (
                "ours (KV cache, batched)",
                args.official_new_tokens,
                lambda batch=batch, config=config: generate_ids(model, batch, config),
            ),
            (
                "official (recompute)",
                args.official_steps,
                lambda batch=batch: official_method(model, batch, args.official_steps, args.window),
            ),
        )
        for name, steps, fn in runs:
            start = time.perf_counter()
            fn()
            seconds = time.perf_counter() - start
            rates[name] = batch_size * steps / seconds
            print(
                f"{batch_size:>5} {batch.input_ids.shape[1]:>8} {name:>22} {steps:>7} "
                f"{seconds:>8.1f} {rates[name]:>8.2f}"
            )
        ours, official = rates.values()
        print(f"{batch_size:>5} {'':>8} {'speed-up':>22} {'':>7} {'':>8} {ours / official:>7.1f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--num-latents", type=int, default=64)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument(
        "--baseline-repeats",
        type=int,
        default=1,
        help="timed runs of the slow paths (recompute, batch > 1, naive scoring), no warm-up",
    )
    parser.add_argument(
        "--baseline-steps",
        type=int,
        default=2,
        help="new tokens timed for recomputation at batch > 1 (each step re-runs the prompt)",
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip", choices=["generation", "scoring"], nargs="*", default=[])
    parser.add_argument(
        "--official",
        action="store_true",
        help="only the published-ChatNT comparison: the official method vs ours",
    )
    parser.add_argument("--official-layers", type=int, default=1)
    parser.add_argument("--official-new-tokens", type=int, default=20)
    parser.add_argument("--official-steps", type=int, default=2)
    parser.add_argument("--official-prompt-tokens", type=int, default=300)
    parser.add_argument("--window", type=int, default=512, help="the official English window")
    args = parser.parse_args(argv)
    if args.official:
        torch.set_num_threads(args.threads)
        print(f"torch {torch.__version__}, {args.threads} threads")
        start = time.perf_counter()
        bench_official(args)
        print(f"\ntotal {time.perf_counter() - start:.0f} s")
        return

    torch.set_num_threads(args.threads)
    model, decoder_params = build_model(bench_config(args))
    print(
        f"torch {torch.__version__}, {args.threads} threads; decoder {decoder_params / 1e6:.1f}M "
        f"params ({args.layers} layers, hidden 512), K={args.num_latents}, "
        f"prompt ~{args.prompt_tokens} tokens"
    )
    start = time.perf_counter()
    if "generation" not in args.skip:
        bench_generation(model, args)  # ignore_eos: exactly --new-tokens steps every run
    if "scoring" not in args.skip:
        bench_scoring(model, args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

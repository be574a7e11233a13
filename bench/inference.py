"""Benchmark: inference speed on the SmolLM2 assembly, ours vs the loops a user could write.

Not a test: it prints tables. The assembly is the quickstart's model section
(``registry/training/quickstart.yaml``: frozen SmolLM2-135M-Instruct from the model store,
motif-cnn encoder, English-aware Perceiver K = 8), untrained and, with ``--checkpoint``
(e.g. the one ``chatnt quickstart`` leaves), trained.

Generation, the same merged prompt embeddings for every method (one 200 bp sequence per
prompt, the demo's CTCF question), at each batch size:

* ours: ``generation.generate_ids`` as ``ChatNT.generate`` calls it (KV cache with the
  answer's room reserved, shared-prefix cache, logits where used, rows-first linear
  layers, drafts from n-gram lookup in the prompt, the answer so far and the card's
  phrasings; ``CHATNT_ROWS_FIRST=0`` to compare without rows-first);
* ours with no drafts (``draft_tokens=0``), to show what drafting adds;
* ``transformers``' ``generate(inputs_embeds=..., attention_mask=...)`` on the same decoder,
  its LoRA adapters gated as ours are (``gated_like_ours``);
* full recompute, as the released ChatNT code does (``use_cache=False``); it is slow, so it
  runs ``--recompute-tokens`` tokens per row (its rate falls as the answer grows, so this
  flatters it).

Two workloads. Untrained: SmolLM2 continues in its own English (it cannot read the
sequences yet), ``--new-tokens`` per row with EOS ignored, so every method does the same
work; the first ten tokens of every row must agree. Trained (``--checkpoint``): the task
answers a user gets ("No, @seq1 does not contain a CTCF motif."), each to its EOS; the
answers must be identical, and tokens/s counts answer tokens. Then the untrained
workload at batch 8 with the decoder's weights in bfloat16 (``--precision bf16``).

``chatnt batch`` (subprocess, as a user runs it): records/s over the whole command
(loading included) and over the answering alone (the bar's own time), and peak resident
memory, for ``--records`` records of 200 bp and of 2 kb, and of 200 bp with
``--precision bf16``; and the classifier's cost per record (P(yes) scoring,
``ChatNT.probabilities``) next to generation's. How bfloat16 answers the demo test set
compared with float32: ``bench/precision.py``.

Run (about 10 minutes on 2 cores): ``python bench/inference.py [--checkpoint runs/qs/run]``
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from chatnt_core import ChatNTModel
from chatnt_core.api import ChatNT
from chatnt_core.config import parse_config, read_yaml
from chatnt_core.inference.drafting import batch_references
from chatnt_core.inference.generation import GenerationConfig, generate_ids
from chatnt_core.inference.precision import native_bfloat16, set_precision
from chatnt_core.model_store import quiet_hf_progress_bars
from chatnt_core.training import checkpoint as ckpt
from chatnt_core.training.config import training_preset_path

QUESTION = "Is there a CTCF binding site in @seq.fna?"
BATCH_QUESTION = "Is there a CTCF binding site in @seq?"


def _dna(length: int, rng: random.Random) -> str:
    return "".join(rng.choice("ACGT") for _ in range(length))


def untrained_checkpoint(directory: Path) -> Path:
    """The quickstart assembly, untrained, written as the trainer writes checkpoints."""
    torch.manual_seed(0)
    model_section = read_yaml(training_preset_path("quickstart"))["model"]
    model = ChatNTModel.from_config(parse_config(model_section))
    return ckpt.save_model(model, directory)


def _timed(fn: Any, repeats: int) -> tuple[float, Any]:
    """Best wall time of ``repeats`` calls after one untimed warm-up call, or with
    ``repeats`` 0 the time of a single call; and the last result."""
    if repeats == 0:
        start = time.perf_counter()
        result = fn()
        return time.perf_counter() - start, result
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


@contextmanager
def gated_like_ours(model: ChatNTModel, batch: Any) -> Iterator[None]:
    """LoRA adapters gated inside ``transformers``' ``generate`` as our loop gates them:
    from the first placeholder on over the prompt, and for every new token of a row with
    a sequence. Ungated, ``generate`` would run the adapters nowhere (a different model)."""
    from chatnt_core.adapter_gate import gate_of, placeholder_gate, row_gate

    gate = gate_of(model.decoder)
    if gate is None:
        yield
        return
    ids, placeholder = batch.input_ids, model.decoder.placeholder_token_id
    over_prompt, per_row = placeholder_gate(ids, placeholder), row_gate(ids, placeholder)

    def set_gate(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        width = kwargs["inputs_embeds" if kwargs.get("inputs_embeds") is not None else "input_ids"]
        gate.value = over_prompt if width.shape[1] == ids.shape[1] else per_row

    hf: Any = model.decoder.model
    inner = hf.get_base_model() if hasattr(hf, "get_base_model") else hf  # peft: generate runs it
    handle = inner.register_forward_pre_hook(set_gate, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        gate.value = None


def generation_row(
    chatnt: ChatNT,
    size: int,
    new_tokens: int,
    recompute_tokens: int,
    rng: random.Random,
    to_eos: bool,
    repeats: int = 4,
) -> str:
    """One table row: tokens/s of the methods at batch ``size``. ``to_eos``: answers end
    at EOS (tokens counted up to it), else every row runs ``new_tokens`` tokens."""
    model = chatnt.model
    decoder = model.decoder
    hf: Any = decoder.model  # the transformers model inside the plugin
    sequences = [{"seq.fna": _dna(200, rng)} for _ in range(size)]
    batch = model.prompt_batch([QUESTION] * size, sequences)
    # what ChatNT.generate passes: the matched card's phrasings, to draft from
    references = batch_references(
        batch, [QUESTION] * size, [chatnt.find_task(QUESTION).card] * size, decoder.tokenize
    )
    ours_config = GenerationConfig(max_new_tokens=new_tokens, ignore_eos=not to_eos)
    undrafted = replace(ours_config, draft_tokens=0)
    recompute = replace(ours_config, max_new_tokens=recompute_tokens, use_cache=False)

    def ours() -> list[list[int]]:
        return generate_ids(model, batch, ours_config, references=references)

    def hf_generate() -> list[list[int]]:
        with torch.no_grad(), gated_like_ours(model, batch):
            out = hf.generate(
                inputs_embeds=model.embed_prompt(batch),
                attention_mask=batch.attention_mask.long(),
                max_new_tokens=new_tokens,
                min_new_tokens=1 if to_eos else new_tokens,
                do_sample=False,
                pad_token_id=decoder.pad_token_id,
                eos_token_id=decoder.eos_token_id,
            )
        rows = out.tolist()
        return [
            r[: r.index(decoder.eos_token_id)] if to_eos and decoder.eos_token_id in r else r
            for r in rows
        ]

    # interleaved, best of ``repeats`` each: a noisy machine slows both alike
    methods = {
        "ours": ours,
        "undrafted": lambda: generate_ids(model, batch, undrafted),
        "generate": hf_generate,
    }
    best = dict.fromkeys(methods, float("inf"))
    results = {name: fn() for name, fn in methods.items()}  # warm-up
    for _ in range(repeats):
        for name, fn in methods.items():
            seconds, results[name] = _timed(fn, 0)
            best[name] = min(best[name], seconds)
    re_s, _ = _timed(lambda: generate_ids(model, batch, recompute), 0)
    # drafts change the shapes of the products, so a near-tie may fall the other way
    alike = sum(x == y for x, y in zip(results["ours"], results["undrafted"]))
    if to_eos:  # whole answers, which must be the same
        same = results["ours"] == results["generate"]
    else:
        same = all(a[:10] == b[:10] for a, b in zip(results["ours"], results["generate"]))
    tokens = sum(len(row) for row in results["ours"])
    rate = {name: tokens / seconds for name, seconds in best.items()}
    re_rate = size * recompute_tokens / re_s
    return (
        f"{size:>5} {rate['ours']:>11.1f} {rate['undrafted']:>15.1f} {rate['generate']:>15.1f} "
        f"{re_rate:>16.1f} {rate['ours'] / rate['generate']:>13.2f}x "
        f"{rate['ours'] / re_rate:>14.1f}x {same!s:>14} {f'{alike}/{size}':>18}"
    )


def bf16_line(model: ChatNTModel, size: int, new_tokens: int) -> str:
    """Ours with the decoder's weights in bfloat16 (``--precision bf16``) vs float32 at
    batch ``size``: speed and same tokens. Leaves ``model``'s decoder in bfloat16."""
    rng = random.Random(3)
    sequences = [{"seq.fna": _dna(200, rng)} for _ in range(size)]
    batch = model.prompt_batch([QUESTION] * size, sequences)
    forced = GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True)
    fp32_s, fp32 = _timed(lambda: generate_ids(model, batch, forced), 2)
    set_precision(model, "bf16")
    bf16_s, low = _timed(lambda: generate_ids(model, batch, forced), 2)
    same = sum(a == b for a, b in zip(fp32, low))
    first = sum(a[:10] == b[:10] for a, b in zip(fp32, low))
    return (
        f"decoder in bfloat16 at batch {size} (native bfloat16: {native_bfloat16()}): "
        f"{size * new_tokens / bf16_s:.1f} tok/s vs float32 {size * new_tokens / fp32_s:.1f} "
        f"tok/s ({fp32_s / bf16_s:.2f}x); same {new_tokens} tokens {same}/{size}, same first "
        f"10 {first}/{size} (answers on the demo test set: bench/precision.py)"
    )


def generation_rows(
    chatnt: ChatNT,
    batch_sizes: list[int],
    new_tokens: int,
    recompute_tokens: int,
    to_eos: bool,
) -> list[str]:
    rng = random.Random(0)
    header = (
        f"{'batch':>5} {'ours tok/s':>11} {'no drafts tok/s':>15} {'generate tok/s':>15} "
        f"{'recompute tok/s':>16} {'ours/generate':>14} {'ours/recompute':>15} "
        f"{'same answers' if to_eos else 'same 10 tokens':>14} {'drafts = no drafts':>17}"
    )
    rows = [
        generation_row(chatnt, n, new_tokens, recompute_tokens, rng, to_eos) for n in batch_sizes
    ]
    return [header, *rows]


def classifier_rows(chatnt: ChatNT, records: int) -> list[str]:
    """Milliseconds per record, 32 records at a time: generation alone; generation, then
    the P(yes) classifier scored from the prompt state it kept (the way before answer
    scoring decoded answers); and ``ask_batch`` (classifier first, generation only for
    the rows whose greedy answer is not one of the scored phrasings). Answers must agree."""
    from chatnt_core.api import GreedyAnswers
    from chatnt_core.batching import Example
    from chatnt_core.inference.generation import continue_from, run_prompt, stop_token_ids
    from chatnt_core.prompt import Turn, as_sequence_inputs

    rng = random.Random(1)
    sequences = [{"seq.fna": _dna(200, rng)} for _ in range(records)]
    questions = [QUESTION] * records
    card = chatnt.task_card(QUESTION)
    chunks = [slice(start, start + 32) for start in range(0, records, 32)]
    config = GenerationConfig(max_new_tokens=128)
    examples = [Example([Turn(q)], as_sequence_inputs(s)) for q, s in zip(questions, sequences)]

    def generation() -> list[str]:
        return [t for c in chunks for t in chatnt.generate(questions[c], sequences[c])]

    def answer_then_score() -> list[str]:
        texts: list[str] = []
        model = chatnt.model
        for c in chunks:
            batch = model.prompt_batch(questions[c], sequences[c])
            state = run_prompt(model, batch, model.embed_prompt(batch))
            kept = state.rows(torch.arange(batch.input_ids.shape[0]))  # decoding grows state
            ids = continue_from(model, state, batch.input_ids, config)
            chatnt.probabilities([card] * len(ids), examples[c], prompt_state=kept)
            texts += [t.strip() for t in model.answer_texts(batch, ids)]
        return texts

    def ask() -> list[str]:
        return [a.text for c in chunks for a in chatnt.ask_batch(questions[c], sequences[c])]

    gen_s, plain = _timed(generation, 1)
    before_s, before = _timed(answer_then_score, 1)
    ask_s, asked = _timed(ask, 1)
    batch = chatnt.model.prompt_batch(questions[:32], sequences[:32])
    state = run_prompt(chatnt.model, batch, chatnt.model.embed_prompt(batch))
    greedy = GreedyAnswers(stop_token_ids(chatnt.model, config), config.max_new_tokens)
    chatnt.probabilities([card] * 32, examples[:32], prompt_state=state, greedy=greedy)
    name = card.name if card is not None else "no card matched"
    same = sum(a == b == c for a, b, c in zip(plain, before, asked))
    return [
        f"per record ({records} records of 200 bp, batches of 32, task {name}):",
        f"  generation alone {1000 * gen_s / records:.1f} ms",
        f"  generation, then P(yes) from its prompt state {1000 * before_s / records:.1f} ms",
        f"  ask_batch (P(yes) scoring decodes the answer) {1000 * ask_s / records:.1f} ms "
        f"({len(greedy.found)}/32 answers decoded by the scoring; same answers {same}/{records})",
    ]


def batch_rows(checkpoint: Path, records: int, lengths: list[int], threads: int) -> list[str]:
    """``chatnt batch`` at each length in float32, then the first length with
    ``--precision bf16``."""
    rng = random.Random(2)
    lines = [
        f"{'length':>7} {'precision':>9} {'records':>8} {'wall s':>7} {'records/s (wall)':>17} "
        f"{'records/s (answering)':>22} {'peak RSS GB':>12}"
    ]
    runs = [(length, "fp32") for length in lengths] + [(lengths[0], "bf16")]
    with tempfile.TemporaryDirectory() as tmp:
        for length, precision in runs:
            fasta = Path(tmp) / f"r{length}.fna"
            if not fasta.exists():
                fasta.write_text(
                    "".join(f">r{i}\n{_dna(length, rng)}\n" for i in range(records)),
                    encoding="utf-8",
                )
            out = Path(tmp) / f"r{length}-{precision}.tsv"
            arguments = [
                "batch", str(checkpoint), "--fasta", str(fasta), "--question", BATCH_QUESTION,
                "--out", str(out), "--no-progress", "--precision", precision,
            ]  # fmt: skip
            command = [sys.executable, "-c", _REPORTS_PEAK, *arguments]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            log = Path(tmp) / f"r{length}-{precision}.log"
            start = time.perf_counter()
            with log.open("w") as handle:
                process = subprocess.run(command, env=env, stdout=handle, stderr=handle)
            wall = time.perf_counter() - start
            stdout = log.read_text(encoding="utf-8")
            if process.returncode != 0:
                raise SystemExit(f"chatnt batch failed:\n{stdout[-2000:]}")
            peak = _peak_gb(stdout)
            answering = _answering_seconds(stdout)
            rate = f"{records / answering:.2f}" if answering else "n/a"
            lines.append(
                f"{length:>7} {precision:>9} {records:>8} {wall:>7.1f} {records / wall:>17.2f} "
                f"{rate:>22} {peak:>12.2f}"
            )
        reference = Path(tmp) / f"r{lengths[0]}-fp32.tsv"
        low = Path(tmp) / f"r{lengths[0]}-bf16.tsv"
        same = sum(a == b for a, b in zip(_answers(reference), _answers(low)))
        lines.append(f"bf16 answers equal to fp32's at {lengths[0]} bp: {same}/{records}")
    return lines


def _answers(table: Path) -> list[str]:
    """The answer column of a ``chatnt batch`` TSV, in record order."""
    rows = [line.split("\t") for line in table.read_text(encoding="utf-8").splitlines()]
    column = rows[0].index("answer")
    return [row[column] for row in rows[1:]]


# ``chatnt batch`` run so that it prints its own peak resident memory when it exits. Not
# the rusage of the child: on Linux a child's maxrss includes the parent's pages at fork
# (the parent here holds two models), which inflated earlier readings by up to 0.5 GB.
_REPORTS_PEAK = """
import atexit, runpy, sys

def report():
    with open("/proc/self/status", encoding="utf-8") as status:
        line = next(l for l in status if l.startswith("VmHWM:"))
    print("peak resident kB", line.split()[1], file=sys.stderr, flush=True)

atexit.register(report)
sys.argv = ["chatnt", *sys.argv[1:]]
runpy.run_module("chatnt_core.cli", run_name="__main__")
"""


def _peak_gb(stdout: str) -> float:
    match = re.search(r"peak resident kB ([0-9]+)", stdout)
    if match is None:
        raise SystemExit(f"chatnt batch did not report its peak memory:\n{stdout[-2000:]}")
    return int(match.group(1)) / 1024**2


def _answering_seconds(stdout: str) -> float | None:
    match = re.search(r"answered here in ([0-9.]+) s", stdout)
    return float(match.group(1)) if match else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a chatnt checkpoint (default: untrained)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--recompute-tokens", type=int, default=10)
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--lengths", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-batch", action="store_true", help="no chatnt batch rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_hf_progress_bars()

    with tempfile.TemporaryDirectory() as tmp:
        untrained = untrained_checkpoint(Path(tmp))
        checkpoint = args.checkpoint or untrained
        untrained_chatnt = ChatNT.from_pretrained(untrained)
        chatnt = ChatNT.from_pretrained(checkpoint)
        print(f"assembly: {checkpoint} ({args.threads} threads, float32)")
        print(
            f"\ngeneration, untrained assembly (SmolLM2's own English; {args.new_tokens} new "
            f"tokens, EOS ignored; recompute {args.recompute_tokens})"
        )
        for line in generation_rows(
            untrained_chatnt, args.batch_sizes, args.new_tokens, args.recompute_tokens, False
        ):
            print(line)
        if args.checkpoint is not None:
            print(
                f"\ngeneration, {checkpoint}: task answers (to EOS, at most {args.new_tokens} "
                "tokens; tokens/s counts answer tokens)"
            )
            for line in generation_rows(
                chatnt, args.batch_sizes, args.new_tokens, args.recompute_tokens, True
            ):
                print(line)
        print(bf16_line(untrained_chatnt.model, 8, args.new_tokens))
        print()
        del untrained_chatnt
        for line in classifier_rows(chatnt, 64):
            print(line)
        del chatnt
        if not args.skip_batch:
            print(f"\nchatnt batch (question: {BATCH_QUESTION!r})")
            for line in batch_rows(checkpoint, args.records, args.lengths, args.threads):
                print(line)


if __name__ == "__main__":
    main()

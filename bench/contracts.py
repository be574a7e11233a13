"""Benchmark: the cost of the run-time contract checks against the calls they check.

``chatnt_core.contracts`` checks every encoder output (shapes, dtypes, a finite-value pass)
and every projection output. This times the quickstart's encoder (motif-cnn, untrained)
on 32 sequences of 200 bp and of 2 kb, and the English-aware Perceiver on its output,
each with and without its check, and prints the check's share of the call.

Run (under a minute): ``python bench/contracts.py [--threads 2]``
"""

from __future__ import annotations

import argparse
import random
import timeit
from collections.abc import Callable
from typing import Any

import torch

from chatnt_core import ChatNTModel
from chatnt_core.config import parse_config, read_yaml
from chatnt_core.contracts import check_encoder_output, check_projection_output
from chatnt_core.training.config import training_preset_path


def best_of(fn: Callable[[], Any], repeats: int = 5) -> float:
    """Fastest of ``repeats`` timed calls, after one untimed call."""
    fn()
    return min(timeit.repeat(fn, number=1, repeat=repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_section = read_yaml(training_preset_path("quickstart"))["model"]
    model_section["decoder"] = {  # the decoder plays no part here: a tiny random one
        "name": "hf-causal-lm",
        "params": {"random_init": {"model_type": "llama", "hidden_size": 576,
                                   "intermediate_size": 64, "num_hidden_layers": 1,
                                   "num_attention_heads": 9, "num_key_value_heads": 3,
                                   "vocab_size": 260}, "tokenizer": "bytes"},
    }  # fmt: skip
    model = ChatNTModel.from_config(parse_config(model_section)).eval()
    (modality,) = model.modalities
    encoder, projection = model.encoder(modality), model.projection(modality)
    who = model._component(model.resolved.encoders[modality])
    pwho = model._component(model.resolved.projections[modality])
    rng = random.Random(0)
    print(f"{'input':>14} {'encode ms':>10} {'check ms':>9} {'share':>7} "
          f"{'project ms':>11} {'check ms':>9} {'share':>7}")  # fmt: skip
    with torch.no_grad():
        for length in (200, 2000):
            seqs = ["".join(rng.choice("ACGT") for _ in range(length)) for _ in range(32)]
            out = encoder.encode(seqs)
            enc_s = best_of(lambda: encoder.encode(seqs))  # noqa: B023
            chk_s = best_of(lambda: check_encoder_output(out, who, 32, encoder.embed_dim))  # noqa: B023
            question = torch.zeros((32, 12), dtype=torch.long)
            q_mask = torch.ones((32, 12), dtype=torch.bool)
            q_emb = model.decoder.embed_tokens(question)
            projected = projection(out.embeddings, out.mask, q_emb, q_mask)
            width = projected.shape[-1]
            proj_s = best_of(lambda: projection(out.embeddings, out.mask, q_emb, q_mask))  # noqa: B023
            pchk_s = best_of(
                lambda: check_projection_output(projected, pwho, 32, model.num_latents, width)  # noqa: B023
            )
            print(
                f"{f'32 x {length} bp':>14} {1000 * enc_s:>10.2f} {1000 * chk_s:>9.3f} "
                f"{chk_s / enc_s:>6.1%} {1000 * proj_s:>11.2f} {1000 * pchk_s:>9.3f} "
                f"{pchk_s / proj_s:>6.1%}"
            )


if __name__ == "__main__":
    main()

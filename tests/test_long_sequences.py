"""Long inputs: the quickstart's encoder (motif-cnn) reads a whole phage genome in one pass."""

from __future__ import annotations

import random

import pytest
import torch
from tiny_models import tiny_llama_config

from chatnt_core import ChatNTModel
from chatnt_core.api import ChatNT
from chatnt_core.config import parse_config
from chatnt_core.errors import ChatNTError

LAMBDA_LENGTH = 48_502  # phage lambda, bp


def _bot(max_tokens: int) -> ChatNT:
    config = {
        "num_latents": 4,
        "encoders": {
            "dna": {
                "name": "motif-cnn",
                "params": {"hidden_size": 16, "kernel_size": 9, "max_tokens": max_tokens},
                "projection": {"name": "english-aware-perceiver", "params": {"num_heads": 4}},
            }
        },
        "decoder": {
            "name": "hf-causal-lm",
            "params": {
                "random_init": tiny_llama_config(max_position_embeddings=1024),
                "tokenizer": "bytes",
            },
        },
    }
    torch.manual_seed(0)
    return ChatNT(ChatNTModel.from_config(parse_config(config)))


def test_a_48_5_kb_genome_is_read_in_one_pass() -> None:
    rng = random.Random(0)
    genome = "".join(rng.choice("ACGT") for _ in range(LAMBDA_LENGTH))
    bot = _bot(max_tokens=100_000)
    encoded, mask = bot.model.encode_sequences(bot.model.modalities[0], [genome])
    assert encoded.shape[1] == LAMBDA_LENGTH and bool(mask.all())  # every letter, no cut
    answer = bot.ask(
        "Is there a CTCF site in @lambda.fna?", {"lambda.fna": genome}, max_new_tokens=4
    )
    assert answer.text is not None and answer.task == "demo-ctcf-site"
    with pytest.raises(ChatNTError, match="max_tokens"):
        _bot(max_tokens=10_000).ask("Is @g.fna long?", {"g.fna": genome}, max_new_tokens=2)


def test_a_very_long_question_is_blamed_on_the_question() -> None:
    from chatnt_core.errors import PromptTooLongError

    model = ChatNTModel.from_config("tiny-random")
    question = "Is this long? " * 8000 + "@a.fna"
    with pytest.raises(PromptTooLongError, match="shorten the question") as caught:
        model.prompt_batch([question], [{"a.fna": "ACGT"}])
    assert "num_latents" not in str(caught.value)
    many = " ".join(f"@s{i}.fna" for i in range(250))  # tags, not text, fill the context
    with pytest.raises(PromptTooLongError, match="use fewer tags"):
        model.prompt_batch([many], [{f"s{i}.fna": "ACGT" for i in range(250)}])

"""The official-ChatNT parity fixture: files, the tiny English tokenizer, and the map from
the official code's logit rows to ours.

The fixture files come from ``tests/fixtures/official_chatnt/make_fixtures.py``, which runs
InstaDeep's JAX code. The official decoder inserts the K vectors into a fixed-width window
with index arithmetic (``jnp.insert``, truncation, a flattened roll) and then removes K
logit rows per sequence; ``official_rows`` replays that arithmetic on labels instead of
embeddings, so each official logit row can be paired with the row of ours that saw the
same inputs, and rows whose inputs the arithmetic corrupted (the roll drops a real row
when the window has too little padding) are known and reported, not guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

FIXTURES = Path(__file__).parent / "fixtures" / "official_chatnt"
K = 4
SEQ_ID = 100  # "<DNA>", one past the tiny decoder vocabulary
PAD = 0
HEADS = ["--encoder-heads", "4", "--projection-heads", "4", "--decoder-heads", "4"]


def convert_args(source: Path, out: Path, tokenizer: Path, *extra: str) -> list[str]:
    """``chatnt convert official-chatnt`` arguments for the tiny fixture model."""
    command = ["convert", "official-chatnt", str(source), "--out", str(out)]
    return [*command, "--english-tokenizer", str(tokenizer), *HEADS, *extra]


def save_english_tokenizer(folder: Path) -> Path:
    """A word-level tokenizer with the fixture's vocabulary and ``<DNA>`` after it (as the
    published LLaMA tokenizer has ``<DNA>`` at 32000); pad = ``<unk>`` = 0 as in LLaMA."""
    vocab = json.loads((FIXTURES / "vocab.json").read_text(encoding="utf-8"))
    model = models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>")
    backend = Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<DNA>"]})
    assert tokenizer.convert_tokens_to_ids("<DNA>") == SEQ_ID
    tokenizer.save_pretrained(str(folder))
    return folder


def load_case(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def tagged(question: str, dna: str) -> tuple[str, dict[str, str]]:
    """The fixture question with the i-th ``<DNA>`` as ``@s{i}.fna``, and its sequences
    (``dna``: the fixture's ``|``-joined sequences of that row)."""
    parts = question.split("<DNA>")
    names = [f"s{i + 1}.fna" for i in range(len(parts) - 1)]
    text = parts[0] + "".join(f"@{n}{p}" for n, p in zip(names, parts[1:]))
    return text, dict(zip(names, dna.split("|")))


@dataclass
class RowMap:
    """Pairs (official cleaned row j, our row q in the unpadded expanded prompt) and the
    official rows left out because the official arithmetic changed what they saw."""

    pairs: list[tuple[int, int]]
    corrupted: list[int]


def official_rows(english: np.ndarray, length: int, k: int = K) -> RowMap:
    """Replay the official insert/roll/cleanup on labels for one prompt row.

    Ours (the intended layout): text, with K vectors before each ``<DNA>``, nothing lost.
    Official: per sequence s at original index i_s, insert K rows at ``i_s + s K``, keep
    ``width + 1`` rows, then the roll drops row ``width - i_s``; logits then drop K rows
    after ``i_s`` per sequence and append K zero rows.
    """
    width = len(english)
    text: list[tuple[str, int, int]] = [("t", j, 0) for j in range(width)]
    places = [int(i) for i in np.where(english[:length] == SEQ_ID)[0]]
    expected: list[tuple[str, int, int]] = []
    for j in range(length):
        if j in places:
            expected += [("r", places.index(j), r) for r in range(k)]
        expected.append(text[j])
    content = list(text)
    for s, i in enumerate(places):
        content = content[: i + s * k] + [("r", s, r) for r in range(k)] + content[i + s * k :]
        content = content[: width + 1]
        del content[width - i]
    positions: list[int | None] = list(range(width))
    for i in places:
        positions = [positions[p] if p <= i else positions[p + k] for p in range(width - k)]
        positions += [None] * k
    pairs: list[tuple[int, int]] = []
    corrupted: list[int] = []
    for j in range(length):
        q = positions[j]
        if q is not None and content[: q + 1] == expected[: q + 1]:
            pairs.append((j, q))
        else:
            corrupted.append(j)
    return RowMap(pairs, corrupted)

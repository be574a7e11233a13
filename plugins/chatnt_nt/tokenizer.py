"""The Nucleotide Transformer v2 tokenizer, id for id.

Published NT-v2 weights only make sense with the ids they were trained on, so this module
reproduces the official vocabulary and splitting rule exactly:

* Vocabulary, in id order: ``<unk> <pad> <mask> <cls> <eos> <bos>`` (0-5), the 4096 6-mers
  in ``itertools.product("ATCG", repeat=6)`` order (``AAAAAA`` = 6, ``AAAAAT`` = 7, ...),
  then the single nucleotides ``A T C G N`` (4102-4106). 4107 ids in all.
* ``<cls>`` is prepended; no ``<eos>``.
* Splitting: non-overlapping 6-mers from the left. Every ``N`` is a token of its own and
  ends the current run; a run's remainder shorter than 6 (before an ``N`` or at the end)
  becomes single-nucleotide tokens. ``ATCGATTTNAC`` -> ``<cls> ATCGAT T T N A C``.

The official tokenizer accepts upper-case ``ACGTN`` only and fails on anything else. Our
documented rule for other input, chosen so a prompt that passed chatnt's DNA/RNA alphabet
check always tokenizes:

* lower case is upper-cased;
* RNA ``U`` is read as ``T`` (the model was trained on DNA);
* the IUPAC ambiguity codes ``R Y S W K M B D H V`` become ``N`` (NT's only "unknown base");
* any other character raises :class:`chatnt_core.errors.InvalidSequenceError` naming it and
  its position - it is a user mistake, never silently mapped to ``<unk>``.

Batches are right-padded with ``<pad>`` (id 1); the mask is True at real tokens.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from chatnt_core.errors import InvalidSequenceError
from chatnt_core.interfaces import EncoderTokens

KMER = 6
NUCLEOTIDES = "ATCG"
SPECIAL_TOKENS = ("<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>")
UNK_ID, PAD_ID, MASK_ID, CLS_ID, EOS_ID, BOS_ID = range(6)
VOCAB_SIZE = len(SPECIAL_TOKENS) + 4**KMER + len(NUCLEOTIDES) + 1  # 4107

# One C-level pass: U -> T and every IUPAC ambiguity code -> N (applied after upper()).
_NORMALISE = str.maketrans({"U": "T", **dict.fromkeys("RYSWKMBDHV", "N")})
_ALLOWED = frozenset("ACGTN")


def build_vocab() -> dict[str, int]:
    """Token -> id in the published order (see the module docstring)."""
    kmers = ("".join(p) for p in itertools.product(NUCLEOTIDES, repeat=KMER))
    tokens = [*SPECIAL_TOKENS, *kmers, *NUCLEOTIDES, "N"]
    return {token: i for i, token in enumerate(tokens)}


def normalise(sequence: str) -> str:
    """Apply the documented input rule; raise on characters that are not nucleotides."""
    text = sequence.upper().translate(_NORMALISE)
    bad = set(text) - _ALLOWED
    if bad:
        position = min(text.index(ch) for ch in bad)
        raise InvalidSequenceError(
            f"DNA sequence has {sequence[position]!r} at position {position + 1}: the "
            "nucleotide-transformer-v2 tokenizer reads A, C, G, T, U and the IUPAC codes "
            "N R Y S W K M B D H V (any case); remove other characters"
        )
    return text


class NTTokenizer:
    """Sequences -> NT-v2 ids. Stateless apart from the vocabulary table."""

    vocab_size = VOCAB_SIZE
    pad_id = PAD_ID
    cls_id = CLS_ID

    def __init__(self) -> None:
        self.vocab = build_vocab()
        self.id_to_token = list(self.vocab)

    def body_ids(self, sequence: str) -> list[int]:
        """Ids of one sequence without ``<cls>``: 6-mers, then singles, N breaking runs."""
        vocab = self.vocab
        n_id = vocab["N"]
        ids: list[int] = []
        for i, run in enumerate(normalise(sequence).split("N")):
            if i:
                ids.append(n_id)  # the N that ended the previous run
            full = len(run) - len(run) % KMER
            ids.extend(vocab[run[j : j + KMER]] for j in range(0, full, KMER))
            ids.extend(vocab[ch] for ch in run[full:])
        return ids

    def token_ids(self, sequence: str) -> list[int]:
        """``<cls>`` followed by the sequence's ids."""
        return [CLS_ID, *self.body_ids(sequence)]

    def tokens(self, sequence: str) -> list[str]:
        """The token strings of ``token_ids`` (for inspection and docs)."""
        return [self.id_to_token[i] for i in self.token_ids(sequence)]

    @staticmethod
    def pad(rows: Sequence[Sequence[int]]) -> EncoderTokens:
        """Right-pad id rows with ``<pad>`` into (B, N) ids and a (B, N) bool mask."""
        return EncoderTokens.right_padded(rows, PAD_ID)

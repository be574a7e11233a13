"""A byte-level tokenizer that needs no files: ``tokenizer: bytes`` in a decoder config.

Every UTF-8 byte is one token, so any text round-trips and nothing is ever unknown. It
is meant for decoders trained from scratch (tests, the offline quickstart), where a real
subword vocabulary would only add download size.

Ids: ``<unk>`` = 0, ``<s>`` = 1 (BOS), ``</s>`` = 2 (EOS), ``<pad>`` = 3, then byte ``b``
is id ``4 + b`` (260 ids in all). The model is a BPE with the 256 byte symbols and no
merges, behind the byte-level pre-tokenizer and decoder of the ``tokenizers`` library,
wrapped in :class:`transformers.PreTrainedTokenizerFast` so it saves and loads like any
Hugging Face tokenizer. No chat template is set.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

UNK_TOKEN = "<unk>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
SPECIAL_TOKENS = (UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)
BYTE_OFFSET = len(SPECIAL_TOKENS)  # id of byte 0
BYTE_VOCAB_SIZE = BYTE_OFFSET + 256


def byte_symbols() -> list[str]:
    """The printable character the byte-level pre-tokenizer uses for each byte 0..255.

    Bytes that are already visible Latin-1 characters stand for themselves; the others
    (controls, space, soft hyphen...) are given code points from 256 upwards, in order.
    """
    visible = {
        *range(ord("!"), ord("~") + 1),
        *range(0xA1, 0xAC + 1),
        *range(0xAE, 0xFF + 1),
    }
    symbols: list[str] = []
    shifted = 0
    for byte in range(256):
        if byte in visible:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh byte-level tokenizer (deterministic: same ids on every call)."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for byte, symbol in enumerate(byte_symbols()):
        vocab[symbol] = BYTE_OFFSET + byte
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
    )

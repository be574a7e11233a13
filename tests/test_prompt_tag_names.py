"""Tag names: the decoder may read them ('keep'), the projection's question never does."""

from __future__ import annotations

import pytest
import torch

from chatnt_core import ChatNTModel, Example, SequenceInput, Turn
from chatnt_core.batching import tokenize_example
from chatnt_core.config import PromptConfig
from chatnt_core.modality import Modality

DNA = "TATAAAAGGCGCGCTTAGCATCGATCGATCGGGCTA"
NAMES = ["seq.fna", "x1.fa", "chr3_10450.dna", "my_sample-2.fna", "s.fna"]


@pytest.fixture(scope="module")
def model() -> ChatNTModel:
    torch.manual_seed(0)
    return ChatNTModel.from_config("tiny-random").eval()


def _tokenized(model: ChatNTModel, name: str, mode: str):  # type: ignore[no-untyped-def]
    example = Example(
        [Turn(f"Is there a CTCF site in @{name}?", f"No, @{name} has none.")],
        {name: SequenceInput(name, DNA)},
    )
    prompt = PromptConfig(system_prompt="A chat.", tag_names=mode)  # type: ignore[arg-type]
    return tokenize_example(example, model.decoder, prompt, 4, [Modality.DNA])


@pytest.mark.parametrize("mode", ["keep", "replace"])
def test_projection_question_is_the_same_for_every_tag_name(model: ChatNTModel, mode: str) -> None:
    questions = {tuple(_tokenized(model, n, mode).questions[0]) for n in NAMES}
    assert len(questions) == 1
    assert model.decoder.placeholder_token_id in next(iter(questions))


def test_keep_puts_the_name_before_the_k_placeholders(model: ChatNTModel) -> None:
    decoder = model.decoder
    for name in NAMES:
        kept = _tokenized(model, name, "keep")
        replaced = _tokenized(model, name, "replace")
        text = decoder.detokenize(kept.input_ids)
        assert f"@{name}?" in text.replace(decoder.placeholder_token, "")
        ph = decoder.placeholder_token_id
        first = kept.input_ids.index(ph)
        assert kept.input_ids[first : first + 4] == [ph] * 4
        assert decoder.detokenize(kept.input_ids[:first]).endswith(f"@{name}")
        # replace: the name never reaches the decoder's prompt, only the answer
        prompt_part = replaced.input_ids[: replaced.input_ids.index(ph)]
        assert name not in decoder.detokenize(prompt_part)


def test_keep_prompts_differ_only_by_the_name(model: ChatNTModel) -> None:
    decoder = model.decoder
    texts = set()
    for name in NAMES:
        kept = _tokenized(model, name, "keep")
        texts.add(decoder.detokenize(kept.input_ids).replace(f"@{name}", "@TAG"))
    assert len(texts) == 1

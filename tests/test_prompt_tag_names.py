"""Tag names: the decoder may read them ('keep'), the projection's question never does."""

from __future__ import annotations

import pytest
import torch

from chatnt_core import ChatNTModel, Example, SequenceInput, Turn
from chatnt_core.batching import tokenize_example
from chatnt_core.config import PromptConfig, load_config
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


@pytest.mark.parametrize("mode", ["keep", "replace", "alias"])
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


def test_alias_gives_the_decoder_the_same_tokens_for_every_tag_name(model: ChatNTModel) -> None:
    tokenized = [_tokenized(model, name, "alias") for name in NAMES]
    assert len({tuple(t.input_ids) for t in tokenized}) == 1
    assert len({tuple(t.labels) for t in tokenized}) == 1  # the answer is aliased too
    text = model.decoder.detokenize(tokenized[0].input_ids)
    assert "@seq1" in text and "No, @seq1 has none." in text
    assert [t.user_names for t in tokenized] == [{"seq1": name} for name in NAMES]


def test_alias_numbers_tags_by_first_appearance_across_turns(model: ChatNTModel) -> None:
    # the user's own names collide with the aliases on purpose: renaming is one pass
    example = Example(
        [
            Turn("Compare @seq2.fna with @seq1.", "@seq1 is longer than @seq2.fna."),
            Turn("And @seq1 with @z.fna?"),
        ],
        {n: SequenceInput(n, DNA, Modality.DNA) for n in ["seq2.fna", "seq1", "z.fna"]},
    )
    prompt = PromptConfig(system_prompt="A chat.", tag_names="alias")
    tokenized = tokenize_example(example, model.decoder, prompt, 2, [Modality.DNA])
    assert tokenized.user_names == {"seq1": "seq2.fna", "seq2": "seq1", "seq3": "z.fna"}
    text = model.decoder.detokenize(tokenized.input_ids)
    assert "@seq2 is longer than @seq1." in text  # the history answer, aliased
    assert "seq2.fna" not in text and "z.fna" not in text
    # the sequences bound to each occurrence are still the user's
    assert [o.tag for o in tokenized.occurrences] == ["seq2.fna", "seq1", "seq1", "z.fna"]


def test_alias_answers_come_back_with_the_users_names(model: ChatNTModel) -> None:
    config = load_config("tiny-random")
    config = config.model_copy(update={"prompt": PromptConfig(tag_names="alias")})
    aliased = ChatNTModel.from_config(config)
    batch = aliased.prompt_batch(["Is @b.fna like @a.fna?"], [{"a.fna": DNA, "b.fna": DNA}])
    assert batch.user_names == [{"seq1": "b.fna", "seq2": "a.fna"}]
    ids = [aliased.decoder.tokenize("@seq2 and @seq1 match; @seq3 does not exist.")]
    assert aliased.answer_texts(batch, ids) == ["@a.fna and @b.fna match; @seq3 does not exist."]

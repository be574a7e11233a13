"""The Python API on an untrained tiny model: answers, task cards, probabilities,
calibration from a checkpoint, conversations that encode once, batched generation."""

from __future__ import annotations

import doctest
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from training_helpers import one_thread

import chatnt_core.api
from chatnt_core import Answer, ChatNT, PlattCalibrator
from chatnt_core.data.tasks import TaskCard
from chatnt_core.errors import ChatNTError, TagWithoutSequenceError
from chatnt_core.evaluation.calibrate import TaskCalibration, save_calibration
from chatnt_core.evaluation.data import binary_phrasings
from chatnt_core.inference.generation import GenerationConfig, generate_ids
from chatnt_core.modality import Modality
from chatnt_core.model import ChatNTModel
from chatnt_core.training import checkpoint as ckpt

CTCF = "demo-ctcf-site"
SEQ = "ACGTTGCA" * 6
CALIBRATOR = {
    "feature": "logit",
    "eps": 1e-6,
    "C": 0.1,
    "coef": 0.5,
    "intercept": 2.0,
    "n_train": 40,
    "tasks": [CTCF],
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def bot() -> ChatNT:
    return ChatNT.from_config("tiny-random")


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint as the trainer writes one (config, trainable weights, manifest)."""
    torch.manual_seed(5)
    model = ChatNTModel.from_config("tiny-random")
    return ckpt.save_model(model, tmp_path_factory.mktemp("run"), step=1)


def test_ask_returns_an_answer_with_text(bot: ChatNT) -> None:
    answer = bot.ask("Tell me about @p.fna.", {"p.fna": SEQ}, max_new_tokens=4)
    assert isinstance(answer, Answer)
    assert isinstance(answer.text, str) and str(answer) == answer.text
    assert answer.task is None and answer.probability is None and not answer.parseable
    with pytest.raises(Exception, match="frozen|cannot assign"):
        answer.text = "changed"  # type: ignore[misc]


def test_named_binary_task_gives_an_uncalibrated_probability(bot: ChatNT) -> None:
    answer = bot.ask("Does this look bound, @p.fna?", {"p.fna": SEQ}, task=CTCF, max_new_tokens=4)
    assert answer.task == CTCF
    assert answer.probability is not None and 0.0 < answer.probability < 1.0
    assert answer.calibrated is False
    # The same probability as scoring the card's answers directly.
    from chatnt_core.batching import Example
    from chatnt_core.calibration import yes_probability
    from chatnt_core.data.tasks import fill
    from chatnt_core.prompt import SequenceInput, Turn

    card = bot.cards[CTCF]
    labels = card.labels or []
    pos = [fill(a, {"seq": "p.fna"}) for a in labels[0].answers]
    neg = [fill(a, {"seq": "p.fna"}) for a in labels[1].answers]
    assert labels[0].positive
    example = Example(
        [Turn("Does this look bound, @p.fna?")], {"p.fna": SequenceInput("p.fna", SEQ)}
    )
    expected = float(yes_probability(bot.model, [example], pos, neg)[0])
    assert answer.probability == pytest.approx(expected, abs=1e-6)


def test_question_from_a_card_pool_selects_the_card(bot: ChatNT) -> None:
    answer = bot.ask("Is a CTCF site hidden in @x.fna?", {"x.fna": SEQ}, max_new_tokens=2)
    assert answer.task == CTCF and answer.probability is not None
    regression = bot.ask("Hi @x.fna", {"x.fna": SEQ}, task="demo-gc-content", max_new_tokens=2)
    assert regression.task == "demo-gc-content" and regression.probability is None
    multi = bot.ask("Hi @x.fna", {"x.fna": SEQ}, task="demo-tf-site", max_new_tokens=2)
    assert multi.task == "demo-tf-site" and multi.probability is None
    with pytest.raises(ChatNTError, match="unknown task 'demo-ctcf'"):
        bot.ask("Hi @x.fna", {"x.fna": SEQ}, task="demo-ctcf")


def test_answers_are_parsed_with_the_card(bot: ChatNT) -> None:
    card = bot.cards[CTCF]
    yes = bot.interpret("Yes, @q.fna contains a CTCF binding site.", card, (0.8, True))
    assert (yes.label, yes.parseable, yes.probability, yes.calibrated) == (
        "ctcf_site",
        True,
        0.8,
        True,
    )
    assert bot.interpret("No, CTCF has no site in @q.fna.", card).label == "no_ctcf_site"
    gc = bot.interpret("The GC content is 0.42.", bot.cards["demo-gc-content"])
    assert gc.value == pytest.approx(0.42) and gc.label is None and gc.parseable
    shrug = bot.interpret("I am not sure.", card)
    assert shrug.task == CTCF and not shrug.parseable and shrug.label is None


def calibration(card: TaskCard, positive: list[str] | None = None) -> TaskCalibration:
    """A fitted-looking calibrator as ``chatnt calibrate`` stores it."""
    pos, neg = binary_phrasings(card)
    return TaskCalibration(PlattCalibrator.from_dict(CALIBRATOR), positive or pos, neg, 40, 20)


def test_checkpoint_calibrator_is_applied(bot: ChatNT, checkpoint_dir: Path) -> None:
    save_calibration(checkpoint_dir, {CTCF: calibration(bot.cards[CTCF])}, "data")
    calibrated = ChatNT.from_pretrained(checkpoint_dir)
    assert set(calibrated.calibrations) == {CTCF}
    question, seqs = "Is there a CTCF binding site in @s.fna?", {"s.fna": SEQ}
    answer = calibrated.ask(question, seqs, max_new_tokens=2)
    raw = ChatNT(calibrated.model).ask(question, seqs, max_new_tokens=2)
    assert answer.calibrated and not raw.calibrated
    assert raw.probability is not None and answer.probability is not None
    expected = PlattCalibrator.from_dict(CALIBRATOR).predict_proba([raw.probability])[0]
    assert answer.probability == pytest.approx(float(expected), abs=1e-9)
    assert abs(answer.probability - raw.probability) > 0.2  # the calibrator did something
    # A task without a calibrator of its own stays raw.
    other = calibrated.ask("Hi @s.fna", seqs, task="enhancers", max_new_tokens=2)
    assert other.probability is not None and not other.calibrated
    # A calibrator fitted on other answer phrasings than the card's no longer applies.
    stale = ChatNT(calibrated.model, {CTCF: calibration(bot.cards[CTCF], ["Yes."])})
    again = stale.ask(question, seqs, max_new_tokens=2)
    assert not again.calibrated and again.probability == pytest.approx(raw.probability)


def test_broken_calibration_file_is_a_clear_error(checkpoint_dir: Path, tmp_path: Path) -> None:
    (checkpoint_dir / "calibration.json").write_text(json.dumps({CTCF: {"coef": "x"}}))
    try:
        with pytest.raises(ChatNTError, match="not a valid calibration file"):
            ChatNT.from_pretrained(checkpoint_dir.parent)  # via the 'latest' pointer
    finally:
        (checkpoint_dir / "calibration.json").unlink()
    with pytest.raises(ChatNTError, match="neither a checkpoint"):
        ChatNT.from_pretrained(tmp_path)
    with pytest.raises(ChatNTError, match="not a checkpoint directory, a config file or a preset"):
        ChatNT.load(tmp_path / "nope")


def test_chat_encodes_each_sequence_once(bot: ChatNT, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bot.model, "encoding_caches", {})  # only the conversation may cache
    encoder = bot.model.encoder(Modality.DNA)
    encoded: list[str] = []
    original = encoder.encode

    def counting(sequences: list[str]) -> Any:
        encoded.extend(sequences)
        return original(sequences)

    monkeypatch.setattr(encoder, "encode", counting)
    chat = bot.chat(max_new_tokens=3)
    first = chat.ask("Is a CTCF site hidden in @p.fna?", {"p.fna": SEQ})
    second = chat.ask("Would you say @p.fna contains a CTCF motif?")
    third = chat.ask("Compare @p.fna with @q.fna.", {"q.fna": "GGGCCC"})
    assert first.probability is not None and second.probability is not None
    assert third.task is None
    assert sorted(encoded) == sorted([SEQ, "GGGCCC"])
    assert [t.user for t in chat.turns][1] == "Would you say @p.fna contains a CTCF motif?"
    with pytest.raises(TagWithoutSequenceError):
        chat.ask("What about @r.fna?")
    chat.reset()
    assert chat.turns == [] and chat.sequences == {}


def test_generate_batches_with_stop_rules_and_sampling(bot: ChatNT) -> None:
    questions = ["Hi @a.fna", "Describe @b.fna please"]
    seqs = [{"a.fna": SEQ}, {"b.fna": "TTTTAAAACC"}]
    batch = bot.model.prompt_batch(questions, seqs)
    ids = generate_ids(bot.model, batch, GenerationConfig(max_new_tokens=6, ignore_eos=True))
    full = bot.generate(questions, seqs, max_new_tokens=6)
    eos = bot.model.decoder.eos_token_id

    def until(row: list[int], stops: set[int]) -> str:
        end = next((i for i, t in enumerate(row) if t in stops), len(row))
        return bot.model.decoder.detokenize(row[:end]).strip()

    assert full == [until(row, {eos}) for row in ids]
    # A stop token ends the row before it; a stop string cuts the text at its first match.
    stop = ids[0][2]
    stopped = bot.generate(questions, seqs, max_new_tokens=6, stop_token_ids=[stop])
    assert stopped == [until(row, {eos, stop}) for row in ids]
    marker = full[1][1:3] if len(full[1]) >= 3 else full[1]
    cut = bot.generate(questions, seqs, max_new_tokens=6, stop=marker)
    assert cut[1] == full[1][: full[1].find(marker)].strip()
    # Sampling is reproducible with a seed and differs from greedy decoding.
    one = bot.generate(questions, seqs, max_new_tokens=8, temperature=1.0, seed=3)
    two = bot.generate(questions, seqs, max_new_tokens=8, temperature=1.0, seed=3)
    other = bot.generate(questions, seqs, max_new_tokens=8, temperature=1.0, seed=4)
    assert one == two and one != other


def test_ask_batch_matches_single_asks(bot: ChatNT) -> None:
    questions = ["Is a CTCF site hidden in @a.fna?", "Is a CTCF site hidden in @b.fna?"]
    seqs = [{"a.fna": SEQ}, {"b.fna": "GATTACA" * 3}]
    together = bot.ask_batch(questions, seqs, max_new_tokens=2)
    alone = [bot.ask(q, s, max_new_tokens=2) for q, s in zip(questions, seqs)]
    for batched, single in zip(together, alone):
        assert batched.task == single.task == CTCF
        assert batched.probability == pytest.approx(single.probability, abs=1e-4)
    assert together[0].probability != together[1].probability


def test_docstring_examples_run() -> None:
    result = doctest.testmod(chatnt_core.api, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 5 and result.failed == 0


def test_p_yes_from_the_generation_pass_equals_a_separate_pass() -> None:
    """ask_batch scores the answer phrasings from the prompt state its generation kept;
    the probabilities match running the prompts again (rows of mixed cards and tags)."""
    from tiny_models import sharp_tiny_model

    from chatnt_core.batching import Example
    from chatnt_core.prompt import Turn, as_sequence_inputs

    bot = ChatNT(sharp_tiny_model())
    questions = [
        "Is there a CTCF binding site in @a.fna?",
        "What is the GC content of @b.fna?",
        "Is there a CTCF binding site in @b.fna?",
        "Does @a.fna contain a CTCF motif, would you say?",
    ]
    sequences = [{"a.fna": SEQ}, {"b.fna": SEQ[:20]}, {"b.fna": SEQ[5:]}, {"a.fna": SEQ[:30]}]
    answers = bot.ask_batch(questions, sequences, max_new_tokens=3)
    examples = [Example([Turn(q)], as_sequence_inputs(s)) for q, s in zip(questions, sequences)]
    cards = [bot.task_card(q) for q in questions]
    again = bot.probabilities(cards, examples)  # prompts run again
    assert [a.task for a in answers] == [c.name if c else None for c in cards]
    for answer, separate in zip(answers, again):
        if separate is None:
            assert answer.probability is None
        else:
            assert answer.probability == pytest.approx(separate[0], abs=1e-4)
    probs = [a.probability for a in answers if a.probability is not None]
    assert len(probs) == 3 and max(probs) - min(probs) > 1e-3  # rows differ: real check

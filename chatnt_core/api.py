"""The Python API: load a model, ask questions, get parsed and calibrated answers.

``ChatNTModel`` answers in words; what a user usually wants is the label or number in
those words and, for a yes/no question, how sure the model is. ``ChatNT`` puts the three
steps together so no caller has to repeat them: generate the text, parse it with the task
card the question belongs to (named, or recognised from the question), and, for a binary
card, score the card's positive against its negative answer phrasings (perplexity
classifier, ``chatnt_core.calibration``) and map the result through the checkpoint's
Platt calibrator for that task. Without a calibrator the raw probability is returned
and flagged ``calibrated=False``, so an uncalibrated number is never mistaken for one.

Example (an untrained tiny model, so the words are noise but the shapes are real)::

    >>> from chatnt_core import ChatNT
    >>> bot = ChatNT.from_config("tiny-random")
    >>> answer = bot.ask(
    ...     "Is there a CTCF binding site in @seq.fna?",
    ...     {"seq.fna": "ACGT" * 20},
    ...     task="demo-ctcf-site",
    ...     max_new_tokens=4,
    ... )
    >>> answer.task, 0.0 < answer.probability < 1.0, answer.calibrated
    ('demo-ctcf-site', True, False)
    >>> chat = bot.chat(max_new_tokens=4)
    >>> first = chat.ask("Describe @p.fna.", {"p.fna": "TATAAAGGC"})
    >>> second = chat.ask("And its GC content?")  # @p.fna is not encoded again
    >>> len(chat.turns)
    2
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from chatnt_core.batching import Example
from chatnt_core.calibration import class_probabilities
from chatnt_core.errors import ChatNTError
from chatnt_core.inference.conversation import ChatSession
from chatnt_core.inference.drafting import batch_references
from chatnt_core.inference.generation import (
    GenerationConfig,
    PromptState,
    continue_from,
    generate_ids,
    generation_room,
    run_prompt,
    stop_token_ids,
)
from chatnt_core.inference.precision import as_precision, set_precision
from chatnt_core.model import ChatNTModel
from chatnt_core.prompt import SequenceInput, Turn, as_sequence_inputs, find_tags

if TYPE_CHECKING:
    from chatnt_core.data.tasks import TaskCard
    from chatnt_core.evaluation.calibrate import TaskCalibration
    from chatnt_core.evaluation.parsing import TaskMatch
    from chatnt_core.inference.encoding_cache import EncodingCache

Sequences = Mapping[str, str | SequenceInput]


@dataclass(frozen=True)
class Answer:
    """One answer: the words, and what they mean under a task card when one applies.

    ``label``/``value`` come from parsing ``text`` with the card (``parseable`` says whether
    that worked; it is False when no card applies). ``probability`` is P(positive label)
    for binary cards, from answer perplexities, never from the generated words; it is
    Platt-calibrated when ``calibrated`` is True.

    ``task_match`` says how the card was chosen: ``given`` (``task=``), ``exact`` (the
    question is in the card's question pool), ``similar`` (close to its questions,
    ``match_score`` in [0, 1]) or ``none``: no card matched, so there is no label, value
    or probability, and ``match_note`` says why (``chatnt_core.evaluation.parsing``).
    """

    text: str
    task: str | None = None
    label: str | None = None
    value: float | None = None
    probability: float | None = None
    calibrated: bool = False
    parseable: bool = False
    task_match: str = "none"
    match_score: float | None = None
    match_note: str = ""

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """The text up to the earliest stop string (the stop string itself dropped)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut]


def _answer_tags(card: TaskCard, message: str) -> dict[str, str] | None:
    """Card placeholder -> tag, taken from the message's tags in order of appearance."""
    tags = list(dict.fromkeys(find_tags(message)))
    placeholders = card.seq_placeholders
    if len(tags) < len(placeholders):
        return None
    return dict(zip(placeholders, tags))


@dataclass
class GreedyAnswers:
    """What answer scoring found out about greedy decoding, row -> answer ids.

    Scoring a yes/no question feeds every answer phrasing after the prompt and so sees,
    at each of their tokens, what the model would have picked. When each token of a
    phrasing (its stop token included) is the model's pick, greedy decoding would write
    exactly that phrasing: the row needs no decoding steps of its own."""

    stop_ids: Sequence[int]
    max_new_tokens: int
    found: dict[int, list[int]] = field(default_factory=dict)


class ChatNT:
    """A loaded model plus what turns its words into answers (task cards, calibrators).

    ``calibrations`` maps a binary task to its fitted Platt calibrator and the answer
    phrasings it was fitted with (``chatnt_core.evaluation.calibrate``); a checkpoint
    keeps them in ``calibration.json``, written by ``chatnt calibrate``.
    """

    def __init__(
        self,
        model: ChatNTModel,
        calibrations: Mapping[str, TaskCalibration] | None = None,
        source: str | None = None,
    ) -> None:
        self.model = model.eval()
        self.calibrations = dict(calibrations or {})
        self.source = source
        self._cards: dict[str, TaskCard] | None = None

    # ---- loading -----------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str | torch.device | None = None,
        precision: str | None = None,
    ) -> ChatNT:
        """A trained checkpoint directory (or an output directory with ``latest``).

        Its ``calibration.json``, when present, supplies per-task Platt calibrators.
        ``precision="bf16"`` holds the decoder's weights in bfloat16, ``"fp32"`` in
        float32 (``chatnt_core.inference.precision``: bfloat16 is faster on CPUs with
        native bfloat16); None keeps them as the checkpoint's config loads them.
        """
        from chatnt_core.evaluation.calibrate import load_calibration
        from chatnt_core.training.checkpoint import load_model_from_checkpoint, resolve_checkpoint

        if precision is not None:
            as_precision(precision)  # a wrong name fails before the model loads
        directory = resolve_checkpoint(path)
        calibrations = load_calibration(directory)  # a broken file fails before the model loads
        model = _placed(load_model_from_checkpoint(directory), device, precision)
        return cls(model, calibrations, str(directory))

    @classmethod
    def from_config(
        cls,
        source: str | Path,
        *,
        device: str | torch.device | None = None,
        precision: str | None = None,
    ) -> ChatNT:
        """An assembly from a preset name or config YAML, weights as the config says."""
        if precision is not None:
            as_precision(precision)
        return cls(_placed(ChatNTModel.from_config(source), device, precision), source=str(source))

    @classmethod
    def load(
        cls,
        source: str | Path,
        *,
        device: str | torch.device | None = None,
        precision: str | None = None,
    ) -> ChatNT:
        """A checkpoint directory, else a config file or preset name (what the CLI takes)."""
        from chatnt_core.presets import preset_names

        path = Path(source)
        if path.is_dir():
            return cls.from_pretrained(path, device=device, precision=precision)
        if not path.is_file() and str(source) not in preset_names():
            raise ChatNTError(
                f"'{source}' is not a checkpoint directory, a config file or a preset "
                f"(presets: {', '.join(preset_names())})"
            )
        return cls.from_config(source, device=device, precision=precision)

    # ---- task cards --------------------------------------------------------------------

    @property
    def cards(self) -> dict[str, TaskCard]:
        """Every known task card (shipped and plugin-registered), loaded on first use."""
        if self._cards is None:
            from chatnt_core.data.tasks import load_task_cards

            self._cards = load_task_cards()
        return self._cards

    def task_card(self, question: str, task: str | TaskCard | None = None) -> TaskCard | None:
        """The named card (a name or YAML path), else the card the question matches, or None."""
        return self.find_task(question, task).card

    def find_task(self, question: str, task: str | TaskCard | None = None) -> TaskMatch:
        """The named card (a name or YAML path), else the card the question matches and how
        (``chatnt_core.evaluation.parsing.match_question``: its pools, exactly or closely)."""
        from chatnt_core.data.tasks import TaskCard, get_task_card
        from chatnt_core.evaluation.parsing import TaskMatch, match_question

        if isinstance(task, TaskCard):
            return TaskMatch(task, "given")
        if task is not None:
            return TaskMatch(self.cards.get(task) or get_task_card(task), "given")
        return match_question(question, list(self.cards.values()))

    # ---- generation --------------------------------------------------------------------

    def generate(
        self,
        questions: Sequence[str],
        sequences: Sequence[Sequences] | None = None,
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stop_token_ids: Sequence[int] = (),
    ) -> list[str]:
        """Answer single-turn questions in one padded, KV-cached batch.

        Greedy when ``temperature`` is 0, else sampled (reproducibly with ``seed``). A row
        stops at EOS or any of ``stop_token_ids``; its text is then cut at the first of the
        ``stop`` strings (a string may span several tokens, so it is applied to the text).

        >>> bot = ChatNT.from_config("tiny-random")
        >>> texts = bot.generate(["Hi @a.fna", "Hi @b.fna"], [{"a.fna": "ACGT"}, {"b.fna": "GG"}],
        ...                      max_new_tokens=3, stop=["\\n"])
        >>> len(texts)
        2
        """
        return self._generate(
            questions, sequences, max_new_tokens, temperature, seed, stop, stop_token_ids
        )

    def _generate(
        self,
        questions: Sequence[str],
        sequences: Sequence[Sequences] | None,
        max_new_tokens: int,
        temperature: float,
        seed: int | None,
        stop: str | Sequence[str] | None = None,
        stop_token_ids: Sequence[int] = (),
    ) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        batch = self.model.prompt_batch(questions, sequences)
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
            stop_token_ids=tuple(stop_token_ids),
        )
        found = {question: self.find_task(question).card for question in set(questions)}
        cards = [found[question] for question in questions]
        references = batch_references(batch, questions, cards, self.model.decoder.tokenize)
        ids = generate_ids(self.model, batch, config, references=references)
        texts = self.model.answer_texts(batch, ids)
        return [_cut_at_stop(text, stops).strip() for text in texts]

    # ---- answers -----------------------------------------------------------------------

    def ask(
        self,
        question: str,
        sequences: Sequences | None = None,
        *,
        task: str | TaskCard | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> Answer:
        """Answer one question about the tagged ``sequences`` (see the module example)."""
        return self.ask_batch(
            [question],
            [sequences or {}],
            task=task,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
        )[0]

    @torch.no_grad()  # an answer must not keep the projection's graph (it doubled memory)
    def ask_batch(
        self,
        questions: Sequence[str],
        sequences: Sequence[Sequences],
        *,
        task: str | TaskCard | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[Answer]:
        """``ask`` for many questions at once: one prompt pass for the batch, one scoring
        pass per group of questions sharing a card and tags, then generation for the rows
        whose greedy answer the scoring did not already decode (see ``GreedyAnswers``)."""
        batch = self.model.prompt_batch(questions, sequences)
        config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        limit = generation_room(self.model, batch.input_ids.shape[1], config)
        state = run_prompt(self.model, batch, self.model.embed_prompt(batch))
        found: dict[str, TaskMatch] = {}
        for question in questions:
            if question not in found:
                found[question] = self.find_task(question, task)
        matches = [found[question] for question in questions]
        cards = [match.card for match in matches]
        examples = [Example([Turn(q)], as_sequence_inputs(s)) for q, s in zip(questions, sequences)]
        greedy = GreedyAnswers(stop_token_ids(self.model, config), limit)
        probabilities = self.probabilities(
            cards, examples, prompt_state=state, greedy=greedy if temperature <= 0 else None
        )
        ids = [greedy.found.get(i, []) for i in range(len(questions))]
        rest = [i for i in range(len(questions)) if i not in greedy.found]  # all when sampling
        if rest:
            index = torch.tensor(rest, device=batch.input_ids.device)
            rest_state = state if len(rest) == len(questions) else state.rows(index)
            references = batch_references(batch, questions, cards, self.model.decoder.tokenize)
            decoded = continue_from(
                self.model,
                rest_state,
                batch.input_ids[index],
                config,
                [references[i] for i in rest],
            )
            for i, row in zip(rest, decoded):
                ids[i] = row
        texts = [text.strip() for text in self.model.answer_texts(batch, ids)]
        return [
            self.interpret(text, match.card, p, match)
            for text, match, p in zip(texts, matches, probabilities)
        ]

    def interpret(
        self,
        text: str,
        card: TaskCard | None,
        probability: tuple[float, bool] | None = None,
        match: TaskMatch | None = None,
    ) -> Answer:
        """An Answer from generated text: parsed with ``card``, with its probability.

        ``match`` is how ``card`` was found (``find_task``); without it a card counts as
        given and no card as unmatched.
        """
        from chatnt_core.evaluation.parsing import TaskMatch, parse_answer

        prob, calibrated = probability if probability is not None else (None, False)
        if match is None:
            match = TaskMatch(card, "given" if card is not None else "none")
        parsed = parse_answer(card, text) if card is not None else None
        return Answer(
            text=text,
            task=card.name if card is not None else None,
            label=parsed.label if parsed is not None else None,
            value=parsed.value if parsed is not None else None,
            probability=prob,
            calibrated=calibrated,
            parseable=parsed is not None and parsed.parseable,
            task_match=match.how,
            match_score=match.score,
            match_note=match.reason,
        )

    def probabilities(
        self,
        cards: Sequence[TaskCard | None],
        examples: Sequence[Example],
        cache: EncodingCache | None = None,
        max_rows: int | None = None,
        prompt_state: PromptState | None = None,
        greedy: GreedyAnswers | None = None,
    ) -> list[tuple[float, bool] | None]:
        """(P(positive), calibrated) for each example whose card is binary, else None.

        The candidates are the card's positive and negative answers with ``{seq}`` filled
        by the tags of the example's last message, the way the model was trained to answer
        and the calibrator was fitted. A calibrator fitted on other phrasings than the
        card's current ones no longer applies; the raw probability is returned instead.
        ``max_rows`` bounds the candidate rows per decoder call (memory). ``prompt_state``
        is the decoder's state after exactly ``examples``: the prompts are then not run
        again. ``greedy`` collects the answers greedy decoding would give that the scoring
        has already decoded.
        """
        from chatnt_core.data.tasks import fill
        from chatnt_core.evaluation.data import binary_phrasings

        groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[int]] = {}
        for i, (card, example) in enumerate(zip(cards, examples)):
            if card is None or card.kind != "binary":
                continue
            tags = _answer_tags(card, example.turns[-1].user)
            if tags is not None:
                groups.setdefault((card.name, tuple(tags.items())), []).append(i)
        out: list[tuple[float, bool] | None] = [None] * len(examples)
        for (name, pairs), rows in groups.items():
            card, fills = cards[rows[0]], dict(pairs)
            assert card is not None
            positive, negative = binary_phrasings(card)
            calibration = self.calibrations.get(name)
            if calibration is not None and calibration.mismatch(card) is not None:
                calibration = None
            probs, scores = class_probabilities(
                self.model,
                [examples[i] for i in rows],
                [fill(a, fills) for a in positive],
                [fill(a, fills) for a in negative],
                calibration.formulation if calibration else "paper",
                cache=cache,
                max_rows=max_rows,
                prompt_state=(
                    None if prompt_state is None else prompt_state.rows(torch.tensor(rows))
                ),
            )
            if greedy is not None:
                answers = scores.greedy_answers(greedy.stop_ids, greedy.max_new_tokens)
                greedy.found.update((i, a) for i, a in zip(rows, answers) if a is not None)
            values = probs[:, 0].detach().double().cpu().numpy()
            if calibration is not None:
                values = calibration.calibrator.predict_proba(values)
            for i, value in zip(rows, values):
                out[i] = (float(value), calibration is not None)
        return out

    def chat(
        self, *, max_new_tokens: int = 128, temperature: float = 0.0, seed: int | None = None
    ) -> Conversation:
        """A multi-turn conversation in which each sequence is encoded once."""
        config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        return Conversation(self, config)


def _placed(
    model: ChatNTModel, device: str | torch.device | None, precision: str | None
) -> ChatNTModel:
    """``model`` on ``device`` and its decoder in ``precision`` (each when given)."""
    model = model if device is None else model.to(device)
    return model if precision is None else set_precision(model, precision)


class Conversation:
    """Turns so far plus their sequences; ``ask`` continues the conversation.

    Wraps ``ChatSession``, whose encoding cache also serves the probability scoring, so a
    sequence is encoded once however many turns and candidate answers mention it.
    """

    def __init__(self, chatnt: ChatNT, generation: GenerationConfig | None = None) -> None:
        self.chatnt = chatnt
        self.session = ChatSession(chatnt.model, generation)

    def ask(
        self,
        message: str,
        sequences: Sequences | None = None,
        *,
        task: str | TaskCard | None = None,
    ) -> Answer:
        """Answer ``message``; ``sequences`` binds the tags it uses for the first time."""
        history = list(self.session.turns)
        match = self.chatnt.find_task(message, task)
        text = self.session.ask(message, sequences, match.card)
        example = Example([*history, Turn(message)], dict(self.session.sequences))
        probability = self.chatnt.probabilities([match.card], [example], self.session.cache)[0]
        return self.chatnt.interpret(text, match.card, probability, match)

    def reset(self) -> None:
        """Forget the turns and tag bindings; encodings stay cached."""
        self.session.reset()

    @property
    def turns(self) -> list[Turn]:
        return list(self.session.turns)

    @property
    def sequences(self) -> dict[str, SequenceInput]:
        return dict(self.session.sequences)

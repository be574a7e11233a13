"""Task cards: what a task asks, how its answers read, and what the paper measured.

A card is the English side of one supervised task. The builder pairs it with user data
(sequences plus labels or values) to write instruction records; the evaluator reads the
same card to know the metric and the label vocabulary. Cards live as YAML files under
``registry/tasks/`` and may also come from plugins through the ``register_tasks`` hook, so
a lab can ship its own tasks without touching chatnt.

Templates use two placeholders and nothing else: ``{seq}`` is replaced by the sequence tag
(``@promoter.fna``) and ``{value}`` by the rounded regression target. A card that asks about
several sequences at once (``num_sequences: 2``) uses ``{seq1}``, ``{seq2}`` instead.
Train and test question pools never share a question, so a test score also measures how
well the model copes with phrasings it has not seen (paper, Methods 2.1). Tag names work
the same way: each record draws its tags from a pool of file-like names of its split
(``TRAIN_TAG_NAMES``, ``TEST_TAG_NAMES``, disjoint), so a model learns to answer with the
tag the user wrote and a test score is measured on tag names it never saw.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import random
import re
from collections.abc import Collection, Iterable, Mapping
from decimal import ROUND_HALF_UP, Decimal
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from chatnt_core.data.records import InstructionRecord, SequenceRecord, TurnRecord
from chatnt_core.errors import ChatNTError, DuplicateComponentError
from chatnt_core.modality import Modality
from chatnt_core.plugins import ComponentKind, PluginRegistry, get_registry
from chatnt_core.presets import registry_root

TaskKind = Literal["binary", "multi_label", "regression"]
Metric = Literal["mcc", "auroc", "f1", "pearson"]

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_WHITESPACE = re.compile(r"\s+")
_NAME = r"^[a-z0-9][a-z0-9_-]*$"
TAG_SUFFIX = {Modality.DNA: ".fna", Modality.RNA: ".frn", Modality.PROTEIN: ".faa"}
# The suffixes record tags are drawn with; all are ones ``modality_from_tag`` reads back.
TAG_SUFFIX_CHOICES = {
    Modality.DNA: (".fna", ".fa", ".dna"),
    Modality.RNA: (TAG_SUFFIX[Modality.RNA],),
    Modality.PROTEIN: (TAG_SUFFIX[Modality.PROTEIN],),
}
# File-like tag names (without suffix) for built records. Training records use the first
# pool, test records the second; the two never share a name, so an evaluation on test
# records measures answers on tag names the model never saw in training.
TRAIN_TAG_NAMES = (
    "seq",
    "promoter",
    "region_12",
    "chr3_10450",
    "sample_A",
    "query",
    "frag7",
    "enhancer2",
    "read_881",
    "locus",
    "peak_17",
    "insert",
    "amplicon",
    "clone_B4",
    "my_seq",
    "gene_x",
    "contig12",
    "dna1",
    "target",
    "seqA",
    "seq_2",
    "chr1_22871",
    "chrX_5512",
    "region_b",
    "sample3",
    "variant_7",
    "exon4",
    "intron_2",
    "utr5",
    "element_31",
    "tile_208",
    "bin_56",
    "construct1",
    "oligo_14",
    "scaffold_9",
    "hit_3",
    "reporter",
    "mutant_B",
    "wt_allele",
    "cds_12",
)
TEST_TAG_NAMES = (
    "s",
    "x1",
    "test_seq",
    "myDNA",
    "fragment_9",
    "lambda_region",
    "site42",
    "input",
    "unknown",
    "candidate3",
    "probe",
    "window_5",
)
# How two single-sequence questions are joined into one message. Train and test frames
# differ, like the question pools, so pair prompts at test time are unseen too.
PAIR_FRAMES = {
    "train": [
        "{q1} {q2}",
        "Two questions. {q1} {q2}",
        "About the first sequence: {q1} About the second one: {q2}",
        "Please answer both. 1) {q1} 2) {q2}",
    ],
    "test": ["Question one: {q1} Question two: {q2}", "{q1} And a second question: {q2}"],
}
Checked = tuple[list[str], str | None, float | None]  # sequences, label, value


class TaskCardError(ChatNTError):
    """A task card is malformed, missing or registered twice."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelSpec(_Strict):
    """One class: its canonical name, the answers that state it, and input spellings.

    ``synonyms`` are other spellings accepted in a data file's label column (compared
    case-insensitively), e.g. ``1`` / ``true`` for the positive class of a 0/1 table.
    """

    name: str = Field(min_length=1)
    answers: list[str] = Field(min_length=1)
    synonyms: list[str] = Field(default_factory=list)
    positive: bool = False
    anchor: str | None = Field(
        default=None,
        min_length=1,
        description="the word label anchors teach the projection to spell for this class "
        "(default: the first word all its answers share if it tells the labels apart, "
        "else the name; chatnt_core/training/anchors.py)",
    )


class ValueSpec(_Strict):
    """Range and precision of a regression target; the questions quote the same range."""

    min: float | None = None
    max: float | None = None
    decimals: int = Field(default=2, ge=0, le=6)

    @model_validator(mode="after")
    def _ordered(self) -> ValueSpec:
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"value.min ({self.min}) must be below value.max ({self.max})")
        return self


class PaperResult(_Strict):
    """Figures recorded in the ChatNT paper; a figure the paper does not give is null + note."""

    metric: Metric
    chatnt: float | None = None
    baseline: float | None = None
    baseline_model: str | None = None
    note: str | None = None

    @model_validator(mode="after")
    def _missing_needs_note(self) -> PaperResult:
        if (self.chatnt is None or self.baseline is None) and not self.note:
            raise ValueError("paper: a null figure needs a 'note' saying why it is missing")
        return self


class TaskSource(_Strict):
    """Where the task comes from: the original study and, for paper tasks, its table row."""

    study: str = Field(min_length=1)
    paper_table: str | None = None
    paper_task: str | None = None


class QuestionPools(_Strict):
    train: list[str] = Field(min_length=10)
    test: list[str] = Field(min_length=5)


def clip_cell(text: str, width: int = 40) -> str:
    """A user's cell, quoted and shortened, safe to put in a one-line error."""
    return repr(text if len(text) <= width else text[: width - 3] + "...")


def normalise(text: str) -> str:
    """The form used to compare questions: white space collapsed, lower case."""
    return _WHITESPACE.sub(" ", text).strip().lower()


def _check_template(text: str, where: str, required: Iterable[str], allowed: set[str]) -> None:
    found = _PLACEHOLDER.findall(text)
    unknown = sorted(set(found) - allowed)
    if unknown:
        raise ValueError(f"{where} uses unknown placeholder {{{unknown[0]}}}: {text!r}")
    for name in required:
        count = found.count(name)
        if count != 1:
            raise ValueError(
                f"{where} must contain {{{name}}} exactly once (found {count}): {text!r}"
            )


class TaskCard(_Strict):
    """A task: description, provenance, label vocabulary or value range, questions, answers."""

    name: str = Field(pattern=_NAME)
    description: str = Field(min_length=1)
    source: TaskSource
    modality: Modality
    kind: TaskKind
    metric: Metric
    labels: list[LabelSpec] | None = None
    value: ValueSpec | None = None
    answers: list[str] | None = None  # regression answer templates
    paper: PaperResult | None = None
    questions: QuestionPools
    num_sequences: int = Field(default=1, ge=1, le=8)

    @property
    def seq_placeholders(self) -> list[str]:
        if self.num_sequences == 1:
            return ["seq"]
        return [f"seq{i}" for i in range(1, self.num_sequences + 1)]

    @model_validator(mode="after")
    def _consistent(self) -> TaskCard:
        if self.kind == "regression":
            self._check_regression()
        else:
            self._check_classification()
        self._check_questions()
        return self

    def _check_regression(self) -> None:
        if self.labels is not None:
            raise ValueError("a regression card has no 'labels'; use 'value' and 'answers'")
        if self.value is None or not self.answers:
            raise ValueError("a regression card needs 'value' {min, max, decimals} and 'answers'")
        allowed = {*self.seq_placeholders, "value"}
        for text in self.answers:
            _check_template(text, "answer", allowed, allowed)

    def _check_classification(self) -> None:
        if self.value is not None or self.answers is not None:
            raise ValueError(f"a {self.kind} card has no 'value'/'answers'; answers go per label")
        labels = self.labels or []
        if self.kind == "binary":
            if len(labels) != 2:
                raise ValueError(f"a binary card has exactly 2 labels, not {len(labels)}")
            if sum(label.positive for label in labels) != 1:
                raise ValueError("a binary card marks exactly one label 'positive: true'")
        else:
            if len(labels) < 3:
                raise ValueError("a multi_label card has at least 3 labels (2 is 'binary')")
            if any(label.positive for label in labels):
                raise ValueError("'positive' applies to binary cards only")
        names = [label.name for label in labels]
        if len(set(names)) != len(names):
            raise ValueError(f"label names repeat: {', '.join(names)}")
        seen: dict[str, str] = {}
        placeholders = set(self.seq_placeholders)
        for label in labels:
            for spelling in [label.name, *label.synonyms]:
                key = normalise(spelling)
                if key in seen and seen[key] != label.name:
                    raise ValueError(
                        f"'{spelling}' names both label '{seen[key]}' and label '{label.name}'"
                    )
                seen[key] = label.name
            for text in label.answers:
                _check_template(text, f"answer of label '{label.name}'", placeholders, placeholders)

    def _check_questions(self) -> None:
        placeholders = set(self.seq_placeholders)
        for split in ("train", "test"):
            pool = getattr(self.questions, split)
            for text in pool:
                _check_template(text, f"{split} question", placeholders, placeholders)
            if len({normalise(q) for q in pool}) != len(pool):
                raise ValueError(f"the {split} question pool repeats a question")
        shared = {normalise(q) for q in self.questions.train} & {
            normalise(q) for q in self.questions.test
        }
        if shared:
            raise ValueError(f"train and test questions overlap: {sorted(shared)[0]!r}")

    # ---- helpers the builder and evaluator share ------------------------------------------

    @cached_property
    def label_lookup(self) -> dict[str, str]:
        """Normalised spelling (name or synonym) -> canonical label name (built once per card)."""
        return {
            normalise(spelling): label.name
            for label in self.labels or []
            for spelling in [label.name, *label.synonyms]
        }

    def parse_target(self, text: str) -> tuple[str | None, float | None] | str:
        """A data file's label cell -> (label, value), or the reason it does not fit the card."""
        target = text.strip()
        if not target:
            return "empty value" if self.kind == "regression" else "empty label"
        if self.kind != "regression":
            label = self.label_lookup.get(normalise(target))
            if label is None:
                names = ", ".join(spec.name for spec in self.labels or [])
                return f"label {clip_cell(target)} is not one of: {names} (or their synonyms)"
            return label, None
        try:
            value = float(target)
        except ValueError:
            return f"value {clip_cell(target)} is not a number"
        if not math.isfinite(value):
            return f"value {clip_cell(target)} is not finite"
        low, high = (self.value.min, self.value.max) if self.value else (None, None)
        if (low is not None and value < low) or (high is not None and value > high):
            shown = [f"{b:g}" if b is not None else "any" for b in (low, high)]
            return f"value {target} is outside the card's range [{shown[0]}, {shown[1]}]"
        return None, value

    def label(self, name: str) -> LabelSpec:
        for label in self.labels or []:
            if label.name == name:
                return label
        raise KeyError(name)

    def format_value(self, value: float) -> str:
        """The target as the answer writes it: rounded to the card's decimals."""
        decimals = self.value.decimals if self.value is not None else 2
        # Half-up on the shortest decimal form, so 0.595 reads 0.60 as a person expects
        # (binary floats would give 0.59).
        step = Decimal(1).scaleb(-decimals)
        rounded = Decimal(repr(value)).quantize(step, rounding=ROUND_HALF_UP)
        text = f"{rounded:f}"
        return text[1:] if text.startswith("-") and not rounded else text

    def content_hash(self) -> str:
        """A stable hash of the card's content, recorded in dataset manifests."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def fill(template: str, tags: Mapping[str, str], value: str | None = None) -> str:
    """Replace ``{seq}``-style placeholders by ``@tag`` and ``{value}`` by the number."""
    text = template
    for placeholder, tag in tags.items():
        text = text.replace("{" + placeholder + "}", "@" + tag)
    if value is not None:
        text = text.replace("{value}", value)
    return text


def _one_line(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error["loc"]) or "card"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - 3
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def parse_card(data: Any, origin: str) -> TaskCard:
    """Validate a mapping (or an already built card) into a TaskCard; errors name ``origin``."""
    if isinstance(data, TaskCard):
        return data
    if isinstance(data, BaseModel):
        data = data.model_dump()
    if not isinstance(data, Mapping):
        raise TaskCardError(f"{origin}: a task card is a mapping, not {type(data).__name__}")
    try:
        return TaskCard.model_validate(dict(data))
    except ValidationError as exc:
        raise TaskCardError(f"{origin}: {_one_line(exc).replace(chr(10), ' ')}") from None


def load_card_file(path: Path, require_matching_name: bool = True) -> TaskCard:
    """One card from YAML. Shipped cards are named after their file, so lookups by file work."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TaskCardError(f"{path}: cannot read the task card ({first})") from None
    card = parse_card(data, str(path))
    if require_matching_name and path.stem != card.name:
        raise TaskCardError(f"{path}: the file name must match the card name '{card.name}'")
    return card


def load_task_cards(registry: PluginRegistry | None = None) -> dict[str, TaskCard]:
    """Every card: the shipped YAML files plus those plugins register; a name used twice raises."""
    return task_cards_with_origins(registry)[0]


def task_cards_with_origins(
    registry: PluginRegistry | None = None,
) -> tuple[dict[str, TaskCard], dict[str, str]]:
    """``load_task_cards`` and where each card comes from (a shipped file or a plugin)."""
    cards: dict[str, TaskCard] = {}
    origins: dict[str, str] = {}
    for path in sorted((registry_root() / "tasks").glob("*.yaml")):
        card = load_card_file(path)
        cards[card.name] = card
        origins[card.name] = f"registry/tasks/{path.name}"
    registry = registry if registry is not None else get_registry()
    for name, entry in sorted(registry.entries[ComponentKind.TASK].items()):
        origin = f"plugin '{entry.plugin}'"
        card = parse_card(entry.factory(), f"task '{name}' from {origin}")
        if card.name != name:
            raise TaskCardError(
                f"{origin} registered task '{name}' but its card is named '{card.name}'"
            )
        if name in cards:
            raise DuplicateComponentError(
                f"task '{name}' is defined by both {origins[name]} and {origin}; rename one"
            )
        cards[name] = card
        origins[name] = origin
    return dict(sorted(cards.items())), origins


def get_task_card(name_or_path: str, registry: PluginRegistry | None = None) -> TaskCard:
    """A card by name, or from a YAML file path (a card not yet in the registry)."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} and path.is_file():
        return load_card_file(path, require_matching_name=False)
    cards = load_task_cards(registry)
    if name_or_path in cards:
        return cards[name_or_path]
    close = difflib.get_close_matches(name_or_path, list(cards), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise TaskCardError(
        f"unknown task '{name_or_path}'{hint} Give a card name ({len(cards)} known, e.g. "
        f"{', '.join(list(cards)[:3])}) or a path to a card YAML file"
    )


# ---- rendering records -------------------------------------------------------------------------


def tag_names(split: str) -> tuple[str, ...]:
    """The tag name pool of a split: ``TRAIN_TAG_NAMES`` for "train", else ``TEST_TAG_NAMES``."""
    return TRAIN_TAG_NAMES if split == "train" else TEST_TAG_NAMES


def tag_stem(tag: str) -> str:
    """A tag without its suffix: ``chr3_10450.fa`` -> ``chr3_10450``."""
    return tag.split(".", 1)[0]


def draw_tag_name(
    rng: random.Random, modality: Modality, split: str = "train", taken: Collection[str] = ()
) -> str:
    """A file-like tag (``promoter.fna``) from the split's name pool, suffixed by modality.

    DNA tags take one of ``.fna``/``.fa``/``.dna``. ``taken`` holds the tags already used
    in the record; the new tag never shares a name (suffix aside) with one of them.
    """
    used = {tag_stem(tag) for tag in taken}
    names = [name for name in tag_names(split) if name not in used]
    if not names:
        raise ValueError(f"all {len(tag_names(split))} {split} tag names are already taken")
    return rng.choice(names) + rng.choice(TAG_SUFFIX_CHOICES[modality])


class RecordMaker:
    """Renders checked rows as records, with the split's question pool and augmentations."""

    def __init__(
        self,
        card: TaskCard,
        split: str,
        rng: random.Random,
        multi_turn: float = 0.0,
        multi_sequence: float = 0.0,
    ) -> None:
        self.card, self.split, self.rng = card, split, rng
        self.pool = card.questions.train if split == "train" else card.questions.test
        self.multi_turn = multi_turn
        self.multi_sequence = multi_sequence if card.num_sequences == 1 else 0.0
        self.by_label = {label.name: label.answers for label in card.labels or []}
        self.pending: Checked | None = None

    def draw_tags(self, placeholders: Iterable[str], taken: Collection[str] = ()) -> dict[str, str]:
        """Placeholder -> a fresh tag from the split's pool, no two with the same name."""
        tags: dict[str, str] = {}
        for placeholder in placeholders:
            used = [*taken, *tags.values()]
            tags[placeholder] = draw_tag_name(self.rng, self.card.modality, self.split, used)
        return tags

    def _answer(self, label: str | None, value: float | None, tags: Mapping[str, str]) -> str:
        if value is not None:
            return fill(
                self.rng.choice(self.card.answers or []), tags, self.card.format_value(value)
            )
        return fill(self.rng.choice(self.by_label[label or ""]), tags)

    def _sequences(self, tags: Mapping[str, str], seqs: list[str]) -> list[SequenceRecord]:
        modality = self.card.modality.value
        return [
            SequenceRecord(name=tag, sequence=seq, modality=modality)
            for tag, seq in zip(tags.values(), seqs)
        ]

    def single(
        self,
        seqs: list[str],
        label: str | None,
        value: float | None,
        turns: int = 1,
        tags: Mapping[str, str] | None = None,
    ) -> InstructionRecord:
        """One sequence set; ``turns=2`` asks a second, differently worded question about it.

        ``tags`` (placeholder -> tag) names the sequences, e.g. to ask another card's
        question about a sequence already tagged; by default fresh tags are drawn.
        """
        tags = dict(tags) if tags is not None else self.draw_tags(self.card.seq_placeholders)
        questions = self.rng.sample(self.pool, turns) if turns > 1 else [self.rng.choice(self.pool)]
        conversation = [
            TurnRecord(user=fill(q, tags), assistant=self._answer(label, value, tags))
            for q in questions
        ]
        return InstructionRecord(
            task=self.card.name,
            turns=conversation,
            sequences=self._sequences(tags, seqs),
            label=label,
            value=value,
        )

    def pair(self, first: Checked, second: Checked) -> InstructionRecord:
        """Two rows in one message; the answer states both, each naming its own tag."""
        first_tags = self.draw_tags(["seq"])
        tags = [first_tags, self.draw_tags(["seq"], taken=first_tags.values())]
        q1, q2 = (fill(q, t) for q, t in zip(self.rng.sample(self.pool, 2), tags))
        user = self.rng.choice(PAIR_FRAMES[self.split]).replace("{q1}", q1).replace("{q2}", q2)
        answer = " ".join(self._answer(row[1], row[2], t) for row, t in zip((first, second), tags))
        return InstructionRecord(
            task=self.card.name,
            turns=[TurnRecord(user=user, assistant=answer)],
            sequences=[*self._sequences(tags[0], first[0]), *self._sequences(tags[1], second[0])],
            label=None,
            value=None,
        )

    def feed(self, row: Checked) -> list[InstructionRecord]:
        draw = self.rng.random()
        if draw < self.multi_sequence:
            if self.pending is None:
                self.pending = row
                return []
            first, self.pending = self.pending, None
            return [self.pair(first, row)]
        turns = 2 if draw < self.multi_sequence + self.multi_turn and len(self.pool) > 1 else 1
        return [self.single(*row, turns=turns)]

    def flush(self) -> list[InstructionRecord]:
        """A row left waiting for a partner becomes a plain single record."""
        leftover, self.pending = self.pending, None
        return [self.single(*leftover)] if leftover is not None else []

"""The stored form of one instruction example, shared by the builder, trainer and evaluator.

An instruction dataset is a Hugging Face ``datasets`` directory (Arrow, memory-mapped) with
one row per conversation and these columns:

    task       str                      task card name (uniform task sampling groups by it)
    turns      list of {user, assistant}  the conversation; tags in ``user`` name sequences
    sequences  list of {name, sequence, modality}
    label      str | None               the class label (classification tasks)
    value      float | None             the target number (regression tasks)

``record_to_example`` turns a row into the ``Example`` the model tokenizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

from chatnt_core.batching import Example
from chatnt_core.modality import Modality
from chatnt_core.prompt import SequenceInput, Turn


class TurnRecord(TypedDict):
    user: str
    assistant: str


class SequenceRecord(TypedDict):
    name: str
    sequence: str
    modality: str


class InstructionRecord(TypedDict):
    task: str
    turns: list[TurnRecord]
    sequences: list[SequenceRecord]
    label: str | None
    value: float | None


RECORD_COLUMNS = ("task", "turns", "sequences", "label", "value")


def record_to_example(record: Mapping[str, Any], with_answers: bool = True) -> Example:
    """A stored row -> Example; ``with_answers=False`` drops the last answer (a prompt)."""
    turns = [Turn(t["user"], t["assistant"]) for t in record["turns"]]
    if not with_answers:
        turns[-1] = Turn(turns[-1].user, None)
    sequences = {
        s["name"]: SequenceInput(s["name"], s["sequence"], Modality(s["modality"]))
        for s in record["sequences"]
    }
    return Example(turns, sequences)

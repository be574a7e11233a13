"""From conversations to tensors: template, tokens, K placeholders per tag, labels, padding.

Every tag occurrence becomes K copies of the decoder's placeholder id. An *occurrence*
records which sequence fills those K rows and which question (the user message it sits
in) the projection reads. Occurrences are listed in the order their placeholder rows
appear in the batch read row by row, which is the order ``masked_scatter`` fills them.

Batches are left-padded, so that generation appends to the right of every row; position
ids are computed from the mask, so padding never shifts a row's positions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from chatnt_core.config import PromptConfig
from chatnt_core.errors import PlaceholderCountError, PromptError, PromptTooLongError
from chatnt_core.interfaces import Decoder
from chatnt_core.modality import Modality
from chatnt_core.prompt import (
    BoundSequence,
    SequenceInput,
    Turn,
    bind_sequences,
    find_tags,
    rename_tags,
    replace_tags,
    tag_aliases,
)
from chatnt_core.templates import render_segments

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """A conversation and the sequences its tags name. A final turn without answer is a prompt."""

    turns: Sequence[Turn]
    sequences: Mapping[str, SequenceInput] = field(default_factory=dict)


@dataclass(frozen=True)
class Occurrence:
    tag: str
    turn: int  # index of the user message holding the tag


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX outside answers
    occurrences: list[Occurrence]
    questions: list[list[int]]  # per turn: the user message, tags as one placeholder id
    sequences: dict[str, BoundSequence]
    user_names: dict[str, str] = field(default_factory=dict)  # alias -> the user's tag name


@dataclass
class ModelBatch:
    """A padded batch. O = tag occurrences in the batch, U_m = unique sequences of modality m."""

    input_ids: torch.Tensor  # (B, T) long, left-padded
    attention_mask: torch.Tensor  # (B, T) bool
    labels: torch.Tensor  # (B, T) long, IGNORE_INDEX at prompt and padding
    sequences: dict[Modality, list[str]]  # U_m unique sequences per modality
    occurrence_modality: list[Modality]  # (O,)
    occurrence_sequence: list[int]  # (O,) index into sequences[modality]
    occurrence_question: list[int]  # (O,) row of question_ids
    question_ids: torch.Tensor  # (Qn, Q) long, right-padded
    question_mask: torch.Tensor  # (Qn, Q) bool
    user_names: list[dict[str, str]] = field(default_factory=list)  # (B,) alias -> tag name

    def to(self, device: torch.device | str) -> ModelBatch:
        return ModelBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.labels.to(device),
            self.sequences,
            self.occurrence_modality,
            self.occurrence_sequence,
            self.occurrence_question,
            self.question_ids.to(device),
            self.question_mask.to(device),
            self.user_names,
        )

    @property
    def num_occurrences(self) -> int:
        return len(self.occurrence_modality)


def tokenize_example(
    example: Example,
    decoder: Decoder,
    prompt: PromptConfig,
    num_latents: int,
    modalities: Iterable[Modality],
    require_all_used: bool = True,
) -> TokenizedExample:
    """Check the example's tags and sequences, render the template and tokenize it."""
    if not example.turns:
        raise PromptError("a conversation needs at least one user message")
    bound = bind_sequences(example.turns, example.sequences, modalities, require_all_used)
    marker = decoder.placeholder_token
    occurrences: list[Occurrence] = []
    turns: list[Turn] = []
    questions: list[list[int]] = []  # the projection's view: tags as one placeholder, no names
    keep_names = prompt.tag_names in ("keep", "alias")
    aliases = tag_aliases(t.user for t in example.turns) if prompt.tag_names == "alias" else {}
    for index, turn in enumerate(example.turns):
        if marker in turn.user:
            raise PromptError(
                f"message {index + 1} contains the reserved placeholder text '{marker}'; "
                "refer to sequences with @tags instead"
            )
        occurrences += [Occurrence(tag, index) for tag in find_tags(turn.user)]
        user = replace_tags(rename_tags(turn.user, aliases), marker, keep_names)
        answer = None if turn.assistant is None else rename_tags(turn.assistant, aliases)
        turns.append(Turn(user, answer))
        questions.append(decoder.tokenize(replace_tags(turn.user, marker)))

    ids: list[int] = []
    labels: list[int] = []
    prompt_ends: list[int] = []  # len(ids) after each user message's segment
    for i, segment in enumerate(render_segments(turns, prompt, decoder)):
        piece = decoder.tokenize(segment.text, add_bos=(i == 0))
        if segment.append_eos:
            piece.append(decoder.eos_token_id)
        ids += piece
        labels += piece if segment.is_answer else [IGNORE_INDEX] * len(piece)
        if not segment.is_answer:
            prompt_ends.append(len(ids))
    if prompt.question_scope == "whole_prompt":
        # the published ChatNT's Perceiver reads the whole templated prompt (tags as one
        # placeholder id each), not only the user's message
        questions = [ids[:end] for end in prompt_ends[: len(questions)]]

    placeholder = decoder.placeholder_token_id
    found = ids.count(placeholder)
    if found != len(occurrences):
        raise PlaceholderCountError(
            f"the rendered prompt holds {found} placeholder tokens for {len(occurrences)} tags; "
            f"the system prompt or template must not contain '{marker}'"
        )
    expanded_ids: list[int] = []
    expanded_labels: list[int] = []
    # 'insert_before_kept': K rows for the vectors, then the placeholder itself stays
    per_tag = num_latents + (1 if prompt.placeholder_layout == "insert_before_kept" else 0)
    for token, label in zip(ids, labels):
        repeat = per_tag if token == placeholder else 1
        expanded_ids += [token] * repeat
        expanded_labels += [label if token != placeholder else IGNORE_INDEX] * repeat

    if len(expanded_ids) > decoder.max_context:
        tag_tokens = len(occurrences) * num_latents
        text_tokens = len(expanded_ids) - tag_tokens
        cause = (
            "shorten the question or the conversation (start a new one)"
            if text_tokens >= tag_tokens
            else "use fewer tags or turns, or a smaller num_latents"
        )
        raise PromptTooLongError(
            f"the prompt needs {len(expanded_ids)} decoder tokens ({text_tokens} of text, "
            f"{len(occurrences)} tags x K={num_latents}) but the decoder holds "
            f"{decoder.max_context}; {cause}"
        )
    user_names = {alias: tag for tag, alias in aliases.items()}
    return TokenizedExample(
        expanded_ids, expanded_labels, occurrences, questions, bound, user_names
    )


def collate(examples: Sequence[TokenizedExample], pad_token_id: int) -> ModelBatch:
    """Left-pad the prompts, right-pad the questions, and index the sequences."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.bool)

    sequences: dict[Modality, list[str]] = {}
    sequence_index: dict[tuple[Modality, str], int] = {}
    occurrence_modality: list[Modality] = []
    occurrence_sequence: list[int] = []
    occurrence_question: list[int] = []
    question_rows: list[list[int]] = []

    for row, example in enumerate(examples):
        start = width - len(example.input_ids)
        input_ids[row, start:] = torch.tensor(example.input_ids)
        labels[row, start:] = torch.tensor(example.labels)
        attention_mask[row, start:] = True
        question_offset = len(question_rows)
        question_rows += [q or [pad_token_id] for q in example.questions]
        for occurrence in example.occurrences:
            bound = example.sequences[occurrence.tag]
            key = (bound.modality, bound.sequence)
            if key not in sequence_index:
                unique = sequences.setdefault(bound.modality, [])
                sequence_index[key] = len(unique)
                unique.append(bound.sequence)
            occurrence_modality.append(bound.modality)
            occurrence_sequence.append(sequence_index[key])
            occurrence_question.append(question_offset + occurrence.turn)

    q_width = max(len(q) for q in question_rows)
    question_ids = torch.full((len(question_rows), q_width), pad_token_id, dtype=torch.long)
    question_mask = torch.zeros((len(question_rows), q_width), dtype=torch.bool)
    for row, question in enumerate(question_rows):
        question_ids[row, : len(question)] = torch.tensor(question)
        question_mask[row, : len(question)] = True

    return ModelBatch(
        input_ids,
        attention_mask,
        labels,
        sequences,
        occurrence_modality,
        occurrence_sequence,
        occurrence_question,
        question_ids,
        question_mask,
        [example.user_names for example in examples],
    )


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool -> (B, T) positions counting real tokens only (0 at left padding)."""
    return (mask.long().cumsum(dim=-1) - 1).clamp(min=0)

"""What a user notices beyond task metrics: tag names, English, long chats, P(yes) vs words.

Four checks on a trained ``ChatNT``, each returning plain numbers the quickstart prints:

* ``tag_invariance`` - the same sequences asked under several tag names (names never seen
  in training): does the label stay, does P(yes) move, does each answer name the tag the
  user wrote and no other?
* ``english_kept`` - a message with no tag must get exactly the frozen decoder's own greedy
  answer (nothing of the sequence machinery may leak into plain English turns).
* ``long_chat`` - conversations of six turns about two sequences: does the sixth answer
  parse (and agree with the first, which asks the same question) as the first does?
* ``probability_agreement`` - does P(yes) > 0.5 agree with the generated yes/no?
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from chatnt_core.prompt import find_tags, replace_tags

if TYPE_CHECKING:
    from chatnt_core.api import ChatNT
    from chatnt_core.evaluation.evaluate import TaskEvaluation


@dataclass(frozen=True)
class TagInvariance:
    sequences: int
    names: tuple[str, ...]
    same_label: float  # share of sequences whose parsed label is the same under every name
    probability_within: float  # share of sequences whose P(yes) spread is <= tolerance
    max_spread: float  # largest P(yes) spread over names
    names_own_tag: float  # share of answers that name the user's tag and no other


def tag_invariance(
    bot: ChatNT,
    questions: Sequence[str],
    sequences: Sequence[str],
    names: Sequence[str],
    task: str,
    tolerance: float = 0.1,
    batch_size: int = 32,
    max_new_tokens: int = 48,
) -> TagInvariance:
    """Ask ``questions[i]`` (one tag) about ``sequences[i]`` under every tag name."""
    prompts: list[str] = []
    bindings: list[dict[str, str]] = []
    for question, sequence in zip(questions, sequences):
        for name in names:
            prompts.append(replace_tags(question, "@" + name))
            bindings.append({name: sequence})
    answers = []
    for start in range(0, len(prompts), batch_size):
        answers += bot.ask_batch(
            prompts[start : start + batch_size],
            bindings[start : start + batch_size],
            task=task,
            max_new_tokens=max_new_tokens,
        )
    width = len(names)
    same = within = 0
    spread_max = 0.0
    own = 0
    for i in range(len(questions)):
        group = answers[i * width : (i + 1) * width]
        labels = {a.label for a in group}
        same += int(len(labels) == 1 and None not in labels)
        probs = [a.probability for a in group if a.probability is not None]
        spread = max(probs) - min(probs) if len(probs) == width else 1.0
        within += int(spread <= tolerance)
        spread_max = max(spread_max, spread)
        for name, answer in zip(names, group):
            own += int(set(find_tags(answer.text)) == {name})
    n = max(len(questions), 1)
    return TagInvariance(
        len(questions), tuple(names), same / n, within / n, spread_max, own / max(len(answers), 1)
    )


@dataclass(frozen=True)
class EnglishKept:
    question: str
    ours: str
    bare: str

    @property
    def identical(self) -> bool:
        return self.ours == self.bare


def english_kept(bot: ChatNT, question: str, max_new_tokens: int = 128) -> EnglishKept:
    """Our answer to a tag-free message vs the bare decoder's greedy ``generate`` on the
    same chat-templated prompt (Hugging Face decoders: ``decoder.model``/``tokenizer``)."""
    import torch

    from chatnt_core.prompt import Turn
    from chatnt_core.templates import render_segments

    model = bot.model
    ours = bot.generate([question], [{}], max_new_tokens=max_new_tokens)[0]
    decoder: Any = model.decoder
    prompt = "".join(
        s.text for s in render_segments([Turn(question)], model.config.prompt, decoder)
    )
    ids = torch.tensor([decoder.tokenize(prompt, add_bos=True)], device=model.device)
    # LoRA adapters (peft) are switched off outright for the bare answer
    disable = getattr(decoder.model, "disable_adapter", None)
    with torch.no_grad(), disable() if callable(disable) else contextlib.nullcontext():
        out = decoder.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=decoder.eos_token_id,
            pad_token_id=decoder.pad_token_id,
        )
    bare = decoder.detokenize(out[0, ids.shape[1] :].tolist()).strip()
    return EnglishKept(question, ours, bare)


@dataclass(frozen=True)
class LongChat:
    conversations: int
    first_parseable: float  # share of conversations whose turn 1 parses
    last_parseable: float  # share whose turn 6 parses
    last_agrees: float  # share whose turn 6 label equals turn 1's (the same question)
    transcript: list[tuple[str, str]]  # the first conversation, for showing


def long_chat(
    bot: ChatNT,
    pairs: Sequence[tuple[str, str]],
    script: Sequence[tuple[str, str]],
    names: tuple[str, str],
    max_new_tokens: int = 48,
) -> LongChat:
    """Run ``script`` (question with ``{a}``/``{b}``, task) over each pair of sequences.

    The last question of the script must repeat the first, so their answers can be
    compared; every answer is parsed with its task's card.
    """
    first_ok = last_ok = agree = 0
    transcript: list[tuple[str, str]] = []
    tags = {"a": "@" + names[0], "b": "@" + names[1]}
    for k, (seq_a, seq_b) in enumerate(pairs):
        chat = bot.chat(max_new_tokens=max_new_tokens)
        bound: dict[str, str] = {names[0]: seq_a, names[1]: seq_b}
        answers = []
        for template, task in script:
            message = template.format(**tags)
            used = {n: s for n, s in bound.items() if "@" + n in message}
            fresh = {n: s for n, s in used.items() if n not in chat.sequences}
            answer = chat.ask(message, fresh or None, task=task)
            answers.append(answer)
            if k == 0:
                transcript.append((message, answer.text))
        first, last = answers[0], answers[-1]
        first_ok += int(first.parseable)
        last_ok += int(last.parseable)
        agree += int(last.parseable and first.parseable and last.label == first.label)
    n = max(len(pairs), 1)
    return LongChat(len(pairs), first_ok / n, last_ok / n, agree / n, transcript)


def probability_agreement(evaluation: TaskEvaluation) -> float | None:
    """Share of parseable binary answers whose label agrees with P(positive) > 0.5."""
    probs = evaluation.probabilities
    positive = evaluation.positive
    if probs is None or positive is None:
        return None
    hits = total = 0
    for parsed, p in zip(evaluation.parsed, probs):
        if not parsed.parseable or not np.isfinite(p):
            continue
        total += 1
        hits += int((parsed.label == positive) == (p > 0.5))
    return hits / total if total else None

"""Chat templates: a conversation becomes text segments, each marked prompt or answer.

Keeping answers as separate segments is what lets the trainer put the loss on answer
tokens only, and lets generation stop the prompt exactly where an answer would start.

* ``vicuna`` - the paper's format: ``{system} USER: {q} ASSISTANT: {a}</s>USER: ...``
  (the end-of-sequence id is appended after each answer by the tokenizer step).
* ``native`` - the decoder tokenizer's own chat template, rendered incrementally: the text
  added by each message is its segment. Templates whose earlier text changes when a
  message is added cannot be split this way and are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chatnt_core.config import PromptConfig
from chatnt_core.errors import ConfigError
from chatnt_core.interfaces import Decoder
from chatnt_core.prompt import Turn


@dataclass(frozen=True)
class Segment:
    text: str
    is_answer: bool
    append_eos: bool = False  # the vicuna format ends each answer with the EOS id


def _vicuna_segments(turns: Sequence[Turn], system_prompt: str) -> list[Segment]:
    segments: list[Segment] = []
    for i, turn in enumerate(turns):
        lead = f"{system_prompt} " if i == 0 and system_prompt else ""
        segments.append(Segment(f"{lead}USER: {turn.user} ASSISTANT:", is_answer=False))
        if turn.assistant is not None:
            segments.append(Segment(f" {turn.assistant}", is_answer=True, append_eos=True))
    return segments


def _native_segments(turns: Sequence[Turn], system_prompt: str, decoder: Decoder) -> list[Segment]:
    messages: list[dict[str, str]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    segments: list[Segment] = []
    rendered = ""
    for turn in turns:
        messages.append({"role": "user", "content": turn.user})
        with_prompt = decoder.native_chat_template(messages, add_generation_prompt=True)
        segments.append(Segment(_increment(rendered, with_prompt), is_answer=False))
        rendered = with_prompt
        if turn.assistant is not None:
            messages.append({"role": "assistant", "content": turn.assistant})
            full = decoder.native_chat_template(messages, add_generation_prompt=False)
            segments.append(Segment(_increment(rendered, full), is_answer=True))
            rendered = full
    return segments


def _increment(before: str, after: str) -> str:
    if not after.startswith(before):
        raise ConfigError(
            "the decoder's chat template rewrites earlier messages, so answers cannot be "
            "located; set 'prompt.template: vicuna' in the config"
        )
    return after[len(before) :]


def render_segments(turns: Sequence[Turn], prompt: PromptConfig, decoder: Decoder) -> list[Segment]:
    """The conversation as ordered segments; a trailing turn without answer ends on a prompt."""
    if prompt.template == "vicuna":
        return _vicuna_segments(turns, prompt.system_prompt)
    return _native_segments(turns, prompt.system_prompt, decoder)

"""Multi-turn conversations in which every sequence is encoded once.

A ``ChatSession`` keeps the turns so far, the sequences bound to tags, and an encoding
cache. Each new message re-renders the conversation for the decoder, but sequences met
before are taken from the cache, never re-encoded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from chatnt_core.batching import Example
from chatnt_core.errors import PromptError, UnusedSequenceError
from chatnt_core.inference.drafting import batch_references
from chatnt_core.inference.encoding_cache import EncodingCache
from chatnt_core.inference.generation import GenerationConfig, generate_ids
from chatnt_core.model import ChatNTModel
from chatnt_core.prompt import SequenceInput, Turn, as_sequence_inputs, find_tags

if TYPE_CHECKING:
    from chatnt_core.data.tasks import TaskCard


class ChatSession:
    def __init__(self, model: ChatNTModel, generation: GenerationConfig | None = None) -> None:
        self.model = model.eval()
        self.generation = generation or GenerationConfig()
        self.turns: list[Turn] = []
        self.sequences: dict[str, SequenceInput] = {}
        self.cache = EncodingCache()

    def ask(
        self,
        message: str,
        sequences: Mapping[str, str | SequenceInput] | None = None,
        card: TaskCard | None = None,
    ) -> str:
        """Answer ``message``; ``sequences`` binds tags first used in it. ``card``, the
        task the message asks about, lends its answer phrasings to greedy decoding as
        guesses to check (``chatnt_core.inference.drafting``): faster, never different."""
        new = as_sequence_inputs(sequences or {})
        for name, record in new.items():
            known = self.sequences.get(name)
            if known is not None and known.sequence != record.sequence:
                raise PromptError(
                    f"@{name} already names another sequence in this conversation; "
                    "give the new one a different name"
                )
        tags = set(find_tags(message))
        unused = [name for name in new if name not in tags]
        if unused:
            raise UnusedSequenceError(
                f"sequence '{unused[0]}' is not referenced in this message: add @{unused[0]} "
                "or drop the sequence"
            )
        example = Example([*self.turns, Turn(message)], {**self.sequences, **new})
        batch = self.model.tokenize([example], require_all_used=False).to(self.model.device)
        tokenize = self.model.decoder.tokenize
        references = batch_references(batch, [message], [card], tokenize)
        ids = generate_ids(self.model, batch, self.generation, self.cache, references=references)[0]
        answer = self.model.answer_texts(batch, [ids])[0].strip()
        self.turns.append(Turn(message, answer))
        self.sequences.update(new)
        return answer

    def reset(self) -> None:
        """Forget the turns; keep the encodings (the weights have not changed)."""
        self.turns.clear()
        self.sequences.clear()

    @property
    def cache_size(self) -> int:
        return len(self.cache)

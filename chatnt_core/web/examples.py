"""Example sequences and questions, one click away in the page.

A first-time user has no sequence at hand and does not know what the model was trained
to answer. The examples come from the built-in demo tasks (``chatnt_core.data.demo``):
sequences drawn by the same seeded generator the training data came from, and each demo
card's first question with the example's tag in place of ``{seq}``, so a click gives a
question the card recognises (a parsed label and, for yes/no, a probability).
"""

from __future__ import annotations

from dataclasses import dataclass

from chatnt_core.data.demo import DemoGenerator, demo_cards
from chatnt_core.data.tasks import fill

EXAMPLE_SEED = 2024


@dataclass(frozen=True)
class ExampleSequence:
    tag: str
    sequence: str
    note: str  # what was planted, so the user can judge the answer


def example_sequences(seed: int = EXAMPLE_SEED) -> list[ExampleSequence]:
    """A CTCF-positive and a CTCF-negative sequence, and one carrying REST sites."""
    generator = DemoGenerator(seed)
    found: dict[str, ExampleSequence] = {}
    while len(found) < 3:
        ctcf = generator.ctcf_site()
        key = "ctcf.fna" if ctcf.label == "ctcf_site" else "no_ctcf.fna"
        if key not in found:
            planted = ", ".join(s.factor for s in ctcf.sites) or "no site"
            found[key] = ExampleSequence(key, ctcf.sequence, f"planted: {planted}")
        rest = generator.motif_count()
        if "rest.fna" not in found and rest.value:
            found["rest.fna"] = ExampleSequence(
                "rest.fna", rest.sequence, f"planted: {rest.value:g} REST site(s)"
            )
    return [found[k] for k in ("ctcf.fna", "no_ctcf.fna", "rest.fna")]


def example_questions() -> list[str]:
    """One question per demo task, about the first example sequence."""
    questions = []
    tags = {"demo-motif-count": "rest.fna"}
    for name, card in demo_cards().items():
        template = card.questions.train[0]
        questions.append(fill(template, {"seq": tags.get(name, "ctcf.fna")}))
    return questions


def example_fasta(seed: int = EXAMPLE_SEED) -> str:
    """The example sequences as FASTA text (for the batch tab's example)."""
    return "".join(f">{e.tag} {e.note}\n{e.sequence}\n" for e in example_sequences(seed))

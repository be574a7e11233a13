"""Built-in demo tasks: synthetic sequences with real transcription-factor binding sites.

The demo gives ``chatnt`` something to train and evaluate on without downloading anything.
Sequences are random background DNA with sites planted in them; each site is sampled
column by column from a JASPAR 2024 count matrix (counts plus a pseudocount), so the
sites vary the way real binding sites do rather than repeating one consensus string.
The matrices ship in ``motifs.json`` with their IDs, versions and the CC BY 4.0
attribution JASPAR asks for.

Four tasks, each with a card under ``registry/tasks`` (``demo-`` prefix): is a CTCF site
present (binary, with decoy sites of other factors in half of the negatives so "any motif"
is not enough), which factor's site was planted (one of six), the GC content, and how many
REST sites there are (0-3). Everything is drawn from seeded generators, so a seed always
gives the same dataset.

Each record names its sequence with a file-like tag drawn from its split's pool
(``chatnt_core.data.tasks.TRAIN_TAG_NAMES`` / ``TEST_TAG_NAMES``), so answers learn to
name the tag the user wrote. A small share of training records go on with a general
question that names no sequence (``GENERAL_QUESTIONS``), answered in plain English.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from chatnt_core.data.builder import (
    MANIFEST_FORMAT,
    DataError,
    RecordMaker,
    prepare_output,
    publish,
    write_records,
)
from chatnt_core.data.records import InstructionRecord, TurnRecord
from chatnt_core.data.tasks import TaskCard, load_card_file
from chatnt_core.presets import registry_root

DEMO_TASKS = ("demo-ctcf-site", "demo-tf-site", "demo-gc-content", "demo-motif-count")
FACTORS = ("CTCF", "TBP", "GATA1", "SP1", "NRF1", "REST")  # demo-tf-site label order
SEQUENCE_LENGTH = 200
PSEUDOCOUNT = 0.5  # per base and column, so no base is ever impossible
_BASES = np.array(list("ACGT"))
_COMPLEMENT = str.maketrans("ACGT", "TGCA")


@dataclass(frozen=True)
class Motif:
    """A JASPAR count matrix (4 x length, rows A, C, G, T) and what it is called."""

    matrix_id: str
    name: str
    counts: np.ndarray

    @property
    def length(self) -> int:
        return int(self.counts.shape[1])

    @property
    def probabilities(self) -> np.ndarray:
        padded = self.counts + PSEUDOCOUNT
        return padded / padded.sum(axis=0, keepdims=True)

    def sample(self, rng: np.random.Generator) -> str:
        """One site on the motif's own strand: each column drawn from its base frequencies."""
        cumulative = self.probabilities.cumsum(axis=0)  # (4, L)
        draws = rng.random(self.length)
        index = (draws[None, :] > cumulative).sum(axis=0).clip(0, 3)
        return "".join(_BASES[index])

    def score(self, site: str) -> float:
        """Log-odds (base 2) of ``site`` against a uniform background, motif strand."""
        rows = ["ACGT".index(b) for b in site.upper()]
        return float(sum(math.log2(self.probabilities[r, i] / 0.25) for i, r in enumerate(rows)))


@dataclass(frozen=True)
class MotifSet:
    motifs: dict[str, Motif]  # by upper-case factor name
    attribution: str
    notice: str
    release: str


def load_motifs() -> MotifSet:
    """The shipped JASPAR matrices with their attribution (kept together on purpose)."""
    text = (resources.files("chatnt_core.data") / "motifs.json").read_text(encoding="utf-8")
    data = json.loads(text)
    motifs = {
        entry["name"].upper(): Motif(
            entry["matrix_id"],
            entry["name"].upper(),
            np.array([entry["counts"][base] for base in "ACGT"], dtype=float),
        )
        for entry in data["motifs"]
    }
    return MotifSet(motifs, data["attribution"], data["NOTICE"], data["release"])


def reverse_complement(sequence: str) -> str:
    return sequence.translate(_COMPLEMENT)[::-1]


@dataclass(frozen=True)
class PlantedSite:
    factor: str
    start: int  # 0-based
    strand: str  # "+" motif strand, "-" reverse complement
    site: str  # as written into the sequence


@dataclass
class DemoExample:
    task: str
    sequence: str
    label: str | None = None
    value: float | None = None
    sites: list[PlantedSite] = field(default_factory=list)


class DemoGenerator:
    """Draws demo examples from one seeded numpy generator."""

    def __init__(self, seed: int, motifs: MotifSet | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.motifs = motifs or load_motifs()

    def background(self, gc: float) -> list[str]:
        probabilities = [(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2]
        return list(_BASES[self.rng.choice(4, size=SEQUENCE_LENGTH, p=probabilities)])

    def plant(self, bases: list[str], factors: list[str]) -> list[PlantedSite]:
        """Write one sampled site per factor at random, non-overlapping positions."""
        taken: list[tuple[int, int]] = []
        planted = []
        for factor in factors:
            motif = self.motifs.motifs[factor]
            for _ in range(1000):
                start = int(self.rng.integers(0, SEQUENCE_LENGTH - motif.length + 1))
                end = start + motif.length
                if all(end <= s or start >= e for s, e in taken):
                    break
            else:  # pragma: no cover - 200 bp always holds a few sites
                raise DataError(f"no room left for a {factor} site")
            site = motif.sample(self.rng)
            strand = "+" if self.rng.random() < 0.5 else "-"
            written = site if strand == "+" else reverse_complement(site)
            bases[start:end] = list(written)
            taken.append((start, end))
            planted.append(PlantedSite(factor, start, strand, written))
        return planted

    def _example(self, task: str, factors: list[str], gc: float | None = None) -> DemoExample:
        bases = self.background(gc if gc is not None else float(self.rng.uniform(0.4, 0.6)))
        sites = self.plant(bases, factors)
        return DemoExample(task, "".join(bases), sites=sites)

    def ctcf_site(self) -> DemoExample:
        positive = self.rng.random() < 0.5
        others = [f for f in FACTORS if f != "CTCF"]
        decoy = [others[int(self.rng.integers(len(others)))]] if self.rng.random() < 0.5 else []
        example = self._example("demo-ctcf-site", ["CTCF"] if positive else decoy)
        example.label = "ctcf_site" if positive else "no_ctcf_site"
        return example

    def tf_site(self) -> DemoExample:
        factor = FACTORS[int(self.rng.integers(len(FACTORS)))]
        example = self._example("demo-tf-site", [factor])
        example.label = factor
        return example

    def gc_content(self) -> DemoExample:
        factor = FACTORS[int(self.rng.integers(len(FACTORS)))]
        example = self._example("demo-gc-content", [factor], gc=float(self.rng.uniform(0.3, 0.7)))
        seq = example.sequence
        example.value = (seq.count("G") + seq.count("C")) / len(seq)
        return example

    def motif_count(self) -> DemoExample:
        count = int(self.rng.integers(0, 4))
        example = self._example("demo-motif-count", ["REST"] * count)
        example.value = float(count)
        return example

    def draw(self, task: str) -> DemoExample:
        makers = {
            "demo-ctcf-site": self.ctcf_site,
            "demo-tf-site": self.tf_site,
            "demo-gc-content": self.gc_content,
            "demo-motif-count": self.motif_count,
        }
        return makers[task]()


def demo_cards() -> dict[str, TaskCard]:
    """The demo cards straight from their YAML files (no plugin discovery needed)."""
    return {name: load_card_file(registry_root() / "tasks" / f"{name}.yaml") for name in DEMO_TASKS}


FOLLOW_UP_RATE = 0.25  # share of training records that get a second turn about the sequence
GENERAL_TURN_RATE = 0.05  # share of training records whose second turn is a general question
# General questions that name no sequence, with a short correct answer each. A training
# record may follow its sequence turn with one of them (optionally opened by a thank-you),
# so the model learns that a turn without a tag is answered as ordinary English.
GENERAL_QUESTIONS: tuple[tuple[str, str], ...] = (
    (
        "What is a promoter?",
        "A promoter is a DNA region, usually just upstream of a gene's transcription start "
        "site, where RNA polymerase and its helper proteins assemble to start transcription.",
    ),
    (
        "What does CTCF do?",
        "CTCF is a zinc-finger DNA-binding protein that acts as an insulator and, together "
        "with cohesin, anchors the chromatin loops that organise the genome in 3D.",
    ),
    (
        "What is a transcription factor?",
        "A transcription factor is a protein that binds specific short DNA sequences and "
        "turns the transcription of nearby genes up or down.",
    ),
    (
        "What is an enhancer?",
        "An enhancer is a DNA region bound by transcription factors that increases the "
        "transcription of a gene, sometimes from many kilobases away.",
    ),
    (
        "What does GC content mean?",
        "GC content is the fraction of bases in a DNA or RNA sequence that are guanine (G) "
        "or cytosine (C).",
    ),
    (
        "What is a binding motif?",
        "A binding motif is the short sequence pattern, often summarised as a position "
        "weight matrix, that a DNA-binding protein recognises.",
    ),
    (
        "What is JASPAR?",
        "JASPAR is an open-access database of curated transcription factor binding "
        "profiles, stored as position frequency matrices.",
    ),
    (
        "What does REST do?",
        "REST (also called NRSF) is a transcriptional repressor that binds the RE1 element "
        "and silences neuronal genes in non-neuronal cells.",
    ),
    (
        "What is the TATA box?",
        "The TATA box is a T/A-rich core promoter element about 25-30 bp upstream of the "
        "transcription start site, bound by the TATA-binding protein TBP.",
    ),
    (
        "What is the reverse complement of a DNA sequence?",
        "It is the sequence of the opposite strand read 5' to 3': reverse the sequence and "
        "swap A with T and C with G.",
    ),
    (
        "Which bases pair with each other in DNA?",
        "In DNA, adenine pairs with thymine and guanine pairs with cytosine.",
    ),
    (
        "What is the difference between DNA and RNA?",
        "RNA uses the sugar ribose instead of deoxyribose and uracil instead of thymine, "
        "and it is usually single-stranded.",
    ),
    (
        "What is a FASTA file?",
        "A FASTA file is a text format for sequences: each record has a header line "
        "starting with '>' followed by lines of sequence letters.",
    ),
    (
        "What is ChIP-seq?",
        "ChIP-seq maps where a protein binds the genome by immunoprecipitating the protein "
        "with its bound DNA and sequencing that DNA.",
    ),
    (
        "What is a splice site?",
        "A splice site is the boundary between an exon and an intron; most introns start "
        "with GT (donor) and end with AG (acceptor).",
    ),
    (
        "What is a CpG island?",
        "A CpG island is a stretch of DNA, often a few hundred to a few thousand base pairs "
        "long, with high GC content and many CpG dinucleotides, common at promoters.",
    ),
    (
        "What does GATA1 regulate?",
        "GATA1 is a transcription factor that drives the development of red blood cells "
        "and megakaryocytes.",
    ),
    (
        "What is a position weight matrix?",
        "A position weight matrix scores each base at each position of a motif, usually "
        "as log-odds against a background, so a candidate site can be scored by summing.",
    ),
    (
        "How long is the human genome?",
        "The haploid human genome is about 3.1 billion base pairs long.",
    ),
    (
        "What is a codon?",
        "A codon is a group of three nucleotides in messenger RNA that specifies one amino "
        "acid or a stop signal during translation.",
    ),
    (
        "What is a nucleosome?",
        "A nucleosome is about 147 bp of DNA wrapped around a core of eight histone "
        "proteins, the basic unit of chromatin.",
    ),
)
GENERAL_OPENERS = ("", "", "Thanks! ", "Thank you. ", "OK. ", "One more thing: ")


def follow_up_target(example: DemoExample, task: str) -> tuple[str | None, float | None] | None:
    """The answer to ``task`` asked of ``example``'s sequence, or None if it has none."""
    factors = [site.factor for site in example.sites]
    if task == "demo-gc-content":
        seq = example.sequence
        return None, (seq.count("G") + seq.count("C")) / len(seq)
    if task == "demo-motif-count":
        return (None, float(factors.count("REST"))) if factors.count("REST") <= 3 else None
    if task == "demo-ctcf-site":
        return ("ctcf_site" if "CTCF" in factors else "no_ctcf_site"), None
    if task == "demo-tf-site" and len(factors) == 1:
        return factors[0], None
    return None


def general_turn(rng: random.Random) -> TurnRecord:
    """A general question naming no sequence, with its shipped answer."""
    question, answer = rng.choice(GENERAL_QUESTIONS)
    return TurnRecord(user=rng.choice(GENERAL_OPENERS) + question, assistant=answer)


def demo_records(split: str, size_per_task: int, seed: int) -> list[InstructionRecord]:
    """``size_per_task`` examples of every demo task, rendered and shuffled together.

    In the training split a quarter of the records go on with a second turn that asks
    another demo task's question about the same sequence, under the same tag, so the model
    also learns to answer follow-ups in a conversation (``chatnt chat``); another
    ``GENERAL_TURN_RATE`` go on with a general question naming no sequence. Either way the
    record keeps the task, label and value of its first turn. Test records keep one turn.
    The validation split (for calibration) holds new sequences asked about with training
    phrasings and tag names, one turn each: what the model was trained on, minus the
    sequences, so a calibrator fitted there sees the confidence of unseen sequences.
    """
    split_index = {"train": 0, "test": 1, "validation": 2}[split]
    generator = DemoGenerator(seed * 2 + split_index if split_index < 2 else seed * 2 + 10**6)
    text_rng = random.Random(f"demo:{seed}:{split}")
    cards = demo_cards()
    pools = "test" if split == "test" else "train"  # validation: training phrasings and tags
    makers = {name: RecordMaker(card, pools, text_rng) for name, card in cards.items()}
    records: list[InstructionRecord] = []
    for name in cards:
        for _ in range(size_per_task):
            example = generator.draw(name)
            record = makers[name].single([example.sequence], example.label, example.value)
            draw = text_rng.random() if split == "train" else 1.0
            if draw < FOLLOW_UP_RATE:
                other = text_rng.choice([task for task in cards if task != name])
                target = follow_up_target(example, other)
                if target is not None:
                    tags = {"seq": record["sequences"][0]["name"]}
                    second = makers[other].single([example.sequence], *target, tags=tags)
                    record["turns"].append(second["turns"][0])
            elif draw < FOLLOW_UP_RATE + GENERAL_TURN_RATE:
                record["turns"].append(general_turn(text_rng))
            records.append(record)
    text_rng.shuffle(records)
    return records


def write_demo(
    out: Path,
    train_size: int = 1000,
    test_size: int = 200,
    seed: int = 0,
    overwrite: bool = False,
    validation_size: int | None = None,
) -> dict[str, Any]:
    """Write ``out/train``, ``out/test``, ``out/validation`` (``validation_size`` per task,
    default ``test_size``) and ``out/manifest.json``; returns the manifest."""
    validation_size = test_size if validation_size is None else validation_size
    if train_size < 1 or test_size < 1 or validation_size < 1:
        raise DataError("--train-size and --test-size must be at least 1")
    workdir = prepare_output(out, overwrite)
    sizes = {"train": train_size, "test": test_size, "validation": validation_size}
    try:
        for split, size in sizes.items():
            write_records(demo_records(split, size, seed), workdir / split, split)
        publish(workdir, out)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    motifs = load_motifs()
    manifest = {
        "format": MANIFEST_FORMAT,
        "task": "demo",
        "tasks": {name: card.content_hash() for name, card in demo_cards().items()},
        "seed": seed,
        "splits": {split: {"records": size * len(DEMO_TASKS)} for split, size in sizes.items()},
        "motifs": {
            "release": motifs.release,
            "matrix_ids": {name: motif.matrix_id for name, motif in motifs.motifs.items()},
            "attribution": motifs.attribution,
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest

"""Read the label or the number out of a free-text answer, using the task's card.

ChatNT answers in English, so every metric starts by turning a sentence back into a
class or a value. The card says what the sentence may look like (each label's answer
templates and spellings, the regression templates and value range); this module uses
nothing else, so a plugin's task is parsed exactly like a shipped one.

The rules, in order, and why:

* Tags (``@seq.fna``) are replaced by ``{seq}`` first, so a digit in a tag name never
  counts as a number and an answer that restates a template with its own tag matches it.
* A hedge ("not sure", "I don't know", "maybe") is unparseable: a shrug must not be
  scored as a guess.
* Classification: an answer that contains one label's answer template (punctuation and
  case ignored) is that label; templates of two labels at once is ambiguous. Otherwise
  label names and synonyms are looked for as whole words. A mention counts against its
  label when a negation ("no", "not", "n't", "neither", ...) sits in the same clause
  (clauses end at punctuation and at "but", "rather", ...), so "No, there is no CTCF
  site" is negative and "not a strong enhancer, but a weak one" is weak.
  Binary cards also read a leading yes/no ("Yes, ..." / "No, ..."), which decides.
  Multi-label cards need exactly one label left standing; a bare leading "No" falls back
  to the one label whose answers start with "No" (e.g. ``non_enhancer``), if there is one.
* Regression: the first number after a card template's prefix ("The GC content of
  {seq} is"), else the first number in the answer. Signs, decimals and scientific
  notation (``1.5e-3``, ``1.5 x 10^-3``) are read, and "zero" to "twelve" right after
  the phrase; "45%" on a card whose range ends at 1 reads 0.45. A value outside the
  card's range is clipped to it and flagged ``out_of_range``.

Nothing here raises on model output: a failure is a ``ParsedAnswer`` with
``parseable=False`` and a reason, so the evaluator can count and report it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from chatnt_core.data.tasks import LabelSpec, TaskCard, normalise
from chatnt_core.modality import modality_from_tag
from chatnt_core.prompt import find_tags, replace_tags

SEQ = "{seq}"
_SEQ_PLACEHOLDER = re.compile(r"\{seq\d*\}")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})
# Words (with inner apostrophes: "doesn't", "3'"), the {seq} marker, and clause punctuation.
_TOKEN = re.compile(r"\{seq\}|[a-z0-9]+(?:'[a-z0-9]*)*|[.,;:!?]")
_CLAUSE_WORDS = frozenset(
    {"but", "however", "whereas", "while", "although", "though", "instead", "rather"}
)
_NEGATIONS = frozenset(
    {"no", "not", "never", "neither", "nor", "without", "cannot", "lacks", "lack", "lacking"}
)
_YES = frozenset({"yes", "yeah", "yep", "yup", "correct", "indeed", "affirmative"})
_NO = frozenset({"no", "nope"})
# Spellings that only make sense as a whole answer ("1", "yes"), never as a mention.
_BARE = frozenset({"yes", "no", "true", "false"})
_HEDGES = tuple(
    tuple(h.split())
    for h in (
        "not sure",
        "unsure",
        "don't know",
        "do not know",
        "no idea",
        "cannot tell",
        "can't tell",
        "cannot say",
        "can't say",
        "cannot determine",
        "can't determine",
        "cannot be determined",
        "unclear",
        "uncertain",
        "not certain",
        "hard to say",
        "impossible to tell",
        "maybe",
        "perhaps",
        "possibly",
    )
)
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-+\u2212\u2013]?)(?P<mantissa>\d+(?:\.\d+)?|\.\d+)"
    r"(?:[eE](?P<exp>[-+\u2212]?\d+)|\s*[x\u00d7*]\s*10\s*\^\s*(?P<pow>[-+\u2212]?\d+))?"
    r"(?!\d)(?!\.\d)"
)
_NUMBER_WORDS = {
    "zero": 0.0,
    "one": 1.0,
    "two": 2.0,
    "three": 3.0,
    "four": 4.0,
    "five": 5.0,
    "six": 6.0,
    "seven": 7.0,
    "eight": 8.0,
    "nine": 9.0,
    "ten": 10.0,
    "eleven": 11.0,
    "twelve": 12.0,
}


@dataclass(frozen=True)
class ParsedAnswer:
    """What an answer says, per its task card; ``reason`` explains how it was read or why not."""

    label: str | None
    value: float | None
    parseable: bool
    out_of_range: bool = False
    reason: str = ""


def _unparseable(reason: str) -> ParsedAnswer:
    return ParsedAnswer(None, None, False, False, reason)


# ---- tokens --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tokens:
    words: tuple[str, ...]  # punctuation removed
    clause: tuple[int, ...]  # clause number of each word


def _tokenize(text: str, is_template: bool = False) -> _Tokens:
    """Lower-case words with ``{seq}`` for every tag (or template placeholder)."""
    text = _SEQ_PLACEHOLDER.sub(SEQ, text) if is_template else replace_tags(text, f" {SEQ} ")
    words: list[str] = []
    clause: list[int] = []
    current = 0
    for token in _TOKEN.findall(text.translate(_APOSTROPHES).lower()):
        if token in ".,;:!?":
            current += 1
            continue
        if token in _CLAUSE_WORDS:
            current += 1
        words.append(token)
        clause.append(current)
    return _Tokens(tuple(words), tuple(clause))


@dataclass(frozen=True)
class _Hit:
    label: str
    start: int
    end: int


def _phrase(text: str, is_template: bool = False) -> tuple[str, ...]:
    return _tokenize(text.replace("_", " "), is_template).words


def _find(words: Sequence[str], phrases: Sequence[tuple[tuple[str, ...], str]]) -> list[_Hit]:
    """Non-overlapping occurrences of the phrases, longest phrase first (greedy)."""
    ordered = sorted(phrases, key=lambda item: -len(item[0]))
    taken = [False] * len(words)
    hits: list[_Hit] = []
    for phrase, label in ordered:
        size = len(phrase)
        if not size:
            continue
        for start in range(len(words) - size + 1):
            span = range(start, start + size)
            if tuple(words[start : start + size]) == phrase and not any(taken[i] for i in span):
                for i in span:
                    taken[i] = True
                hits.append(_Hit(label, start, start + size))
    return sorted(hits, key=lambda hit: hit.start)


def _is_negation(word: str) -> bool:
    return word in _NEGATIONS or word.endswith("n't")


def _negated(tokens: _Tokens, hit: _Hit) -> bool:
    """A negation word in the mention's clause, outside the mention's own words.

    A spelling that is itself negative ("no splice site", "neither") is never flipped:
    the other negations around it belong to the same construction ("neither X nor Y").
    """
    if any(_is_negation(w) for w in tokens.words[hit.start : hit.end]):
        return False
    clause = tokens.clause[hit.start]
    for i, word in enumerate(tokens.words):
        if hit.start <= i < hit.end or tokens.clause[i] != clause:
            continue
        if _is_negation(word):
            return True
    return False


def _contains(words: Sequence[str], phrase: tuple[str, ...]) -> bool:
    size = len(phrase)
    return any(tuple(words[i : i + size]) == phrase for i in range(len(words) - size + 1))


# ---- what a card offers, computed once per card ------------------------------------------------


@dataclass(frozen=True)
class _Vocabulary:
    templates: tuple[tuple[tuple[str, ...], str], ...]  # (answer words, label)
    whole: dict[tuple[str, ...], str]  # an answer that is just this spelling
    mentions: tuple[tuple[tuple[str, ...], str], ...]  # spellings usable inside a sentence
    positive: str | None  # binary cards
    no_label: str | None  # the one label whose answers start with "No"


def _template_forms(words: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The template, and without its leading yes/no: "{seq} contains a CTCF site" restates
    "Yes, {seq} contains a CTCF site" as surely as the full sentence does."""
    if len(words) > 2 and (words[0] in _YES or words[0] in _NO):
        return [words, words[1:]]
    return [words]


def _spellings(label: LabelSpec) -> list[tuple[str, ...]]:
    return [p for p in (_phrase(s) for s in [label.name, *label.synonyms]) if p]


_VOCABULARIES: dict[str, _Vocabulary] = {}


def _build_vocabulary(card: TaskCard) -> _Vocabulary:
    labels = card.labels or []
    templates = tuple(
        (phrase, label.name)
        for label in labels
        for answer in label.answers
        for phrase in _template_forms(_phrase(answer, True))
    )
    whole = {p: label.name for label in labels for p in _spellings(label)}
    mentions = tuple(
        (p, label.name)
        for label in labels
        for p in _spellings(label)
        if not all(w in _BARE or w.isdigit() for w in p)
    )
    positive = next((label.name for label in labels if label.positive), None)
    leading_no = [
        label.name for label in labels if any(_phrase(a)[:1] == ("no",) for a in label.answers)
    ]
    no_label = leading_no[0] if len(leading_no) == 1 else None
    return _Vocabulary(templates, whole, mentions, positive, no_label)


def _card_vocabulary(card: TaskCard) -> _Vocabulary:
    """Cached by the card's content (cards hold lists, so they cannot be dict keys)."""
    key = card.model_dump_json()
    if key not in _VOCABULARIES:
        if len(_VOCABULARIES) > 512:
            _VOCABULARIES.clear()
        _VOCABULARIES[key] = _build_vocabulary(card)
    return _VOCABULARIES[key]


# ---- classification ----------------------------------------------------------------------------


def _by_template(vocab: _Vocabulary, words: Sequence[str]) -> ParsedAnswer | None:
    labels = sorted({hit.label for hit in _find(words, vocab.templates)})
    if len(labels) == 1:
        return ParsedAnswer(labels[0], None, True, reason="matches an answer template")
    if labels:
        return _unparseable(f"ambiguous: states the answers of {' and '.join(labels)}")
    return None


def _votes(vocab: _Vocabulary, tokens: _Tokens) -> list[tuple[str, bool]]:
    """(label, negated) for every label mention."""
    return [(hit.label, _negated(tokens, hit)) for hit in _find(tokens.words, vocab.mentions)]


def _parse_binary(card: TaskCard, vocab: _Vocabulary, tokens: _Tokens) -> ParsedAnswer:
    positive = vocab.positive
    negative = next(label.name for label in card.labels or [] if label.name != positive)
    first = tokens.words[0]
    if first in _YES or first in _NO:
        label = positive if first in _YES else negative
        return ParsedAnswer(label, None, True, reason=f"leading '{first}'")
    signs = {
        (label == positive) != negated for label, negated in _votes(vocab, tokens)
    }  # True = says positive
    if len(signs) == 1:
        label = positive if signs.pop() else negative
        return ParsedAnswer(label, None, True, reason="label mention (negation-aware)")
    if signs:
        return _unparseable("ambiguous: mentions both classes")
    return _unparseable("no yes/no and no label mention")


def _parse_multi(vocab: _Vocabulary, tokens: _Tokens) -> ParsedAnswer:
    standing = sorted({label for label, negated in _votes(vocab, tokens) if not negated})
    if len(standing) == 1:
        return ParsedAnswer(standing[0], None, True, reason="unique label mention")
    if standing:
        return _unparseable(f"ambiguous: names {', '.join(standing)}")
    if tokens.words[0] in _NO and vocab.no_label is not None:
        return ParsedAnswer(vocab.no_label, None, True, reason="leading 'no'")
    return _unparseable("names no label")


def _parse_label(card: TaskCard, text: str) -> ParsedAnswer:
    vocab = _card_vocabulary(card)
    tokens = _tokenize(text)
    if not tokens.words:
        return _unparseable("empty answer")
    if tuple(tokens.words) in vocab.whole:
        return ParsedAnswer(vocab.whole[tokens.words], None, True, reason="a label spelling")
    by_template = _by_template(vocab, tokens.words)
    if by_template is not None:
        return by_template
    if card.kind == "binary":
        return _parse_binary(card, vocab, tokens)
    return _parse_multi(vocab, tokens)


# ---- regression --------------------------------------------------------------------------------


def _prefix_patterns(card: TaskCard) -> list[re.Pattern[str]]:
    """One regex per answer template: the words before ``{value}``, any spacing and case."""
    patterns = []
    for template in card.answers or []:
        prefix = _SEQ_PLACEHOLDER.sub(SEQ, template.split("{value}")[0])
        words = prefix.split()
        if words:
            body = r"\s+".join(re.escape(w) for w in words)
            patterns.append(re.compile(body, re.IGNORECASE))
    return patterns


def _number(match: re.Match[str]) -> float:
    sign = -1.0 if match["sign"] in ("-", "\u2212", "\u2013") else 1.0
    exponent = match["exp"] or match["pow"]
    power = int(exponent.replace("\u2212", "-")) if exponent else 0
    return sign * float(f"{match['mantissa']}e{power}")  # 1e999 -> inf, no OverflowError


def _first_number(text: str) -> tuple[float, bool] | None:
    """The first number and whether a ``%`` follows it."""
    match = _NUMBER.search(text)
    if match is None:
        return None
    return _number(match), text[match.end() :].lstrip().startswith("%")


def _parse_value(card: TaskCard, text: str) -> ParsedAnswer:
    plain = replace_tags(text, SEQ).translate(_APOSTROPHES)
    if not plain.strip():
        return _unparseable("empty answer")
    found: tuple[float, bool] | None = None
    how = ""
    starts = [m for p in _prefix_patterns(card) if (m := p.search(plain)) is not None]
    if starts:
        after = plain[min(starts, key=lambda m: (m.start(), -m.end())).end() :]
        found = _first_number(after)
        if found is None:
            head = after.strip().split(maxsplit=1)
            word = head[0].strip(".,;:!?").lower() if head else ""
            found = (_NUMBER_WORDS[word], False) if word in _NUMBER_WORDS else None
        how = "number after the answer phrase"
    if found is None:
        found = _first_number(plain)
        how = "first number in the answer"
    if found is None:
        return _unparseable("no number")
    value, percent = found
    spec = card.value
    if percent and spec is not None and spec.max is not None and spec.max <= 1:
        value, how = value / 100, how + " (a percentage, divided by 100)"
    if not math.isfinite(value):
        return _unparseable("number is not finite")
    low = spec.min if spec is not None else None
    high = spec.max if spec is not None else None
    if low is not None and value < low:
        return ParsedAnswer(None, low, True, True, f"{how}; {value:g} clipped to {low:g}")
    if high is not None and value > high:
        return ParsedAnswer(None, high, True, True, f"{how}; {value:g} clipped to {high:g}")
    return ParsedAnswer(None, value, True, False, how)


# ---- public API --------------------------------------------------------------------------------


def _hedged(text: str) -> bool:
    words = _tokenize(text).words
    return any(_contains(words, hedge) for hedge in _HEDGES)


def parse_answer(card: TaskCard, text: str) -> ParsedAnswer:
    """The label (classification cards) or value (regression cards) ``text`` states."""
    if _hedged(text):
        return _unparseable("hedged answer (not sure)")
    if card.kind == "regression":
        return _parse_value(card, text)
    return _parse_label(card, text)


# ---- which card a question belongs to ---------------------------------------------------------

MatchHow = Literal["given", "exact", "similar", "none"]
MATCH_THRESHOLD = 0.7  # least similarity score for a card to match a question not in its pools
_MIN_SHARED_WORDS = 2  # content words a similar question shares with the card's closest one
# Words that say nothing about which task is meant: articles, pronouns, auxiliaries,
# prepositions, "what"/"who" and requests ("tell me", "please"). "Which", "how", "where"
# and the like stay: they tell "which factor binds" from "does CTCF bind", "where" from "is".
_MATCH_STOPWORDS = frozenset(
    word
    for line in (
        "a an the this that these those it its i me my you your we our us they them",
        "is are was were be been being am do does did done doing have has had having",
        "can could would will shall should may might must",
        "of in on at to for from by with within into inside onto along about as than",
        "and or if whether then so there here what who whom",
        "please tell give show let know say find see look just also any some anything",
        "something thanks thank ok okay hi hello hey",
    )
    for word in line.split()
)
_MATCH_WORD = re.compile(r"[a-z0-9]+")
# Names (CTCF, REST, GC: written in capitals in some card question) say what a question is
# about, so "How many CTCF sites" is not the REST count card's "How many REST sites".
_NAME_WORD = re.compile(r"\b[A-Z][A-Z0-9]+\b")
_NAME_WEIGHT = 2.0


@dataclass(frozen=True)
class TaskMatch:
    """The card a question was matched to and how: ``given`` (named by the caller),
    ``exact`` (the question is in the card's pool, tags aside), ``similar`` (its closest
    pool question scores ``score`` >= ``MATCH_THRESHOLD``) or ``none`` (``reason`` says why)."""

    card: TaskCard | None
    how: MatchHow
    score: float | None = None
    reason: str = ""


def _stem(word: str) -> str:
    """A crude English stem, enough to equate "sites"/"site" and "binding"/"binds"."""
    for suffix, keep in (("ies", "y"), ("ing", ""), ("ed", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: -len(suffix)] + keep
    return word


def match_words(text: str, is_template: bool = False) -> frozenset[str]:
    """The content words of a question, tags (or placeholders) removed, stemmed."""
    text = _SEQ_PLACEHOLDER.sub(" ", text) if is_template else replace_tags(text, " ")
    text = text.translate(_APOSTROPHES).lower().replace("'s", " ").replace("n't", " not")
    words = (_stem(w) for w in _MATCH_WORD.findall(text) if w not in _MATCH_STOPWORDS)
    return frozenset(w for w in words if w not in _MATCH_STOPWORDS)


def _question_key(text: str, is_template: bool) -> str:
    text = _SEQ_PLACEHOLDER.sub(SEQ, text) if is_template else replace_tags(text, SEQ)
    return normalise(text)


@dataclass(frozen=True)
class _CardScore:
    card: TaskCard
    score: float  # mean of the closest question's similarity and the card's coverage
    support: float  # mean similarity of the card's three closest questions (tie-break)
    shared: int  # content words shared with the closest question
    same_words: bool  # the closest question has exactly the question's content words


def _score_cards(words: frozenset[str], cards: Sequence[TaskCard]) -> list[_CardScore]:
    """Every card scored against the question's content words (IDF-weighted over the cards).

    A card's score is the mean of (a) the weighted Dice overlap with its closest train or
    test question and (b) the share of the question's word weight the card's questions
    use at all. A word no card uses weighs most, so "promoter" keeps a question away
    from cards that never speak of promoters.
    """
    pools = [
        [match_words(q, is_template=True) for q in [*c.questions.train, *c.questions.test]]
        for c in cards
    ]
    vocabularies = [frozenset().union(*pool) for pool in pools]
    names = {
        _stem(word.lower())
        for card in cards
        for q in [*card.questions.train, *card.questions.test]
        for word in _NAME_WORD.findall(q)
    }
    count = len(cards)

    def weight(word: str) -> float:
        seen = sum(word in vocabulary for vocabulary in vocabularies)
        return math.log((count + 1) / (seen + 0.5)) * (_NAME_WEIGHT if word in names else 1.0)

    weights = {w: weight(w) for w in words.union(*vocabularies)}
    # fsum: exact, so the word sets' (hash-seeded) order cannot move a score past 1.0
    total = math.fsum(weights[w] for w in words)
    scores = []
    for card, pool, vocabulary in zip(cards, pools, vocabularies):
        dice = []
        for other in pool:
            size = total + math.fsum(weights[w] for w in other)
            dice.append(2 * math.fsum(weights[w] for w in words & other) / size if size else 0.0)
        best = max(range(len(pool)), key=lambda i: dice[i])
        coverage = math.fsum(weights[w] for w in words & vocabulary) / total
        top = sorted(dice, reverse=True)[:3]
        scores.append(
            _CardScore(
                card,
                (dice[best] + coverage) / 2,
                sum(top) / len(top),
                len(words & pool[best]),
                pool[best] == words,
            )
        )
    return scores


def match_question(question: str, cards: Iterable[TaskCard]) -> TaskMatch:
    """The card ``question`` asks about, by its train and test question pools.

    Cards of another modality than the question's tag suffixes say are left out. A
    question in exactly one card's pool (tags, case and spacing aside) is that card.
    Otherwise cards asking about as many sequences as the question tags are scored by
    content-word overlap (``_score_cards``); the best card matches when its score reaches
    ``MATCH_THRESHOLD`` and it shares at least two content words with one of its questions
    (or exactly the question's words). Equal scores are broken by the mean similarity of
    each card's three closest questions; a tie that remains is no match (ambiguous).
    """
    tags = list(dict.fromkeys(find_tags(question)))
    said = {modality_from_tag(tag) for tag in tags}
    cards = [card for card in cards if said <= {None, card.modality}]
    key = _question_key(question, is_template=False)
    exact = [
        card
        for card in cards
        if any(
            _question_key(q, is_template=True) == key
            for q in [*card.questions.train, *card.questions.test]
        )
    ]
    if len(exact) == 1:
        return TaskMatch(exact[0], "exact", 1.0)
    if exact:
        names = ", ".join(card.name for card in exact)
        return TaskMatch(None, "none", None, f"the question is in the pools of {names}")
    if not tags:
        return TaskMatch(None, "none", None, "the question names no sequence (@tag)")
    words = match_words(question)
    if not words:
        return TaskMatch(None, "none", None, "the question has no content words")
    candidates = [card for card in cards if card.num_sequences == len(tags)]
    if not candidates:
        return TaskMatch(None, "none", None, f"no card asks about {len(tags)} such sequence(s)")
    ranked = sorted(
        _score_cards(words, candidates), key=lambda c: (c.score, c.support), reverse=True
    )
    best = ranked[0]
    closest = f"the closest card, '{best.card.name}',"
    if best.score < MATCH_THRESHOLD:
        reason = f"{closest} scores {best.score:.2f}, below {MATCH_THRESHOLD}"
        return TaskMatch(None, "none", best.score, reason)
    if best.shared < _MIN_SHARED_WORDS and not best.same_words:
        reason = f"{closest} shares only {best.shared} content word with the question"
        return TaskMatch(None, "none", best.score, reason)
    tied = [
        c
        for c in ranked
        if math.isclose(c.score, best.score) and math.isclose(c.support, best.support)
    ]
    if len(tied) > 1:
        names = ", ".join(c.card.name for c in tied)
        return TaskMatch(None, "none", best.score, f"{names} match equally well")
    return TaskMatch(best.card, "similar", best.score)


def match_task(question: str, cards: Iterable[TaskCard]) -> TaskCard | None:
    """The card ``question`` belongs to, or None (see ``match_question``)."""
    return match_question(question, cards).card

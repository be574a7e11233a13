"""Conformance reports: what was checked, what failed and why, in one line each.

A check is a small function that returns quietly when the component behaves, raises
:class:`CheckFailed` with a one-line reason when it does not, or :class:`CheckSkipped`
when it does not apply (a projection that never reads the question has no question
padding to be invariant to). Any other exception inside a check also counts as a failure,
reported with its type and first line: a component that crashes on the test batch is not
conformant either, and the author wants the message, not a traceback deep in the kit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

Status = Literal["passed", "failed", "skipped"]
C = TypeVar("C")


class CheckFailed(AssertionError):
    """Raised by a check with a one-line reason the component does not conform."""


class CheckSkipped(Exception):
    """Raised by a check that does not apply to this component, with the reason."""


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one named check; ``reason`` is empty when it passed."""

    name: str
    status: Status
    reason: str = ""

    def __str__(self) -> str:
        tail = f": {self.reason}" if self.reason else ""
        return f"[{self.status}] {self.name}{tail}"


@dataclass
class ConformanceReport:
    """Every check run against one component, in the order they ran.

    In a pytest test, ``check_encoder(encoder).raise_for_failures()`` is the whole test:
    it raises ``AssertionError`` naming each failed check and its reason.
    """

    subject: str  # what was checked, e.g. "encoder KmerEncoder"
    results: list[CheckResult] = field(default_factory=list)

    def __iter__(self) -> Iterator[CheckResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __contains__(self, name: object) -> bool:
        return any(result.name == name for result in self.results)

    def __getitem__(self, name: str) -> CheckResult:
        for result in self.results:
            if result.name == name:
                return result
        known = ", ".join(result.name for result in self.results)
        raise KeyError(f"no check named {name!r} in this report; checks: {known}")

    def _with(self, status: Status) -> list[CheckResult]:
        return [result for result in self.results if result.status == status]

    @property
    def failures(self) -> list[CheckResult]:
        return self._with("failed")

    @property
    def passed_checks(self) -> list[CheckResult]:
        return self._with("passed")

    @property
    def skipped(self) -> list[CheckResult]:
        return self._with("skipped")

    @property
    def ok(self) -> bool:
        """True when no check failed (skipped checks do not count against it)."""
        return not self.failures

    def extend(self, other: ConformanceReport) -> None:
        """Append another report's results (e.g. the params-model checks of a component)."""
        self.results.extend(other.results)

    def summary(self) -> str:
        counts = (
            f"{len(self.passed_checks)} passed, {len(self.failures)} failed, "
            f"{len(self.skipped)} skipped"
        )
        return f"{self.subject}: {counts}"

    def __str__(self) -> str:
        return "\n".join([self.summary(), *(f"  {result}" for result in self.results)])

    def raise_for_failures(self) -> None:
        """Raise ``AssertionError`` listing every failed check; return quietly otherwise."""
        failures = self.failures
        if not failures:
            return
        lines = [f"  - {result.name}: {result.reason}" for result in failures]
        raise AssertionError(
            f"{self.subject} failed {len(failures)} of {len(self.results)} conformance "
            "check(s):\n" + "\n".join(lines)
        )


def one_line(text: str, limit: int = 300) -> str:
    """Collapse a message to its first non-empty line, cut to ``limit`` characters."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first if len(first) <= limit else first[: limit - 3] + "..."


def run_check(name: str, check: Callable[[], None]) -> CheckResult:
    """Run one check and turn its outcome (or its crash) into a :class:`CheckResult`."""
    try:
        check()
    except CheckSkipped as exc:
        return CheckResult(name, "skipped", one_line(str(exc)))
    except CheckFailed as exc:
        return CheckResult(name, "failed", one_line(str(exc)) or "check failed")
    except Exception as exc:  # a crash inside the component is a failure of that check
        detail = one_line(str(exc))
        return CheckResult(name, "failed", f"{type(exc).__name__}: {detail}" if detail else "")
    return CheckResult(name, "passed")


def bind_checks(
    checks: Mapping[str, Callable[[C], None]], case: C
) -> list[tuple[str, Callable[[], None]]]:
    """Pair each named check with the case it runs on, ready for :func:`run_checks`."""

    def bound(check: Callable[[C], None]) -> Callable[[], None]:
        return lambda: check(case)

    return [(name, bound(check)) for name, check in checks.items()]


def run_checks(
    subject: str,
    checks: Sequence[tuple[str, Callable[[], None]]],
    skip: Iterable[str] = (),
) -> ConformanceReport:
    """Run ``checks`` in order; names in ``skip`` are recorded as skipped, not run.

    An unknown name in ``skip`` is an error rather than a silent no-op, so a typo cannot
    switch a check off without anyone noticing.
    """
    skip = set(skip)
    names = [name for name, _ in checks]
    unknown = sorted(skip - set(names))
    if unknown:
        raise ValueError(f"cannot skip unknown check(s) {unknown}; the checks are: {names}")
    report = ConformanceReport(subject)
    for name, check in checks:
        if name in skip:
            report.results.append(CheckResult(name, "skipped", "skipped by the caller"))
        else:
            report.results.append(run_check(name, check))
    return report

"""What check and compare find, as values: the verdict, each case's outcome and, in compare, what changed.

Exit codes, the terminal table, the Markdown and the JUnit are renderings of these values. Nothing decides anything
from rendered text: the words in `OUTCOME_LABELS` and `FINDING_LABELS` can be changed freely without changing an
exit code, a count or an icon (tests/test_check_values.py rewords them to prove it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal


class Verdict(enum.Enum):
    """The answer of one check or compare; its value is the process exit code."""

    PASS = 0  # every bound holds (check), no failing regression (compare)
    FAIL = 1  # a bound is violated or cannot be judged; a regression with --fail-on-regression
    ERROR = 2  # the inputs cannot be judged at all: a malformed file, a broken image, incomparable runs

    @property
    def exit_code(self) -> int:
        return self.value

    def __str__(self) -> str:
        return self.name


EXIT_PASS = Verdict.PASS.exit_code
EXIT_FAIL = Verdict.FAIL.exit_code
EXIT_ERROR = Verdict.ERROR.exit_code


class Outcome(str, enum.Enum):
    """One case's outcome. A str enum, so `case.outcome == "fail"` reads as before."""

    PASS = "pass"
    FAIL = "fail"
    SKIPPED = "skipped"


class Finding(enum.Enum):
    """compare: what one (backend, quantity) did between the runs. Whether it fails is the outcome's business
    (`--fail-on-regression`); whether it is a regression is `is_regression`, never a word in a cell."""

    NO_CHANGE = "no_change"
    NOT_SIGNIFICANT = "not_significant"
    IMPROVED = "improved"
    REGRESSION = "regression"
    DIRECTION_UNKNOWN = "direction_unknown"
    TOO_FEW_PROMPTS = "too_few_prompts"
    NOT_TESTED = "not_tested"
    NOT_COMPARED = "not_compared"
    WITHIN_TOLERANCE = "within_tolerance"
    OTHER_DEVICE = "other_device"
    FIXED = "fixed"
    MISSING = "missing"  # the candidate lacks a backend the base has

    @property
    def is_regression(self) -> bool:
        return self in (Finding.REGRESSION, Finding.MISSING)


# The words each value is shown as. Renderers read these; no decision does.
OUTCOME_LABELS: dict[Outcome, str] = {Outcome.PASS: "pass", Outcome.FAIL: "FAIL", Outcome.SKIPPED: "skipped"}
FINDING_LABELS: dict[Finding, str] = {
    Finding.NO_CHANGE: "no change", Finding.NOT_SIGNIFICANT: "n.s.", Finding.IMPROVED: "improved",
    Finding.REGRESSION: "⚠ regression", Finding.DIRECTION_UNKNOWN: "changed (direction unknown)",
    Finding.TOO_FEW_PROMPTS: "too few prompts (n={n} < {min_n})", Finding.NOT_TESTED: "not tested",
    Finding.NOT_COMPARED: "not compared", Finding.WITHIN_TOLERANCE: "ok", Finding.OTHER_DEVICE: "other device",
    Finding.FIXED: "fixed", Finding.MISSING: "⚠ missing in candidate",
}
VERDICT_LABELS: dict[Verdict, str] = {Verdict.PASS: "PASS", Verdict.FAIL: "FAIL", Verdict.ERROR: "ERROR"}
PASS_WITH_REGRESSIONS = "PASS WITH REGRESSIONS"
PARTIAL_MARK = "†"  # the mark evalkit's report uses for a backend that quantized less than its name says


@dataclass(frozen=True)
class CaseResult:
    """One judged thing: a (backend, bound) in check, a (backend, metric or resource) in compare.

    `cells` are the data columns after backend and check (all of `Report.columns` but the last), already
    formatted, so every renderer shows the same numbers with the same rounding. The last column, the result, is
    rendered from `outcome` (check) or `finding` (compare) by `label`.
    """

    backend: str
    name: str
    outcome: Outcome
    cells: tuple[str, ...]
    message: str = ""  # one line; the JUnit failure/skipped message
    detail: str = ""  # longer text for the JUnit body
    finding: Finding | None = None  # compare only
    n: int | None = None  # compare: shared prompts, for the "too few prompts" label
    min_n: int | None = None

    @property
    def regression(self) -> bool:
        return self.finding is not None and self.finding.is_regression

    @property
    def label(self) -> str:
        if self.finding is None:
            return OUTCOME_LABELS[self.outcome]
        return FINDING_LABELS[self.finding].format(n=self.n, min_n=self.min_n)

    @property
    def row(self) -> tuple[str, ...]:
        return (*self.cells, self.label)


@dataclass(frozen=True)
class BackendInfo:
    """What check/compare know about one backend beyond its cases, shown in every output."""

    name: str
    partial_reason: str | None = None  # quantized less than its name says here (generation record; shown with †)
    missing_prompts: tuple[str, ...] = ()  # manifest prompts its generation record lacks (check: its n is smaller)

    @property
    def partial(self) -> bool:
        return self.partial_reason is not None


@dataclass(frozen=True)
class ReasonGroup:
    """Cases that say the same thing about the same check for several backends (e.g. CLIP weights missing for 15):
    shown once with the backends listed, not 15 times."""

    name: str
    outcome: Outcome
    message: str
    backends: tuple[str, ...]

    def who(self, shown: int = 4) -> str:
        """'bnb-nf4' or '15 backends: a, b, c, d, +11 more'."""
        if len(self.backends) == 1:
            return self.backends[0]
        few = ", ".join(self.backends[:shown]) + (f", +{len(self.backends) - shown} more" if len(self.backends) > shown else "")
        return f"{len(self.backends)} backends: {few}"


def group_reasons(cases: list[CaseResult], use_detail: bool = False) -> list[ReasonGroup]:
    """Group `cases` by (check name, outcome, message), in first-seen order."""
    groups: dict[tuple[str, Outcome, str], list[str]] = {}
    for c in cases:
        text = (c.detail if use_detail else c.message) or c.message or c.detail
        groups.setdefault((c.name, c.outcome, text), []).append(c.backend)
    return [ReasonGroup(n, o, m, tuple(b)) for (n, o, m), b in groups.items()]


@dataclass
class Report:
    """Everything one `check` or `compare` invocation found, in display order."""

    kind: Literal["check", "compare"]
    title: str
    columns: tuple[str, ...]  # headers for CaseResult.row
    cases: list[CaseResult] = field(default_factory=list)
    context: list[tuple[str, str]] = field(default_factory=list)  # (label, value) shown above the table
    warnings: list[str] = field(default_factory=list)  # shown prominently (e.g. a forced comparison)
    notes: list[str] = field(default_factory=list)  # shown below the table
    properties: dict[str, str] = field(default_factory=dict)  # JUnit <properties>
    backend_info: dict[str, BackendInfo] = field(default_factory=dict)
    error: str | None = None  # set: the verdict is ERROR and this one line says why (no cases were judged)

    @property
    def n_failed(self) -> int:
        return sum(c.outcome is Outcome.FAIL for c in self.cases)

    @property
    def n_skipped(self) -> int:
        return sum(c.outcome is Outcome.SKIPPED for c in self.cases)

    @property
    def n_passed(self) -> int:
        return sum(c.outcome is Outcome.PASS for c in self.cases)

    @property
    def flagged(self) -> int:
        """compare: regressions found, failing or not (a report-only compare passes with them, visibly)."""
        return sum(c.regression for c in self.cases)

    @property
    def verdict(self) -> Verdict:
        if self.error is not None:
            return Verdict.ERROR
        return Verdict.FAIL if self.n_failed else Verdict.PASS

    @property
    def exit_code(self) -> int:
        return self.verdict.exit_code

    @property
    def verdict_text(self) -> str:
        # A report-only compare that found regressions exits 0, but its last line must not read like a clean PASS.
        if self.verdict is Verdict.PASS and self.flagged:
            return PASS_WITH_REGRESSIONS
        return VERDICT_LABELS[self.verdict]

    @property
    def summary_line(self) -> str:
        """compare: what was found, shown next to the verdict; '' for check."""
        if self.kind != "compare" or self.error is not None:
            return ""
        n = self.flagged
        failing = any(c.regression and c.outcome is Outcome.FAIL for c in self.cases)
        text = f"{n} significant regression(s)" if n else "no significant regression"
        return text + (" (not failing: --fail-on-regression not set)" if n and not failing else "")

    @property
    def headline(self) -> str:
        """The verdict plus, for compare, what was found (a report-only compare can pass with regressions)."""
        if self.error is not None:
            return f"{VERDICT_LABELS[Verdict.ERROR]}: {self.error}"
        return f"{self.verdict_text} ({self.summary_line})" if self.summary_line else self.verdict_text

    def backends(self) -> list[str]:
        """Backends in first-seen order (the manifest's order, as the cases were built)."""
        seen: dict[str, None] = {}
        for c in self.cases:
            seen.setdefault(c.backend, None)
        return list(seen)

    def shown_name(self, backend: str) -> str:
        """The backend as a table shows it: with † when it quantized less than its name says."""
        info = self.backend_info.get(backend)
        return f"{backend} {PARTIAL_MARK}" if info is not None and info.partial else backend

    def partial_lines(self) -> list[str]:
        """One footnote line per partially quantized backend that has cases, for every renderer."""
        shown = set(self.backends())
        return [f"{PARTIAL_MARK} {b}: quantized less than its name says on this device: {i.partial_reason}"
                for b, i in self.backend_info.items() if i.partial and b in shown]


def error_report(kind: Literal["check", "compare"], title: str, message: str) -> Report:
    """The ERROR verdict as a report, so the outputs a CI job uploads say ERROR rather than keep an old PASS."""
    return Report(kind, title, (), error=message)

"""What check and compare hand to the writers (JUnit, Markdown, terminal): plain data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["pass", "fail", "skipped"]

EXIT_PASS = 0
EXIT_FAIL = 1


@dataclass(frozen=True)
class CaseResult:
    """One judged thing: a (backend, bound) in check, a (backend, metric or resource) in compare.

    `cells` are the table columns after backend and check (see `Report.columns`), already formatted,
    so every writer shows the same numbers with the same rounding.
    """

    backend: str
    name: str
    outcome: Outcome
    cells: tuple[str, ...]
    message: str = ""  # one line; the JUnit failure/skipped message
    detail: str = ""  # longer text for the JUnit body


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
    groups: dict[tuple[str, str, str], list[str]] = {}
    for c in cases:
        text = (c.detail if use_detail else c.message) or c.message or c.detail
        groups.setdefault((c.name, c.outcome, text), []).append(c.backend)
    return [ReasonGroup(n, o, m, tuple(b)) for (n, o, m), b in groups.items()]  # type: ignore[arg-type]


@dataclass
class Report:
    """Everything one `check` or `compare` invocation found, in display order."""

    kind: Literal["check", "compare"]
    title: str
    columns: tuple[str, ...]  # headers for CaseResult.cells
    cases: list[CaseResult] = field(default_factory=list)
    context: list[tuple[str, str]] = field(default_factory=list)  # (label, value) shown above the table
    warnings: list[str] = field(default_factory=list)  # shown prominently (e.g. a forced comparison)
    notes: list[str] = field(default_factory=list)  # shown below the table
    properties: dict[str, str] = field(default_factory=dict)  # JUnit <properties>
    summary_line: str = ""  # compare: "2 significant regression(s)"; shown next to the verdict
    flagged: int = 0  # compare: regressions found, failing or not (drives the ⚠ icon without --fail-on-regression)

    @property
    def n_failed(self) -> int:
        return sum(c.outcome == "fail" for c in self.cases)

    @property
    def n_skipped(self) -> int:
        return sum(c.outcome == "skipped" for c in self.cases)

    @property
    def n_passed(self) -> int:
        return sum(c.outcome == "pass" for c in self.cases)

    @property
    def exit_code(self) -> int:
        return EXIT_FAIL if self.n_failed else EXIT_PASS

    @property
    def verdict(self) -> str:
        # A report-only compare that found regressions exits 0, but its last line must not read like a clean PASS.
        if self.n_failed:
            return "FAIL"
        return "PASS WITH REGRESSIONS" if self.flagged else "PASS"

    @property
    def headline(self) -> str:
        """The verdict plus, for compare, what was found (a report-only compare can pass with regressions)."""
        return f"{self.verdict} ({self.summary_line})" if self.summary_line else self.verdict

    def backends(self) -> list[str]:
        """Backends in first-seen order (the manifest's order, as the cases were built)."""
        seen: dict[str, None] = {}
        for c in self.cases:
            seen.setdefault(c.backend, None)
        return list(seen)

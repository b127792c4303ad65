"""Markdown summary for PR comments: verdict first, failures next, the full table folded."""

from __future__ import annotations

from pathlib import Path

from evalkit.check.results import CaseResult, Report, group_reasons
from evalkit.io import atomic_write_text


def _cell(text: str) -> str:
    # A pipe inside a cell would split the table; newlines would end it.
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(report: Report, cases: list[CaseResult]) -> list[str]:
    head = ("backend", "check", *report.columns)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for c in cases:
        cells = list(c.cells)
        # The outcome column reads at a glance in a PR: bold for failures.
        cells[-1] = {"fail": "❌ **FAIL**", "pass": "✅ pass", "skipped": "⏭️ skipped"}.get(c.outcome, cells[-1]) \
            if report.kind == "check" else cells[-1]
        lines.append("| " + " | ".join(_cell(x) for x in (c.backend, f"`{c.name}`", *cells)) + " |")
    return lines


def render_markdown(report: Report) -> str:
    """The report as GitHub-flavoured Markdown."""
    icon = "❌" if report.n_failed else ("⚠️" if report.flagged or report.warnings else "✅")
    out = [f"## {icon} {report.title}: **{report.headline}**", ""]
    for w in report.warnings:
        out.append(f"> ⚠️ **Warning:** {_cell(w)}")
    if report.warnings:
        out.append("")
    out.append(f"{report.n_passed} passed, {report.n_failed} failed, {report.n_skipped} skipped "
               f"({len(report.cases)} checks)")
    out.append("")
    out += [f"- **{k}:** {_cell(v)}" for k, v in report.context]
    out.append("")
    # Identical reasons are grouped: one line names every backend it applies to.
    failed = [c for c in report.cases if c.outcome == "fail"]
    if failed:
        out += ["### Failures" if report.kind == "check" else "### Regressions", ""]
        out += [f"- `{g.name}` **{_cell(g.who())}**: {_cell(g.message)}" for g in group_reasons(failed)]
        out.append("")
    flagged = [c for c in report.cases if c.outcome == "pass" and "regression" in c.cells[-1]]
    if flagged:
        out += ["### Regressions (not failing: --fail-on-regression not set)", ""]
        out += [f"- `{g.name}` **{_cell(g.who())}**: {_cell(g.message)}" for g in group_reasons(flagged, use_detail=True)]
        out.append("")
    skipped = [c for c in report.cases if c.outcome == "skipped" and c.message]
    if skipped:
        out += ["### Skipped", ""]
        out += [f"- `{g.name}` **{_cell(g.who())}**: {_cell(g.message)}" for g in group_reasons(skipped)]
        out.append("")
    table = _table(report, report.cases)
    if len(report.cases) > 12:
        # Long tables drown a PR thread; the failures are listed above anyway.
        out += ["<details><summary>All checks</summary>", "", *table, "", "</details>"]
    else:
        out += table
    if report.notes:
        out.append("")
        out += [f"- {_cell(n)}" for n in report.notes]
    return "\n".join(out) + "\n"


def write_markdown(report: Report, path: str | Path) -> None:
    atomic_write_text(path, render_markdown(report))

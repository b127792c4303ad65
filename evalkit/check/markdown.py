"""Markdown summary for PR comments, a rendering of a Report's values: verdict first, failures next, the full table
folded. Its last line is evalkit's output marker (an HTML comment: invisible once rendered), which is what lets a
later run replace the file (evalkit.check.outputs); the first line stays the verdict, which a PR shows first."""

from __future__ import annotations

from pathlib import Path

from evalkit.check.outputs import marker_comment
from evalkit.check.results import CaseResult, Outcome, Report, Verdict, group_reasons

# The result column reads at a glance in a PR; rendered from the outcome, never from a cell's words.
CHECK_MARKS = {Outcome.FAIL: "❌ **FAIL**", Outcome.PASS: "✅ pass", Outcome.SKIPPED: "⏭️ skipped"}


def _cell(text: str) -> str:
    # A pipe inside a cell would split the table; newlines would end it.
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(report: Report, cases: list[CaseResult]) -> list[str]:
    head = ("backend", "check", *report.columns)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for c in cases:
        row = list(c.row)
        if report.kind == "check":
            row[-1] = CHECK_MARKS[c.outcome]
        lines.append("| " + " | ".join(_cell(x) for x in (report.shown_name(c.backend), f"`{c.name}`", *row)) + " |")
    return lines


def _icon(report: Report) -> str:
    if report.verdict is not Verdict.PASS:
        return "❌"
    return "⚠️" if report.flagged or report.warnings else "✅"


def render_markdown(report: Report) -> str:
    """The report as GitHub-flavoured Markdown."""
    marker = marker_comment(report.kind, "Markdown summary")
    if report.verdict is Verdict.ERROR:
        return "\n".join([f"## {_icon(report)} {report.title}: **ERROR**", "",
                          f"The inputs could not be judged (exit {Verdict.ERROR.exit_code}); no bound was judged:", "",
                          f"> {_cell(str(report.error))}", "", marker, ""])
    out = [f"## {_icon(report)} {report.title}: **{report.headline}**", ""]
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
    failed = [c for c in report.cases if c.outcome is Outcome.FAIL]
    if failed:
        out += ["### Failures" if report.kind == "check" else "### Regressions", ""]
        out += [f"- `{g.name}` **{_cell(g.who())}**: {_cell(g.message)}" for g in group_reasons(failed)]
        out.append("")
    flagged = [c for c in report.cases if c.outcome is not Outcome.FAIL and c.regression]
    if flagged:
        out += ["### Regressions (not failing: --fail-on-regression not set)", ""]
        out += [f"- `{g.name}` **{_cell(g.who())}**: {_cell(g.message)}" for g in group_reasons(flagged, use_detail=True)]
        out.append("")
    skipped = [c for c in report.cases if c.outcome is Outcome.SKIPPED and c.message]
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
    partial = report.partial_lines()
    if partial or report.notes:
        out.append("")
        out += [f"- {_cell(n)}" for n in (*partial, *report.notes)]
    return "\n".join([*out, "", marker]) + "\n"


def write_markdown(report: Report, path: str | Path) -> None:
    """Write the summary atomically (callers go through evalkit.check.outputs, which checks the path first)."""
    from evalkit.io import atomic_write_text

    atomic_write_text(path, render_markdown(report))

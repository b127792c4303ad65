"""The compact terminal table (rich), printed to stdout: a rendering of a Report's values."""

from __future__ import annotations

import sys

from evalkit.check.results import Outcome, Report, Verdict, group_reasons

# Colours come from the values: a flagged regression in a report-only compare passes, but must not look green.
_STYLE = {Outcome.FAIL: "bold red", Outcome.PASS: "green", Outcome.SKIPPED: "yellow"}


def print_report(report: Report, width: int | None = None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=width, highlight=False, soft_wrap=False)
    if width is None and not console.is_terminal:
        # CI logs are not terminals; rich's 80-column default would truncate backend names there.
        console.width = 160
    for w in report.warnings:
        console.print(f"[bold yellow]WARNING:[/] {escape(w)}", markup=True)
    table = Table(title=escape(report.title), title_justify="left", show_edge=False, pad_edge=False, box=None)
    table.add_column("backend", style="bold", no_wrap=True)
    table.add_column("check", no_wrap=True)
    for i, col in enumerate(report.columns):
        table.add_column(col, justify="left" if i == len(report.columns) - 1 else "right", no_wrap=True)
    for c in report.cases:
        st = "bold yellow" if c.outcome is Outcome.PASS and c.regression else _STYLE[c.outcome]
        row = c.row
        table.add_row(escape(report.shown_name(c.backend)), escape(c.name), *map(escape, row[:-1]),
                      f"[{st}]{escape(row[-1])}[/]")
    console.print(table)
    for label, value in report.context:  # e.g. where the noise floor comes from; also in summary.md
        console.print(f"{label}: {value}", markup=False)
    for line in report.partial_lines():
        console.print(line, markup=False)
    shown = [c for c in report.cases if c.outcome is Outcome.FAIL or (c.outcome is Outcome.PASS and c.regression)]
    # One line per (check, reason): "15 backends: CLIP weights not found" instead of the same line 15 times.
    for g in group_reasons(shown, use_detail=False):
        label = "[red]FAIL[/]" if g.outcome is Outcome.FAIL else "[yellow]REGRESSION[/]"
        text = g.message or next((c.detail for c in shown if c.name == g.name and c.backend in g.backends), "")
        console.print(f"{label} {escape(g.name)} ({escape(g.who())}): {escape(text)}", markup=True)
    for g in group_reasons([c for c in report.cases if c.outcome is Outcome.SKIPPED and c.message]):
        console.print(f"[yellow]SKIPPED[/] {escape(g.name)} ({escape(g.who())}): {escape(g.message)}", markup=True)
    for n in report.notes:
        console.print(n, markup=False)
    if report.summary_line:
        console.print(f"[bold {'yellow' if report.flagged else 'green'}]{escape(report.summary_line)}[/]", markup=True)
    colour = "green" if report.verdict is Verdict.PASS else "red"
    console.print(f"[bold {colour}]{escape(report.verdict_text)}[/]: {report.n_passed} passed, {report.n_failed} "
                  f"failed, {report.n_skipped} skipped", markup=True)
    sys.stdout.flush()

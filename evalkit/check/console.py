"""The compact terminal table (rich), printed to stdout."""

from __future__ import annotations

import sys

from evalkit.check.results import Report, group_reasons


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
    for col in report.columns:
        table.add_column(col, justify="right" if col not in ("result", "verdict") else "left", no_wrap=True)
    style = {"fail": "bold red", "pass": "green", "skipped": "yellow"}
    for c in report.cases:
        cells = list(c.cells)
        # A flagged regression in a report-only compare passes, but must not look green.
        st = "bold yellow" if c.outcome == "pass" and "regression" in cells[-1] else style[c.outcome]
        table.add_row(escape(c.backend), escape(c.name), *map(escape, cells[:-1]), f"[{st}]{escape(cells[-1])}[/]")
    console.print(table)
    for label, value in report.context:  # e.g. where the noise floor comes from; also in summary.md
        console.print(f"{label}: {value}", markup=False)
    shown = [c for c in report.cases if c.outcome == "fail" or (c.outcome == "pass" and "regression" in c.cells[-1])]
    # One line per (check, reason): "15 backends: CLIP weights not found" instead of the same line 15 times.
    for g in group_reasons(shown, use_detail=False):
        label = "[red]FAIL[/]" if g.outcome == "fail" else "[yellow]REGRESSION[/]"
        console.print(f"{label} {escape(g.name)} ({escape(g.who())}): {escape(g.message)}", markup=True)
    for g in group_reasons([c for c in report.cases if c.outcome == "skipped" and c.message]):
        console.print(f"[yellow]SKIPPED[/] {escape(g.name)} ({escape(g.who())}): {escape(g.message)}", markup=True)
    for n in report.notes:
        console.print(n, markup=False)
    colour = "red" if report.n_failed else "green"
    if report.summary_line:
        console.print(f"[bold {'yellow' if report.flagged else 'green'}]{escape(report.summary_line)}[/]", markup=True)
    console.print(f"[bold {colour}]{report.verdict}[/]: {report.n_passed} passed, {report.n_failed} failed, "
                  f"{report.n_skipped} skipped", markup=True)
    sys.stdout.flush()

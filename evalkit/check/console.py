"""The compact terminal table (rich), printed to stdout."""

from __future__ import annotations

import sys

from evalkit.check.results import Report


def print_report(report: Report, width: int | None = None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=width, highlight=False, soft_wrap=False)
    for w in report.warnings:
        console.print(f"[bold yellow]WARNING:[/] {escape(w)}", markup=True)
    table = Table(title=escape(report.title), title_justify="left", show_edge=False, pad_edge=False, box=None)
    table.add_column("backend", style="bold")
    table.add_column("check")
    for col in report.columns:
        table.add_column(col, justify="right" if col not in ("result", "verdict") else "left", overflow="fold")
    style = {"fail": "bold red", "pass": "green", "skipped": "yellow"}
    for c in report.cases:
        cells = list(c.cells)
        table.add_row(escape(c.backend), escape(c.name), *map(escape, cells[:-1]),
                      f"[{style[c.outcome]}]{escape(cells[-1])}[/]")
    console.print(table)
    for c in report.cases:
        if c.outcome == "fail":
            console.print(f"[red]FAIL[/] {escape(c.backend)} {escape(c.name)}: {escape(c.message)}", markup=True)
    for n in report.notes:
        console.print(n, markup=False)
    colour = "red" if report.n_failed else "green"
    console.print(f"[bold {colour}]{report.verdict}[/]: {report.n_passed} passed, {report.n_failed} failed, "
                  f"{report.n_skipped} skipped", markup=True)
    sys.stdout.flush()

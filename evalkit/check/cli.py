"""CLI for `evalkit check` and `evalkit compare`. Imports nothing heavy: the work happens in gate/compare."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

from evalkit.check.options import CHECK_OUTPUTS, COMPARE_OUTPUTS, CheckOptions, CompareOptions

if TYPE_CHECKING:  # only for annotations: this module imports nothing heavy at run time
    from evalkit.check.outputs import Outputs
    from evalkit.check.results import Report


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `evalkit check` (evalkit/check/options.py)."""
    CheckOptions.add_arguments(parser)
    parser.epilog = ("Exit status: 0 every bound holds, 1 a bound is violated, 2 the check cannot run. Outputs are "
                     "written after the inputs are validated, and never over a file evalkit did not write.")


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `evalkit compare` (evalkit/check/options.py)."""
    CompareOptions.add_arguments(parser)
    parser.epilog = ("Exit status: 0 done (or no significant regression with --fail-on-regression), "
                     "1 a significant regression with --fail-on-regression, 2 the runs cannot be compared.")


def _judge(kind: Literal["check", "compare"], opts: CheckOptions | CompareOptions, run_dir: Path,
           names: tuple[str, str], title: str, judge: Callable[[], "Report"]) -> int:
    """Claim the output paths (exit 2 before any input is read if one holds a file evalkit did not write), judge,
    then write the outputs atomically. When the inputs cannot be judged, the outputs become an ERROR rendering
    where evalkit's own outputs (or nothing) are, and the one-line error goes on to the CLI (exit 2)."""
    from evalkit.check import outputs
    from evalkit.check.results import error_report
    from evalkit.errors import EvalkitError

    t0 = time.perf_counter()
    out = outputs.plan(opts.junit, opts.markdown, run_dir / "check", names)
    outputs.claim(out)
    try:
        report = judge()
    except EvalkitError as e:
        _write(error_report(kind, title, str(e)), out, time.perf_counter() - t0, make_dirs=False)
        raise
    return _emit(report, out, opts.quiet, time.perf_counter() - t0)


def _write(report: "Report", out: "Outputs", elapsed: float, make_dirs: bool = True) -> list[Path]:
    from evalkit.check import outputs
    from evalkit.check.junit import render_junit
    from evalkit.check.markdown import render_markdown
    from evalkit.errors import EvalkitError

    try:
        return outputs.write(out, render_junit(report, elapsed) if out.junit else None,
                             render_markdown(report) if out.markdown else None, make_dirs=make_dirs)
    except EvalkitError:
        if make_dirs:
            raise
        return []  # an ERROR rendering that cannot be written must not hide the error that caused it


def _emit(report: "Report", out: "Outputs", quiet: bool, elapsed: float) -> int:
    from evalkit.check.console import print_report

    written = _write(report, out, elapsed)
    if quiet:
        # Warnings (a forced comparison, a bound on a metric's good side) must reach the CI log even with -q.
        for w in report.warnings:
            print(f"evalkit: warning: {w}", file=sys.stderr)
    else:
        print_report(report)
        if written:
            print(f"wrote {', '.join(map(str, written))}")
    return report.exit_code


def check_main(args: argparse.Namespace) -> int:
    """`evalkit check`: 0 pass, 1 a bound violated; EvalkitError (2) when the check cannot run."""
    from evalkit.check.gate import judge_check

    opts = CheckOptions.from_args(args)
    return _judge("check", opts, Path(opts.run_dir), CHECK_OUTPUTS, f"evalkit check: {Path(opts.run_dir).name}",
                  lambda: judge_check(opts))


def compare_main(args: argparse.Namespace) -> int:
    """`evalkit compare`: 0 done, 1 significant regression with --fail-on-regression; 2 not comparable."""
    from evalkit.check.compare import judge_compare

    opts = CompareOptions.from_args(args)
    opts.validate()
    return _judge("compare", opts, Path(opts.candidate_run), COMPARE_OUTPUTS,
                  f"evalkit compare: {Path(opts.base_run).name} → {Path(opts.candidate_run).name}",
                  lambda: judge_compare(opts))

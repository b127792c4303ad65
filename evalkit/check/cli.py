"""CLI for `evalkit check` and `evalkit compare`. Imports nothing heavy: the work happens in gate/compare."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

if TYPE_CHECKING:  # only for annotations: this module imports nothing heavy at run time
    from evalkit.check.outputs import Outputs
    from evalkit.check.results import Report


# check and compare both write into RUN/check/; compare's names differ so that a CI job running both on the
# same candidate run keeps both reports.
CHECK_OUTPUTS = ("junit.xml", "summary.md")
COMPARE_OUTPUTS = ("compare-junit.xml", "compare-summary.md")


def _add_outputs(parser: argparse.ArgumentParser, what: str, names: tuple[str, str]) -> None:
    parser.add_argument("--junit", metavar="PATH", default=None,
                        help=f"JUnit XML output (default: {what}/check/{names[0]}); '-' to skip")
    parser.add_argument("--markdown", metavar="PATH", default=None,
                        help=f"Markdown summary for PR comments (default: {what}/check/{names[1]}); '-' to skip")
    parser.add_argument("--quiet", "-q", action="store_true", help="do not print the table to the terminal")
    parser.add_argument("--verify", action="store_true",
                        help="hash every image the metrics rest on (default: a file whose size and mtime match its "
                             "generation record is trusted, as in score)")


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `evalkit check`."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory to check (reports/<run-id>)")
    parser.add_argument("--thresholds", "-t", metavar="FILE.toml", required=True,
                        help="bounds per backend; start from thresholds.example.toml (docs/release-gate.md)")
    parser.add_argument("--use-ci", action="store_true",
                        help="judge the confidence bound instead of the mean: ci_high against a _max bound, "
                             "ci_low against a _min bound (stricter; metrics without a CI use their value)")
    parser.add_argument("--calibration", metavar="FILE", default=None,
                        help="the noise floor (calibration.json) for `{ noise = k }` bounds and the floor/margin "
                             "columns (default: RUN_DIR/calibration.json when it exists; `evalkit calibrate`)")
    parser.add_argument("--require-coverage", action="store_true",
                        help="fail when a backend of the run (other than the reference) has no bound, or a judged "
                             "backend's generation record lacks prompts (default: said in every output, not failing)")
    parser.add_argument("--require-backends", action="store_true",
                        help="fail when the thresholds file has a [backends.\"NAME\"] section for a backend the run "
                             "lacks (default: said in every output, not judged)")
    parser.add_argument("--allow-calibration-mismatch", action="store_true",
                        help="use a calibration made under other settings than the run (default: refused, exit 2, "
                             "naming every differing setting); the outputs then warn")
    _add_outputs(parser, "RUN_DIR", CHECK_OUTPUTS)
    parser.epilog = ("Exit status: 0 every bound holds, 1 a bound is violated, 2 the check cannot run. Outputs are "
                     "written after the inputs are validated, and never over a file evalkit did not write.")


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `evalkit compare`."""
    parser.add_argument("base_run", metavar="BASE_RUN", help="the run to compare against (e.g. the last release)")
    parser.add_argument("candidate_run", metavar="CANDIDATE_RUN", help="the new run")
    parser.add_argument("--fail-on-regression", action="store_true",
                        help="exit 1 when any backend regresses significantly (default: report only, exit 0)")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="significance level of the paired bootstrap; the CI is 1-alpha (default 0.05)")
    parser.add_argument("--n-bootstrap", type=int, default=10000, metavar="N",
                        help="bootstrap resamples over prompts (default 10000; seeded, so reruns agree)")
    parser.add_argument("--memory-tolerance", type=float, default=0.05, metavar="FRAC",
                        help="flag peak/after-load memory growing by more than this fraction (default 0.05)")
    parser.add_argument("--latency-tolerance", type=float, default=0.10, metavar="FRAC",
                        help="flag median latency growing by more than this fraction (default 0.10; "
                             "only when both runs ran on the same device)")
    parser.add_argument("--force", action="store_true",
                        help="compare runs that differ in prompts, seeds, resolution, steps, guidance or model; "
                             "the outputs say so prominently")
    _add_outputs(parser, "CANDIDATE_RUN", COMPARE_OUTPUTS)
    parser.epilog = ("Exit status: 0 done (or no significant regression with --fail-on-regression), "
                     "1 a significant regression with --fail-on-regression, 2 the runs cannot be compared.")


def _judge(kind: Literal["check", "compare"], args: argparse.Namespace, run_dir: Path, names: tuple[str, str],
           title: str, judge: Callable[[], "Report"]) -> int:
    """Claim the output paths (exit 2 before any input is read if one holds a file evalkit did not write), judge,
    then write the outputs atomically. When the inputs cannot be judged, the outputs become an ERROR rendering
    where evalkit's own outputs (or nothing) are, and the one-line error goes on to the CLI (exit 2)."""
    from evalkit.check import outputs
    from evalkit.check.results import error_report
    from evalkit.errors import EvalkitError

    t0 = time.perf_counter()
    out = outputs.plan(args.junit, args.markdown, run_dir / "check", names)
    outputs.claim(out)
    try:
        report = judge()
    except EvalkitError as e:
        _write(error_report(kind, title, str(e)), out, time.perf_counter() - t0, make_dirs=False)
        raise
    return _emit(report, out, args.quiet, time.perf_counter() - t0)


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
    from evalkit.check.gate import check_run

    return _judge("check", args, Path(args.run_dir), CHECK_OUTPUTS, f"evalkit check: {Path(args.run_dir).name}",
                  lambda: check_run(args.run_dir, args.thresholds, use_ci=args.use_ci, calibration=args.calibration,
                                    require_coverage=args.require_coverage, require_backends=args.require_backends,
                                    allow_calibration_mismatch=args.allow_calibration_mismatch, verify=args.verify))


def compare_main(args: argparse.Namespace) -> int:
    """`evalkit compare`: 0 done, 1 significant regression with --fail-on-regression; 2 not comparable."""
    from evalkit.check.compare import compare_runs
    from evalkit.errors import EvalkitError

    if not 0 < args.alpha < 1:
        raise EvalkitError(f"--alpha must be between 0 and 1, not {args.alpha}")
    if args.n_bootstrap < 100:
        raise EvalkitError(f"--n-bootstrap must be at least 100, not {args.n_bootstrap}")
    return _judge("compare", args, Path(args.candidate_run), COMPARE_OUTPUTS,
                  f"evalkit compare: {Path(args.base_run).name} → {Path(args.candidate_run).name}",
                  lambda: compare_runs(args.base_run, args.candidate_run, alpha=args.alpha,
                                       n_bootstrap=args.n_bootstrap, force=args.force,
                                       fail_on_regression=args.fail_on_regression,
                                       memory_tolerance=args.memory_tolerance,
                                       latency_tolerance=args.latency_tolerance, verify=args.verify))

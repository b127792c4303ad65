"""CLI for `evalkit check` and `evalkit compare`. Imports nothing heavy: the work happens in gate/compare."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


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
    _add_outputs(parser, "RUN_DIR", CHECK_OUTPUTS)
    parser.epilog = "Exit status: 0 every bound holds, 1 a bound is violated, 2 the check cannot run."


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


def _outputs(args: argparse.Namespace, run_dir: Path, names: tuple[str, str]) -> tuple[Path | None, Path | None]:
    default = run_dir / "check"
    junit = None if args.junit == "-" else Path(args.junit) if args.junit else default / names[0]
    md = None if args.markdown == "-" else Path(args.markdown) if args.markdown else default / names[1]
    return junit, md


def _clear_stale(paths: list[Path | None]) -> None:
    # A CI job uploads these files whatever the exit code: an old PASS must not survive a run that errored.
    for p in paths:
        if p is not None and p.is_file():
            p.unlink()


def _emit(report, junit: Path | None, md: Path | None, quiet: bool, elapsed: float) -> int:
    from evalkit.check.console import print_report
    from evalkit.check.junit import write_junit
    from evalkit.check.markdown import write_markdown
    from evalkit.errors import EvalkitError

    for path in (junit, md):
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise EvalkitError(f"{path.parent}: cannot create output directory ({e.strerror})") from None
    if junit is not None:
        write_junit(report, junit, elapsed)
    if md is not None:
        write_markdown(report, md)
    if quiet:
        # Warnings (a forced comparison, a bound on a metric's good side) must reach the CI log even with -q.
        for w in report.warnings:
            print(f"evalkit: warning: {w}", file=sys.stderr)
    else:
        print_report(report)
        written = [str(p) for p in (junit, md) if p is not None]
        if written:
            print(f"wrote {', '.join(written)}")
    return report.exit_code


def check_main(args: argparse.Namespace) -> int:
    """`evalkit check`: 0 pass, 1 a bound violated; EvalkitError (2) when the check cannot run."""
    from evalkit.check.gate import check_run

    t0 = time.perf_counter()
    junit, md = _outputs(args, Path(args.run_dir), CHECK_OUTPUTS)
    _clear_stale([junit, md])
    report = check_run(args.run_dir, args.thresholds, use_ci=args.use_ci, calibration=args.calibration)
    return _emit(report, junit, md, args.quiet, time.perf_counter() - t0)


def compare_main(args: argparse.Namespace) -> int:
    """`evalkit compare`: 0 done, 1 significant regression with --fail-on-regression; 2 not comparable."""
    from evalkit.check.compare import compare_runs
    from evalkit.errors import EvalkitError

    if not 0 < args.alpha < 1:
        raise EvalkitError(f"--alpha must be between 0 and 1, not {args.alpha}")
    if args.n_bootstrap < 100:
        raise EvalkitError(f"--n-bootstrap must be at least 100, not {args.n_bootstrap}")
    t0 = time.perf_counter()
    junit, md = _outputs(args, Path(args.candidate_run), COMPARE_OUTPUTS)
    _clear_stale([junit, md])
    report = compare_runs(args.base_run, args.candidate_run, alpha=args.alpha, n_bootstrap=args.n_bootstrap,
                          force=args.force, fail_on_regression=args.fail_on_regression,
                          memory_tolerance=args.memory_tolerance, latency_tolerance=args.latency_tolerance)
    return _emit(report, junit, md, args.quiet, time.perf_counter() - t0)

"""`evalkit check`'s and `evalkit compare`'s options, declared once (evalkit/options.py derives their flags, the
signatures and docstrings of evalkit.check and evalkit.compare, from these dataclasses). Light: no torch, no stage.
"""

from __future__ import annotations

from dataclasses import dataclass

from evalkit.errors import EvalkitError
from evalkit.options import StageOptions, option

# check and compare both write into RUN/check/; compare's names differ so that a CI job running both on the
# same candidate run keeps both reports.
CHECK_OUTPUTS = ("junit.xml", "summary.md")
COMPARE_OUTPUTS = ("compare-junit.xml", "compare-summary.md")

_VERIFY = ("hash every image the metrics rest on (default: a file whose size and mtime match its generation record "
           "is trusted, as in score)")
_QUIET = "do not print the table to the terminal"


def _junit(run: str, names: tuple[str, str]) -> str:
    return f"JUnit XML output (default: {run}/check/{names[0]}); '-' to skip"


def _markdown(run: str, names: tuple[str, str]) -> str:
    return f"Markdown summary for PR comments (default: {run}/check/{names[1]}); '-' to skip"


@dataclass
class CheckOptions(StageOptions):
    """What `evalkit check RUN_DIR --thresholds FILE` (and `evalkit.check(run_dir, thresholds, ...)`) is asked for.
    The outputs (JUnit, Markdown, the terminal's table) are the command line's: the API returns the result."""

    run_dir: str = option(help="run directory to check (reports/<run-id>)", positional=True, metavar="RUN_DIR",
                          api_type="PathLike")
    thresholds: str = option(help="bounds per backend; start from thresholds.example.toml (docs/release-gate.md)",
                             aliases=("-t",), metavar="FILE.toml", api_type="PathLike")
    use_ci: bool = option(False, help="judge the confidence bound instead of the mean: ci_high against a _max "
                                      "bound, ci_low against a _min bound (stricter; metrics without a CI use "
                                      "their value)")
    calibration: str | None = option(
        None, metavar="FILE", api_type="PathLike | None",
        help="the noise floor (calibration.json) for `{ noise = k }` bounds and the floor/margin columns "
             "(default: RUN_DIR/calibration.json when it exists; `evalkit calibrate`)")
    require_coverage: bool = option(
        False, help="fail when a backend of the run (other than the reference) has no bound, or a judged "
                    "backend's generation record lacks prompts (default: said in every output, not failing)")
    require_backends: bool = option(
        False, help="fail when the thresholds file has a [backends.\"NAME\"] section for a backend the run lacks "
                    "(default: said in every output, not judged)")
    allow_calibration_mismatch: bool = option(
        False, help="use a calibration made under other settings than the run (default: refused, exit 2, naming "
                    "every differing setting); the outputs then warn")
    verify: bool = option(False, help=_VERIFY)
    junit: str | None = option(None, metavar="PATH", api=False, help=_junit("RUN_DIR", CHECK_OUTPUTS))
    markdown: str | None = option(None, metavar="PATH", api=False, help=_markdown("RUN_DIR", CHECK_OUTPUTS))
    quiet: bool = option(False, aliases=("-q",), api=False, help=_QUIET)


@dataclass
class CompareOptions(StageOptions):
    """What `evalkit compare BASE_RUN CANDIDATE_RUN` (and `evalkit.compare(base_run, candidate_run, ...)`) is
    asked for."""

    base_run: str = option(help="the run to compare against (e.g. the last release)", positional=True,
                           metavar="BASE_RUN", api_type="PathLike")
    candidate_run: str = option(help="the new run", positional=True, metavar="CANDIDATE_RUN", api_type="PathLike")
    fail_on_regression: bool = option(
        False, help="exit 1 when any backend regresses significantly, or lacks a backend the base has "
                    "(default: report only, exit 0)")
    alpha: float = option(0.05, help="significance level of the paired bootstrap; the CI is 1-alpha")
    n_bootstrap: int = option(10000, metavar="N",
                              help="bootstrap resamples over prompts (seeded, so reruns agree; at least 100)")
    memory_tolerance: float = option(0.05, metavar="FRAC",
                                     help="flag peak/after-load memory growing by more than this fraction")
    latency_tolerance: float = option(
        0.10, metavar="FRAC",
        help="flag median latency growing by more than this fraction (only when both runs ran on the same device)")
    force: bool = option(
        False, help="compare runs that differ in prompts, seeds, resolution, steps, guidance or model; the outputs "
                    "say so prominently")
    verify: bool = option(False, help=_VERIFY)
    junit: str | None = option(None, metavar="PATH", api=False, help=_junit("CANDIDATE_RUN", COMPARE_OUTPUTS))
    markdown: str | None = option(None, metavar="PATH", api=False,
                                  help=_markdown("CANDIDATE_RUN", COMPARE_OUTPUTS))
    quiet: bool = option(False, aliases=("-q",), api=False, help=_QUIET)

    def validate(self) -> None:
        """The values argparse's types cannot refuse: a one-line error naming the option."""
        if not 0 < self.alpha < 1:
            raise EvalkitError(f"--alpha must be between 0 and 1, not {self.alpha}")
        if self.n_bootstrap < 100:
            raise EvalkitError(f"--n-bootstrap must be at least 100, not {self.n_bootstrap}")

"""`evalkit report RUN_DIR`. Light on purpose: nothing heavy is imported until the report is built."""

from __future__ import annotations

import argparse

from evalkit.options import option_fields
from evalkit.report.options import RUN_FLAG_PREFIX, ReportOptions

# Under `evalkit run`, the report's progress follows the run's own output: no --report-quiet.
RUN_FIELDS = tuple(f.name for f in option_fields(ReportOptions) if f.name not in ("run_dir", "quiet"))


def add_report_arguments(parser: argparse.ArgumentParser, for_run: bool = False) -> None:
    """Add the report's options (evalkit/report/options.py). Under `evalkit run` (for_run=True) every flag is
    prefixed `--report-` so it cannot clash with generate's or score's, and the run directory comes from generate;
    `evalkit report` accepts the prefixed spellings too (scripts written against `evalkit run`)."""
    if for_run:
        group = parser.add_argument_group("report")
        ReportOptions.add_arguments(group, only=RUN_FIELDS, flag_prefix=RUN_FLAG_PREFIX)
        group.add_argument("--no-report", dest="report_skip", action="store_true", help="do not write the HTML report")
        return
    ReportOptions.add_arguments(parser)
    for f in option_fields(ReportOptions):
        if f.name in RUN_FIELDS:  # the first flag's default stays the dest's default
            extra = {"action": "store_true"} if f.is_switch else {"type": f.base, "choices": f.spec.choices}
            parser.add_argument(f"--{RUN_FLAG_PREFIX}-{f.flag[2:]}", dest=f.name, help=argparse.SUPPRESS, **extra)


def report_main(args: argparse.Namespace) -> int:
    """Build the report for `args.run_dir` and print where it is."""
    if getattr(args, "report_skip", False):
        return 0
    from evalkit.report.build import report_with
    from evalkit.rundir import display_path

    opts = ReportOptions.from_args(args)
    out = report_with(opts)
    if not opts.quiet:
        print(f"Report: {display_path(out)}")
    return 0

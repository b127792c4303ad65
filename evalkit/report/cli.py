"""`evalkit report RUN_DIR`. Light on purpose: nothing heavy is imported until the report is built."""

from __future__ import annotations

import argparse

from evalkit.report.options import FIGURE_FORMATS, parse_formats

MEMORY_AXIS_CHOICES = ["auto", "peak_reserved", "peak_allocated", "after_load_reserved", "after_load_allocated",
                       "load_peak_reserved", "footprint", "cpu_peak_rss"]  # evalkit.report.data.MEMORY_AXES, kept here to stay light


def add_report_arguments(parser: argparse.ArgumentParser, for_run: bool = False) -> None:
    """Add the report's options. Under `evalkit run` (for_run=True) every option is prefixed `--report-`
    so it cannot clash with generate's or score's, and the run directory comes from generate."""
    if not for_run:
        parser.add_argument("run_dir", help="run directory written by `evalkit generate` / `evalkit run`")
    group = parser.add_argument_group("report") if for_run else parser
    thumb = ["--report-thumb-size"] if for_run else ["--thumb-size", "--report-thumb-size"]
    group.add_argument(*thumb, dest="report_thumb_size", type=int, default=256, metavar="PX",
                       help="longest side of the page's WebP thumbnails (default 256); full-resolution PNGs are linked")
    nofig = ["--report-no-figures"] if for_run else ["--no-figures", "--report-no-figures"]
    group.add_argument(*nofig, dest="report_no_figures", action="store_true",
                       help="skip the matplotlib figures (PDF/SVG/PNG); the tables and the page are still written")
    fmts = ["--report-formats"] if for_run else ["--formats", "--report-formats"]
    group.add_argument(*fmts, dest="report_formats", default=",".join(FIGURE_FORMATS), metavar="LIST",
                       help="comma list of figure formats among svg, pdf, png (default: all three; the page needs "
                            "svg or png)")
    axis = ["--report-memory-axis"] if for_run else ["--memory-axis", "--report-memory-axis"]
    group.add_argument(*axis, dest="report_memory_axis", choices=MEMORY_AXIS_CHOICES, default="auto",
                       help="memory number on the x-axis of quality-vs-memory plots (default: peak_reserved on CUDA, "
                            "the weight footprint on a CPU run)")
    partial = ["--report-include-partial"] if for_run else ["--include-partial", "--report-include-partial"]
    group.add_argument(*partial, dest="report_include_partial", action="store_true",
                       help="let backends that quantized less than their name says on this device (marked †) "
                            "win the summary cards and sit on Pareto fronts (default: shown, but left out of both)")
    if for_run:
        group.add_argument("--no-report", dest="report_skip", action="store_true", help="do not write the HTML report")


def report_main(args: argparse.Namespace) -> int:
    """Build the report for `args.run_dir` and print where it is."""
    if getattr(args, "report_skip", False):
        return 0
    from evalkit.report.build import build_report

    axis = getattr(args, "report_memory_axis", "auto")
    size = int(getattr(args, "report_thumb_size", 256) or 256)
    if not 32 <= size <= 2048:
        from evalkit.errors import EvalkitError

        raise EvalkitError(f"--thumb-size {size}: choose between 32 and 2048 pixels")
    out = build_report(
        args.run_dir,
        thumb_size=size,
        formats=parse_formats(getattr(args, "report_formats", None)),
        figures=not getattr(args, "report_no_figures", False),
        memory_axis=None if axis in (None, "auto") else axis,
        include_partial=bool(getattr(args, "report_include_partial", False)),
    )
    from evalkit.rundir import display_path

    print(f"Report: {display_path(out)}")
    return 0


"""`evalkit report`'s options, declared once (evalkit/options.py derives its flags, `evalkit run`'s --report-*
flags, and evalkit.report's signature and docstring from ReportOptions), and the values both the command (cli.py)
and the build (build.py) check.

Its own module so that build.py need not import the command and the command need not import the build: each
imports this, stdlib-light, and nothing heavy is loaded by `evalkit report --help`.
"""

from __future__ import annotations

from dataclasses import dataclass

from evalkit.options import StageOptions, option

FIGURE_FORMATS = ("svg", "pdf", "png")  # the page shows SVG (else PNG); PDF for papers, PNG for slides


def parse_formats(text: str | None) -> tuple[str, ...]:
    """`svg,png` -> ("svg", "png") in the canonical order; a one-line EvalkitError for anything else."""
    from evalkit.errors import EvalkitError

    if text is None:
        return FIGURE_FORMATS
    asked = [f.strip().lower().lstrip(".") for f in text.split(",") if f.strip()]
    unknown = [f for f in asked if f not in FIGURE_FORMATS]
    if unknown or not asked:
        raise EvalkitError(f"--formats {text!r}: choose among {', '.join(FIGURE_FORMATS)} (comma-separated)")
    if not {"svg", "png"} & set(asked):
        raise EvalkitError(f"--formats {text!r}: the page shows each figure as SVG or PNG; add svg or png")
    return tuple(f for f in FIGURE_FORMATS if f in asked)


# The memory number on the x-axis of quality-vs-memory plots (evalkit.report.data.MEMORY_AXES, here to stay light).
MEMORY_AXIS_CHOICES = ("auto", "peak_reserved", "peak_allocated", "after_load_reserved", "after_load_allocated",
                       "load_peak_reserved", "footprint", "cpu_peak_rss")
# `evalkit run` takes the report's options as --report-<flag>; `evalkit report` accepts those spellings too.
RUN_FLAG_PREFIX = "report"


@dataclass
class ReportOptions(StageOptions):
    """What `evalkit report RUN_DIR` (and `evalkit.report(run_dir, ...)`) is asked for."""

    run_dir: str = option(help="run directory written by `evalkit generate` / `evalkit run`", positional=True,
                          metavar="run_dir", api_type="PathLike")
    thumb_size: int = option(256, metavar="PX", help="longest side of the page's WebP thumbnails, 32 to 2048 "
                                                     "pixels; full-resolution PNGs are linked")
    no_figures: bool = option(False, help="skip the matplotlib figures (PDF/SVG/PNG); the tables and the page are "
                                          "still written")
    formats: str = option(",".join(FIGURE_FORMATS), metavar="LIST", api_type="str | Sequence[str]",
                          help="comma list of figure formats among svg, pdf, png (the page needs svg or png)")
    memory_axis: str = option("auto", choices=MEMORY_AXIS_CHOICES,
                              help="memory number on the x-axis of quality-vs-memory plots (auto: peak_reserved on "
                                   "CUDA, the weight footprint on a CPU run)")
    include_partial: bool = option(
        False, help="let backends that quantized less than their name says on this device (marked †) win the "
                    "summary cards and sit on Pareto fronts (default: shown, but left out of both)")
    quiet: bool = option(False, help="print only errors, neither the report's progress nor its path")

    def validate(self) -> tuple[str, ...]:
        """The figure formats, in canonical order; a one-line error for a value argparse's types cannot refuse."""
        from evalkit.errors import EvalkitError

        if not 32 <= self.thumb_size <= 2048:
            raise EvalkitError(f"--thumb-size {self.thumb_size}: choose between 32 and 2048 pixels")
        return parse_formats(self.formats)

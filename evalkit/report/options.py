"""The report's option values that both the command (cli.py) and the build (build.py) check.

Its own module so that build.py need not import the command and the command need not import the build: each
imports this, stdlib-light, and nothing heavy is loaded by `evalkit report --help`.
"""

from __future__ import annotations

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

"""Report stage: a self-contained HTML report, paper figures and tables, and a blind "spot the quantized model" test.

`build_report(run_dir)` is the public API; `evalkit report RUN_DIR` is the command. Heavy imports
(numpy, PIL, matplotlib) happen inside the build, never at import time of this package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def build_report(run_dir: str | Path, **kwargs: Any) -> Path:
    """Write index.html (+ figures/, tables/, thumbs/) into `run_dir`; return the path of index.html.

    Keyword arguments: thumb_size (px, default 256), figures (bool), memory_axis (see `evalkit report --help`),
    include_partial (bool), quiet, formats (figure formats, default
    ("svg", "pdf", "png"); the page needs svg or png).
    """
    from evalkit.report.build import build_report as _build

    return _build(run_dir, **kwargs)


__all__ = ["build_report"]

"""Helpers for the report tests: synthetic run directories that follow docs/run-directory.md exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evalkit.report.synthetic import FIFTEEN_BACKENDS, make_synthetic_run

XSS_PROMPTS = [
    "A cat <script>alert(1)</script> on a mat",
    '"><img src=x onerror=alert(1)> a dog',
    "Noir style & </script><script>alert(2)</script> {braces} 50% $x_1$ #tag ~tilde^",
]

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def synthetic_run(tmp_path: Path, name: str = "run", **kwargs: Any) -> Path:
    """A small CPU run: 3 prompts, 5 backends, 64 px, scored, with one failed and one skipped metric by default."""
    kwargs.setdefault("backends", ["bf16", "bnb-nf4", "torchao-int8wo", "gguf-q4_1", "quanto-int8"])
    return make_synthetic_run(tmp_path / name, **kwargs)


__all__ = ["ARTIFACTS", "FIFTEEN_BACKENDS", "XSS_PROMPTS", "make_synthetic_run", "synthetic_run"]

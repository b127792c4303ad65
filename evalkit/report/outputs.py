"""What the report wrote last time, so a rebuild removes the figures and tables of metrics the run no longer has.

Rule: the report deletes only files that it listed itself in `REPORT_OUTPUTS` on an earlier build, that sit
under figures/ or tables/ of this run, and that this build did not write again. A file a user put there, or one
an evalkit older than this list wrote, is never touched.
"""

from __future__ import annotations

import json
from pathlib import Path

from evalkit.io import atomic_write_text

REPORT_OUTPUTS = ".evalkit-report-outputs.json"
OWNED_DIRS = ("figures", "tables")


def _previous(root: Path) -> list[str]:
    try:
        raw = json.loads((root / REPORT_OUTPUTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # no list (first build, or an older evalkit): delete nothing
    files = raw.get("files") if isinstance(raw, dict) else None
    return [f for f in files if isinstance(f, str)] if isinstance(files, list) else []


def _owned(root: Path, rel: str) -> Path | None:
    """`rel` as a path under figures/ or tables/ of `root`, or None for anything else (never leave those folders)."""
    parts = Path(rel).parts
    if len(parts) != 2 or parts[0] not in OWNED_DIRS or parts[1] in ("", ".", ".."):
        return None
    path = root / parts[0] / parts[1]
    try:
        path.resolve().relative_to((root / parts[0]).resolve())
    except ValueError:
        return None
    return path


def remove_stale_outputs(root: Path, written: list[Path]) -> list[Path]:
    """Delete what an earlier build listed and this one did not write; record this build's list. Returns removed."""
    root = Path(root)
    now = sorted({Path(p).resolve().relative_to(root.resolve()).as_posix() for p in written})
    removed = []
    for rel in _previous(root):
        if rel in now:
            continue
        path = _owned(root, rel)
        if path is not None and path.is_file() and not path.is_symlink():
            path.unlink()
            removed.append(path)
    atomic_write_text(root / REPORT_OUTPUTS, json.dumps({"files": now}, indent=1) + "\n")
    return removed

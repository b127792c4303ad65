"""Content keys of a stage's inputs, so an unchanged rerun skips its work without importing torch (issue #16.4).

A stage stores the key of what it read next to what it wrote; a rerun computes the key again from the same
files and options and, when it matches and the outputs are still there, does nothing. Every input that can change
a number or a page belongs in the key; anything the key does not cover (a weight file added to a cache, a new
version of evalkit's templates) is fingerprinted by stat, which is cheap and errs towards redoing the work.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from evalkit.io import atomic_write_json
from evalkit.record_types import InputsKey

# Packages whose version changes a score: a new release of one of them invalidates every stored score key. torch
# itself is read from its Library record (evalkit/quantizers/base.py), which holds library names once.
METRIC_PACKAGES = ("torchmetrics", "numpy", "pillow", "scipy", "scikit-image", "transformers", "open-clip-torch",
                   "lpips")


def score_packages() -> tuple[str, ...]:
    from evalkit.quantizers.registry import LIBRARIES

    return tuple(LIBRARIES["torch"].versioned) + METRIC_PACKAGES


def content_key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def json_file_content(path: Path, volatile: Iterable[str] = ()) -> Any:
    """A JSON file's content minus top-level keys that change on every write without changing the meaning
    (timestamps, the command line); None when the file is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data, dict):
        for k in volatile:
            data.pop(k, None)
    return data


def tree_fingerprint(root: Path | None, max_files: int = 2000) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every file below `root` (weights caches, a --real-dir, templates)."""
    if root is None or not root.is_dir():
        return []
    out: list[tuple[str, int, int]] = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            try:
                st = p.stat()
            except OSError:
                continue
            out.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
            if len(out) >= max_files:
                return sorted(out)
    return sorted(out)


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache huggingface_hub would read, found without importing it."""
    if env := os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(env).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def stored_key_matches(path: Path, key: str, outputs: Iterable[Path]) -> bool:
    """True when `path` holds an InputsKey record of `key` and every output the stage wrote is still there."""
    from evalkit.shapes import ShapeError, validate

    stored = json_file_content(path)
    try:
        validate(stored, InputsKey, "inputs key")
    except ShapeError:
        return False  # not a key this evalkit wrote: the stage reruns, which is always safe
    return stored["key"] == key and all(p.exists() for p in outputs)


def store_key(path: Path, key: str, what: str) -> None:
    record: InputsKey = {"key": key, "covers": what}
    atomic_write_json(path, record)


__all__ = ["METRIC_PACKAGES", "content_key", "score_packages", "hf_hub_cache", "json_file_content", "package_versions", "store_key",
           "stored_key_matches", "tree_fingerprint"]

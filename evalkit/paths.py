"""Where evalkit keeps its caches (built tiny models, random full-size models, prepared metric weights)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$EVALKIT_CACHE`, else `$XDG_CACHE_HOME/evalkit`, else `~/.cache/evalkit`."""
    if env := os.environ.get("EVALKIT_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "evalkit"


def weights_cache_dir() -> Path:
    """Where prepared metric weights and the memo of users' weight hashes live."""
    return cache_dir() / "weights"

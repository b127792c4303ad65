"""What one scoring pass carries (`State`) and one backend's planned work (`Plan`): the types the score stage's
helpers (broken, summary, distributed, compare) share, in a module of their own so none of them imports the stage."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.score.cache import ScoreCache
from evalkit.score.common import Item, Options


@dataclass
class State:
    cache: ScoreCache
    opts: Options
    device: str
    ref: str
    items: dict[str, list[Item]]
    decoder: Any = None
    bar: Any = None
    real_feats: dict[str, Any] = field(default_factory=dict)  # extractor -> (features, n, n_corrupt) | unavailable
    dist_n: dict[str, dict[str, int]] = field(default_factory=dict)  # extractor -> backend -> n
    waited: float = 0.0  # seconds the scoring loop waited for decoded pixels
    # Decoded reference images, shared by every backend's pairs (a reference is decoded once per run, not once
    # per backend) up to EVALKIT_REF_CACHE_GIB (default 2 GiB: ~680 images at 1024²).
    ref_images: dict[Path, Any] = field(default_factory=dict)
    ref_bytes: int = 0
    # References on their way from the decoding workers, by the request bringing them; guarded by ref_lock with
    # ref_images (submitted from the main thread, settled in the upload thread).
    ref_inflight: dict[Path, Any] = field(default_factory=dict)
    ref_lock: threading.Lock = field(default_factory=threading.Lock)
    claimed: set[tuple[str, ...]] = field(default_factory=set)  # work planned this run, by content key
    # Broken-output tripwires per backend (evalkit.score.broken): entries, {item: reason} left out of every mean,
    # {item: reason} of pairs whose reference is broken, notes on tripwires not evaluated.
    broken: dict[str, tuple[list[dict[str, Any]], dict[int, str], dict[int, str], list[str]]] = \
        field(default_factory=dict)


@dataclass
class Plan:
    """One backend's uncached work: paired metric -> item indices, extractor / prompt metric -> items, and the
    chunks they are decoded and scored in."""
    b: str
    paired: dict[str, list[int]]
    feats: dict[str, set[int]]
    prompt: dict[str, set[int]]
    need_pair: set[int]
    parts: list[list[int]]
    task: Any = None

"""The score cache, metrics/cache/: JSON tables of per-pair / per-image values and .npy feature files, keyed by
content hash, so a rerun on an unchanged run decodes nothing and runs no network.

Disabled (`--no-cache`), it neither reads nor writes the folder but still holds this run's values in memory:
everything is computed, and FID/KID get their features (#13.8).

Read-only (`writable=False`, a non-zero rank of a distributed score), it reads the folder but keeps what it computes
in memory. Every cache records what this process computed (`journal()`), so that rank 0 can apply the other
ranks' work (`apply`) and be the only writer (evalkit.score.distributed)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from evalkit.errors import EvalkitError
from evalkit.io import atomic_write_bytes, atomic_write_json, read_json


def json_key(obj: Any) -> bytes:
    """Canonical JSON bytes of `obj`: what cache keys are hashed from."""
    return json.dumps(obj, sort_keys=True).encode()


class ScoreCache:
    """metrics/cache/: tables ({key: value}, saved as <name>.json) and features (features/<key>/<sha>.npy)."""

    def __init__(self, root: Path, enabled: bool = True, writable: bool = True) -> None:
        self.root = root
        self.enabled = enabled
        self.writable = writable
        self._tables: dict[str, dict[str, Any]] = {}
        self._dirty: set[str] = set()
        self._features: dict[tuple[str, str], np.ndarray] = {}  # kept in memory unless written to disk
        # What this process computed, in order: table puts and feature keys (the arrays stay in _features or on disk)
        self._puts: dict[str, dict[str, Any]] = {}
        self._new_features: list[tuple[str, str]] = []

    def table(self, name: str) -> dict[str, Any]:
        if name not in self._tables:
            path = self.root / f"{name}.json"
            data: dict[str, Any] = {}
            if self.enabled and path.exists():
                try:
                    data = read_json(path)
                except EvalkitError:
                    data = {}  # a damaged cache costs a recompute, never a wrong number
            self._tables[name] = data
        return self._tables[name]

    def put(self, name: str, key: str, value: Any) -> None:
        self.table(name)[key] = value
        self._puts.setdefault(name, {})[key] = value
        self._dirty.add(name)

    def save(self) -> None:
        if not self.enabled or not self.writable:
            return
        for name in sorted(self._dirty):
            atomic_write_json(self.root / f"{name}.json", self._tables[name])
        self._dirty.clear()

    def _feat_path(self, key: str, sha: str) -> Path:
        return self.root / "features" / key / sha[:2] / f"{sha}.npy"

    def get_features(self, key: str, sha: str) -> np.ndarray | None:
        if (key, sha) in self._features:
            return self._features[(key, sha)]
        if not self.enabled:
            return None
        p = self._feat_path(key, sha)
        if not p.exists():
            return None
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError):
            return None

    def put_features(self, key: str, sha: str, feats: np.ndarray) -> None:
        arr = np.asarray(feats, dtype=np.float64)
        self._new_features.append((key, sha))
        if not self.enabled or not self.writable:
            self._features[(key, sha)] = arr
            return
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        atomic_write_bytes(self._feat_path(key, sha), buf.getvalue())

    def journal(self) -> dict[str, Any]:
        """Everything this process put, with the feature arrays (float64, exact): what `apply` takes."""
        feats = [(k, s, self.get_features(k, s)) for k, s in self._new_features]
        return {"tables": {n: dict(t) for n, t in self._puts.items()}, "features": feats}

    def apply(self, journal: dict[str, Any]) -> None:
        """Put another process's work (its `journal()`) into this cache, as if computed here."""
        for name, entries in journal["tables"].items():
            for key, value in entries.items():
                self.put(name, key, value)
        for key, sha, arr in journal["features"]:
            if arr is None:  # its disk copy vanished before it was read back: a recompute, never a wrong number
                continue
            self.put_features(key, sha, arr)

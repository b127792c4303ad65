"""The score cache, metrics/cache/: JSON tables of per-pair / per-image values and .npy feature files, keyed by
content hash, so a rerun on an unchanged run decodes nothing and runs no network.

Disabled (`--no-cache`), it neither reads nor writes the folder but still holds this run's values in memory:
everything is computed, and FID/KID get their features (#13.8)."""

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

    def __init__(self, root: Path, enabled: bool = True) -> None:
        self.root = root
        self.enabled = enabled
        self._tables: dict[str, dict[str, Any]] = {}
        self._dirty: set[str] = set()
        self._features: dict[tuple[str, str], np.ndarray] = {}  # this run's, always (the disk copy is optional)

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
        self._dirty.add(name)

    def save(self) -> None:
        if not self.enabled:
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
        if not self.enabled:
            self._features[(key, sha)] = arr
            return
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        atomic_write_bytes(self._feat_path(key, sha), buf.getvalue())

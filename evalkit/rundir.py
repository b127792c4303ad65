"""The run directory: the one contract between stages (docs/run-directory.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError
from evalkit.io import atomic_write_json, read_json

SCHEMA_VERSION = 1
REFERENCE_BACKEND = "bf16"


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory. Every stage goes through these, never through string joins of its own."""

    root: Path

    def __post_init__(self) -> None:
        # Always absolute: stages compare and relativise paths under the root, which breaks when one side is
        # relative (the default `reports/<run-id>`) and the other was resolved.
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def images_dir(self, backend: str) -> Path:
        return self.root / "images" / backend

    def image_path(self, backend: str, prompt_id: str, seed: int) -> Path:
        return self.images_dir(backend) / f"{prompt_id}_s{seed}.png"

    def generation_record(self, backend: str) -> Path:
        return self.root / "generation" / f"{backend}.json"

    def generation_partial(self, backend: str) -> Path:
        return self.root / "generation" / f"{backend}.partial.jsonl"

    def log(self, backend: str) -> Path:
        return self.root / "logs" / f"{backend}.log"

    def metrics_record(self, backend: str) -> Path:
        return self.root / "metrics" / f"{backend}.json"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    def relative(self, path: Path) -> str:
        return Path(path).relative_to(self.root).as_posix()


def open_run(path: str | os.PathLike[str]) -> tuple[RunDir, dict[str, Any]]:
    """Open an existing run directory for a later stage: returns its paths and its manifest."""
    root = Path(path)
    if not root.is_dir():
        raise EvalkitError(f"{root}: run directory not found")
    rd = RunDir(root)
    if not rd.manifest.exists():
        raise EvalkitError(f"{root}: not a run directory (no manifest.json); create one with `evalkit generate` or `evalkit run`")
    manifest = read_json(rd.manifest)
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise EvalkitError(f"{rd.manifest}: schema_version {version!r} is newer than this evalkit understands ({SCHEMA_VERSION}); upgrade evalkit")
    return rd, manifest


def display_path(path: str | os.PathLike[str]) -> str:
    """A path for humans: relative to the working directory when it is inside it."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def ensure_writable_dir(path: Path) -> None:
    """Create `path` or fail with one line saying why it cannot be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EvalkitError(f"{path}: cannot create output directory ({e.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise EvalkitError(f"{path}: output directory is not writable")
    probe = path / ".evalkit-write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise EvalkitError(f"{path}: output directory is not writable ({e.strerror})") from None


def load_generation_records(rd: RunDir, backends: list[str]) -> dict[str, dict[str, Any] | None]:
    return {b: (read_json(rd.generation_record(b)) if rd.generation_record(b).exists() else None) for b in backends}


def write_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Rebuild summary.json from the manifest, generation records and metric records. Every stage calls this last."""
    rd, manifest = open_run(run_dir)
    backends: dict[str, Any] = {}
    for name in manifest.get("backends", []):
        gen_path = rd.generation_record(name)
        gen = read_json(gen_path) if gen_path.exists() else None
        met_path = rd.metrics_record(name)
        met = read_json(met_path) if met_path.exists() else None
        entry: dict[str, Any] = {
            "status": gen["status"] if gen else "pending",
            "reason": gen.get("reason") if gen else "not generated yet",
            "memory": gen.get("memory") if gen else None,
            "latency": gen.get("latency") if gen else None,
            "load_time_s": gen.get("load_time_s") if gen else None,
            "compile_time_s": gen.get("compile_time_s") if gen else None,
            # one-time library step before loading (optimum-quanto's CUDA kernel build), seconds or None
            "prepare_time_s": (gen.get("prepare") or {}).get("seconds") if gen else None,
            "footprint_gib": (gen.get("footprint") or {}).get("total_gib") if gen else None,
            "components_quantized": ((gen.get("quantization") or {}).get("components_quantized") or []) if gen else [],
            "image_flags": _flag_counts(gen),
            "n_images": len(gen.get("images", [])) if gen else 0,
            "metrics": {},
        }
        if met:
            for metric, value in (met.get("metrics") or {}).items():
                entry["metrics"][metric] = {k: v for k, v in value.items() if k not in ("per_prompt", "per_image")}
        backends[name] = entry
    summary = {
        "schema_version": SCHEMA_VERSION,
        "run_id": manifest.get("run_id"),
        "model": manifest.get("model"),
        "device": manifest.get("device"),
        "generation": manifest.get("generation"),
        "reference_backend": manifest.get("reference_backend", REFERENCE_BACKEND),
        "n_prompts": len(manifest.get("prompts", [])),
        "memory_convention": manifest.get("memory_convention"),
        "fid_mode": manifest.get("fid_mode"),
        "backends": backends,
    }
    atomic_write_json(rd.summary, summary, sort_keys=False)  # backends stay in manifest order
    return summary


def _flag_counts(gen: dict[str, Any] | None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for img in (gen or {}).get("images", []):
        for flag in img.get("flags", []):
            counts[flag] = counts.get(flag, 0) + 1
    return counts

"""The run directory: the one contract between stages (docs/run-directory.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from evalkit.errors import EvalkitError
from evalkit.io import atomic_write_json
from evalkit.record_types import FidMode
from evalkit.records import (REFERENCE_BACKEND, SCHEMA_VERSION, GenerationRecord, Manifest, MetricRecord, Summary,
                             build_summary, read_generation_record, read_manifest, read_metric_record, read_record)

__all__ = ["REFERENCE_BACKEND", "SCHEMA_VERSION", "RunDir", "open_run", "display_path", "ensure_writable_dir",
           "load_generation_records", "load_metric_records", "load_fid_mode", "current_summary", "write_summary"]


def safe_name(name: object, what: str) -> str:
    """A name read from a record or the manifest (backend, prompt id, shard tag) that becomes one path component:
    refused, with one line, if it could leave its folder or is not a plain name."""
    if (not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".") or len(name) > 200
            or any(c in name for c in "/\\\0") or any(ord(c) < 32 for c in name)):
        raise EvalkitError(f"{what} {name!r}: not a plain name (a run directory's names never hold '/', '\\', "
                           "control characters or a leading '.'); the run directory's files were edited or damaged")
    return name


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory, each named once here (docs/run-directory.md); stages ask for them by name."""

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
        return self.root / "images" / safe_name(backend, "backend")

    def image_path(self, backend: str, prompt_id: str, seed: int) -> Path:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise EvalkitError(f"prompt {prompt_id!r}: seed {seed!r} is not an integer")
        return self.images_dir(backend) / f"{safe_name(prompt_id, 'prompt id')}_s{seed}.png"

    def generation_record(self, backend: str) -> Path:
        return self.root / "generation" / f"{safe_name(backend, 'backend')}.json"

    def shards_dir(self, backend: str) -> Path:
        """Where each rank's files for one backend wait for the merge (docs/run-directory.md, "Shards")."""
        return self.root / "generation" / "shards" / safe_name(backend, "backend")

    def shard_unit(self, backend: str, tag: str) -> Path:
        return self.shards_dir(backend) / f"{safe_name(tag, 'shard tag')}.unit.json"

    def shard_partial(self, backend: str, tag: str) -> Path:
        return self.shards_dir(backend) / f"{safe_name(tag, 'shard tag')}.partial.jsonl"

    def shard_record(self, backend: str, tag: str) -> Path:
        return self.shards_dir(backend) / f"{safe_name(tag, 'shard tag')}.json"

    @property
    def merge_manifest(self) -> Path:
        return self.root / "merge.json"

    @property
    def calibration(self) -> Path:
        """calibration.json: written by `evalkit calibrate`, read by check and report (records.read_calibration)."""
        return self.root / "calibration.json"

    @property
    def calibration_runs(self) -> Path:
        """calibration/<perturbation>/: the sub-runs calibrate regenerates the reference into."""
        return self.root / "calibration"

    def extractor_mode(self, key: str) -> Path:
        """<key>.json at the run's root (fid_mode.json): how score computed a set metric's features (the registry's
        ExtractorSpec.mode_key). Score owns it; a schema-1 run kept it in the manifest under the same key."""
        return self.root / f"{safe_name(key, 'extractor mode')}.json"

    def log(self, backend: str) -> Path:
        return self.root / "logs" / f"{safe_name(backend, 'backend')}.log"

    def metrics_record(self, backend: str) -> Path:
        return self.root / "metrics" / f"{safe_name(backend, 'backend')}.json"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    def relative(self, path: Path) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def inside(self, relative: object, what: str) -> Path:
        """The file a record names by its path relative to the run directory (an image entry's `path`), refused
        when it would lie outside the run directory, through `..` or a link."""
        if not isinstance(relative, str) or not relative or "\0" in relative or os.path.isabs(relative):
            raise EvalkitError(f"{what}: path {relative!r} is not a path relative to the run directory {self.root}")
        path = self.root / relative
        real = path.resolve()
        if real != self.root and self.root not in real.parents:
            raise EvalkitError(f"{what}: path {relative!r} leads outside the run directory {self.root} (to {real})")
        return path

    def refuse_links_out(self) -> None:
        """Refuse (one line) a run directory holding a symbolic link that leads outside it: every stage writes into
        the run directory, and a write through such a link would land in the user's other files."""
        if not self.root.is_dir():
            return
        stack = [self.root]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for e in entries:
                if e.is_symlink():
                    real = Path(e.path).resolve()
                    if real != self.root and self.root not in real.parents:
                        raise EvalkitError(f"{e.path}: a symbolic link out of the run directory (to {real}); evalkit "
                                           "writes only inside a run directory: remove the link or copy what it holds")
                elif e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))


def open_run(path: str | os.PathLike[str]) -> tuple[RunDir, Manifest]:
    """Open an existing run directory for a later stage: returns its paths and its (shape-checked) manifest."""
    root = Path(path)
    if not root.is_dir():
        raise EvalkitError(f"{root}: run directory not found")
    rd = RunDir(root)
    if not rd.manifest.exists():
        raise EvalkitError(f"{root}: not a run directory (no manifest.json); create one with `evalkit generate` or `evalkit run`")
    rd.refuse_links_out()
    manifest = read_manifest(rd.manifest)
    load_run_plugins(manifest)  # the run's plugin and checkpoint backends, families and metrics: known to every stage
    return rd, manifest


def load_run_plugins(manifest: Any) -> None:
    """Load the plugin files a run's manifest records (a worker, a rank or a later stage of that run), and register
    the run's prequantized-checkpoint backends (`--backend NAME=PATH`), which are defined by the run as well."""
    entries = ((manifest or {}).get("config") or {}).get("plugins") or [] if isinstance(manifest, dict) else []
    from evalkit.plugins import load_plugin_file

    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise EvalkitError(f"manifest.json: config.plugins holds a malformed entry {entry!r}")
        load_plugin_file(entry["path"], expected_sha256=entry.get("sha256"))
    # Here, not in evalkit.plugins: the checkpoint backends' registry loads installed plugins through that module.
    from evalkit.quantizers.checkpoint import register_run_checkpoints

    register_run_checkpoints(manifest)


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


def load_generation_records(rd: RunDir, backends: list[str]) -> dict[str, GenerationRecord | None]:
    """Each backend's generation record (shape-checked), or None where it is not written yet."""
    return {b: (read_generation_record(rd.generation_record(b)) if rd.generation_record(b).exists() else None)
            for b in backends}


def load_metric_records(rd: RunDir, backends: list[str]) -> dict[str, MetricRecord | None]:
    """Each backend's metric record (shape-checked), or None where score has not written it."""
    return {b: (read_metric_record(rd.metrics_record(b)) if rd.metrics_record(b).exists() else None)
            for b in backends}


def load_fid_mode(rd: RunDir, manifest: Mapping[str, Any]) -> FidMode | None:
    """How score computed FID/KID: fid_mode.json (schema 2), else the manifest's `fid_mode` (schema 1), else None."""
    path = rd.extractor_mode("fid_mode")
    if path.is_file():
        return read_record(path, FidMode)
    legacy = manifest.get("fid_mode")
    return legacy if isinstance(legacy, dict) else None


def current_summary(rd: RunDir, manifest: Mapping[str, Any]) -> Summary:
    """The summary the run's records make now, built in memory (a reader that must not write: report)."""
    names = list(manifest["backends"])
    return build_summary(manifest, load_generation_records(rd, names), load_metric_records(rd, names),
                         fid_mode=load_fid_mode(rd, manifest))


def write_summary(run_dir: str | os.PathLike[str]) -> Summary:
    """Rebuild summary.json from the manifest, generation records and metric records. summary.json is derived: the
    stages that change records rebuild it (generate after a merge, score after scoring), never edit it."""
    rd, manifest = open_run(run_dir)
    summary = current_summary(rd, manifest)
    atomic_write_json(rd.summary, summary, sort_keys=False)  # backends stay in manifest order
    return summary

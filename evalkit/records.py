"""Typed records of the run directory: one TypedDict, one builder and one validating reader per record.

The four records (docs/run-directory.md): the manifest, a backend's generation record, a backend's metric record,
and the summary. Each is plain JSON on disk; the TypedDicts below are its schema, stated once. The same
annotations drive `validate()`, so a record read from disk with the wrong shape is one line naming the file and
the field ("generation/bf16.json: record.images[3].sha256 must be a string, found int 7"),
never a KeyError three stages later.

Additive change is not a version bump: readers accept records without fields added later (`size_bytes`,
`partial_reason`, `left_out`, `category`, ...), and keys they do not know. A change that removes or re-types a
field bumps SCHEMA_VERSION, and the reader keeps reading the old version.
"""

# No `from __future__ import annotations` here: TypedDict reads Required[...] from real annotations, and the
# stringified ones would make every key optional (Python 3.11).
import os
from pathlib import Path
from typing import Any, Literal, Mapping, NotRequired, Required, TypedDict

from evalkit.errors import EvalkitError
from evalkit.record_types import (BrokenEntry, CalibrationFile, CompileRecord, ComputePlan, DeviceInfo, ErrorInfo,
                                  FidMode, Footprint, GenerationSettings, GenerationTripwires, InForce, LatencyRecord,
                                  MemoryRecord, MergeFile, ModelEntry, NonFinite, Placement, PrepareStep,
                                  QuantizationCensus, RankEntry, Recipe, RunConfig, ScoreTripwires, ShardInfo,
                                  StartupRecord, TokenCounts, UnitFile)
from evalkit.shapes import ShapeError, validate
from evalkit.record_readings import partial_reason
from evalkit.tripwires import recorded_broken

__all__ = ["SCHEMA_VERSION", "REFERENCE_BACKEND", "PromptEntry", "Manifest", "ImageEntry", "GenerationRecord",
           "MetricResult", "LeftOut", "MetricRecord", "SummaryBackend", "Summary", "ShapeError", "validate",
           "read_record", "check_record", "read_manifest", "read_generation_record", "generation_record_if_any", "read_metric_record",
           "read_summary", "read_calibration", "read_merge", "read_unit", "checked_calibration", "checked_merge", "checked_unit", "prompt_entry", "build_manifest", "image_entry", "image_entry_for_file",
           "build_generation_record", "build_metric_record", "build_summary", "partial_reason"]

# 2: score keeps FID/KID's settings in fid_mode.json, no longer in the manifest (generate owns the manifest).
# Schema-1 records read as before (rundir.load_fid_mode reads a schema-1 manifest's fid_mode).
SCHEMA_VERSION = 2
REFERENCE_BACKEND = "bf16"


# --------------------------------------------------------------------------------------------- the schemas

class PromptEntry(TypedDict, total=False):
    index: Required[int]
    id: Required[str]  # evalkit.prompts.prompt_id
    text: Required[str]
    seed: Required[int]  # evalkit.prompts.prompt_seed
    line: int  # 1-based line (or record) in the prompts file
    category: str | None  # from a prompt set's category column (PartiPrompts, DrawBench)
    tokens: TokenCounts


class Manifest(TypedDict, total=False):
    schema_version: Required[int]
    prompts: Required[list[PromptEntry]]
    backends: Required[list[str]]
    run_id: str | None
    created_utc: str | None
    updated_utc: str | None
    evalkit_version: str | None
    command: list[str] | None
    prompts_file: str | None
    prompts_sha256: str | None
    tokenization_note: str | None
    model: ModelEntry | None
    generation: GenerationSettings | None
    reference_backend: str
    device: DeviceInfo | None
    versions: dict[str, str | None] | None
    memory_convention: dict[str, str] | None
    compute: ComputePlan  # added (#24): which dtype each component computes in
    fid_mode: FidMode | None  # schema 1 only: score wrote it here; schema 2 keeps it in fid_mode.json
    config: RunConfig | None


class ImageEntry(TypedDict, total=False):
    prompt_id: Required[str]
    seed: Required[int]
    path: Required[str]  # relative to the run directory: images/<backend>/<prompt_id>_s<seed>.png
    sha256: Required[str]
    size_bytes: int  # stat fingerprint taken after the atomic write (evalkit.integrity)
    mtime_ns: int
    latency_s: float | None
    flags: list[str]  # "nan", "all_black"
    nonfinite: NonFinite  # added (#27): counted before the PNG
    broken: list[BrokenEntry]  # added (#27): generate-time tripwire entries
    batch_size: int
    pid: int | None


class GenerationRecord(TypedDict, total=False):
    schema_version: Required[int]
    backend: Required[str]
    status: Required[Literal["ok", "failed", "skipped"]]
    reason: str | None  # one line; set whenever status is not ok
    error: ErrorInfo | None
    recipe: Recipe | None
    quantization: QuantizationCensus | None
    footprint: Footprint | None
    placement: Placement | None
    prepare: PrepareStep | None
    startup: StartupRecord | None  # added (#25): a unit's start-up (in a shard record, and per rank in `ranks`)
    compile: CompileRecord | None
    numerics: InForce  # what the worker's numerics were (threads, TF32, SDPA kernel, dtypes in force)
    load_time_s: float | None
    compile_time_s: float | None
    memory: MemoryRecord | None
    latency: LatencyRecord | None
    warmup_times_s: list[float] | None
    resumed_images: int | None
    images: list[ImageEntry]
    started_utc: str | None
    finished_utc: str | None
    pid: int | None
    ranks: list[RankEntry]  # added (#14): per-rank figures of a merged record (docs/run-directory.md)
    shard: ShardInfo  # added (#14): in a rank's shard record only
    tripwires: GenerationTripwires  # added (#27): evalkit.tripwires


class SkippedPair(TypedDict, total=False):
    prompt_id: str | None
    seed: int | None
    path: str | None
    reason: Required[str]


class MetricResult(TypedDict, total=False):
    """One metric of one backend. Paired and prompt metrics: mean, CI and per_prompt; set metrics (FID, KID, CMMD):
    value. A metric adds its own fields (its options, FID's indicative flag); the registry declares its kind."""

    status: Required[str]  # "ok", "skipped", ...
    reason: str | None
    mean: float | None
    value: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None
    ci_level: float
    ci_method: str
    n: int | None
    n_reference: int
    n_skipped: int
    n_corrupt: int
    n_resized: int
    higher_is_better: bool | None
    indicative: bool  # a set metric at too few images to be trusted as a plain number
    indicative_reason: str
    options: dict[str, Any]
    description: str
    note: str
    per_prompt: dict[str, float | None]
    skipped: list[SkippedPair]  # pairs this metric could not score


class LeftOut(TypedDict, total=False):
    backend: Required[str]
    prompt_id: Required[str | None]
    path: Required[str | None]
    reason: Required[str]
    metrics: list[str]  # which metrics left it out, when not all


class MetricRecord(TypedDict, total=False):
    schema_version: Required[int]
    backend: Required[str]
    metrics: Required[dict[str, MetricResult]]
    reference_backend: str
    metrics_version: Any
    device: Any
    left_out: list[SkippedPair]  # images the score stage left out, with the reason
    missing_headline_metrics: list[str]  # default metrics score skipped for lack of their pinned weights
    broken: list[BrokenEntry]  # added (#27): broken images left out of every mean (evalkit.tripwires)
    tripwires: ScoreTripwires  # added (#27)


class SummaryBackend(TypedDict, total=False):
    status: Required[str]  # a generation status, or "pending" before the backend ran
    reason: str | None
    partial_reason: str | None  # did less than its name says here (bnb on CPU; +compile hit the recompile limit)
    memory: MemoryRecord | None
    latency: LatencyRecord | None
    load_time_s: float | None
    compile_time_s: float | None
    prepare_time_s: float | None
    footprint_gib: float | None
    components_quantized: list[str]
    image_flags: dict[str, int]
    n_images: int
    metrics: dict[str, dict[str, Any]]
    broken: NotRequired[list[BrokenEntry]]  # added (#27): evalkit.tripwires.recorded_broken


class Summary(TypedDict, total=False):
    schema_version: Required[int]
    run_id: str | None
    model: ModelEntry | None
    device: DeviceInfo | None
    generation: GenerationSettings | None
    reference_backend: str
    n_prompts: int
    memory_convention: dict[str, str] | None
    fid_mode: FidMode | None
    backends: Required[dict[str, SummaryBackend]]
    images_left_out: list[LeftOut]
    status: str  # "ok", or "missing headline metrics" (then missing_headline_metrics names them)
    missing_headline_metrics: list[str]


# --------------------------------------------------------------------------------------------- reading

_LABELS: dict[Any, str] = {}


# Record contents this process has already checked against a schema. A run's stages read the same records several
# times in one process (generate's plan, score, the report twice); the shape check of thousands of typed leaves was
# most of an unchanged rerun's time. Keyed by the bytes' digest, so a file changed in place is checked again.
_CHECKED: set[tuple[int, bytes]] = set()


def read_record(path: str | os.PathLike[str], schema: Any) -> Any:
    """Read a JSON record and check its shape and schema_version; one-line EvalkitError naming the file if not."""
    import hashlib

    from evalkit.io import read_json

    path = Path(path)
    data = read_json(path)
    try:
        key = (id(schema), hashlib.blake2b(path.read_bytes(), digest_size=16).digest())
    except OSError:
        key = None
    if key is not None and key in _CHECKED:
        return data
    data = check_record(data, schema, path)
    if key is not None:
        _CHECKED.add(key)
    return data


def check_record(data: Any, schema: Any, path: str | os.PathLike[str]) -> Any:
    version = data.get("schema_version") if isinstance(data, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise EvalkitError(f"{path}: schema_version {version} is newer than this evalkit understands "
                           f"({SCHEMA_VERSION}); upgrade evalkit")
    try:
        validate(data, schema, _ROOTS.get(schema, "record"))
    except ShapeError as e:
        raise EvalkitError(f"{path}: {e}") from None
    return data


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    return read_record(path, Manifest)


def read_generation_record(path: str | os.PathLike[str]) -> GenerationRecord:
    return read_record(path, GenerationRecord)


def generation_record_if_any(path: str | os.PathLike[str]) -> GenerationRecord | None:
    """The generation record at `path`, or None where there is none or it cannot be read (torn by a killed
    worker, mangled): for the stages that then redo or replace it, never for one that reports from it."""
    try:
        return read_generation_record(path) if Path(path).is_file() else None
    except EvalkitError:
        return None


def read_metric_record(path: str | os.PathLike[str]) -> MetricRecord:
    return read_record(path, MetricRecord)


def read_summary(path: str | os.PathLike[str]) -> Summary:
    return read_record(path, Summary)


def read_calibration(path: str | os.PathLike[str]) -> CalibrationFile:
    """calibration.json (RunDir.calibration): the one reader calibrate, check and report share."""
    return read_record(path, CalibrationFile)


def read_merge(path: str | os.PathLike[str]) -> MergeFile:
    return read_record(path, MergeFile)


def read_unit(path: str | os.PathLike[str]) -> UnitFile:
    return read_record(path, UnitFile)


_LABELS.update({Manifest: "manifest", GenerationRecord: "generation record", MetricRecord: "metric record",
                Summary: "summary", CalibrationFile: "calibration", MergeFile: "merge record", UnitFile: "unit file"})
# How a message names the top of each record: "manifest.backends must be a JSON list, found str".
_ROOTS: dict[Any, str] = {Manifest: "manifest", GenerationRecord: "record", MetricRecord: "record",
                          Summary: "summary", CalibrationFile: "calibration", MergeFile: "merge",
                          UnitFile: "unit"}


# --------------------------------------------------------------------------------------------- builders

def _built(record: Any, schema: Any) -> Any:
    """Builders check what they build: a bug in a writer fails where it is made, not in the next stage."""
    try:
        validate(record, schema, _ROOTS.get(schema, "record"))
    except ShapeError as e:
        raise ValueError(f"building a {_LABELS.get(schema, 'record')}: {e}") from None
    return record


def prompt_entry(prompt: Any, tokens: TokenCounts | None = None) -> PromptEntry:
    """A manifest prompt from an evalkit.prompts.Prompt (its id and seed come from evalkit.prompts, never re-derived)."""
    entry: PromptEntry = {"index": prompt.index, "id": prompt.id, "text": prompt.text, "seed": prompt.seed,
                          "line": prompt.line}
    if getattr(prompt, "category", None) is not None:
        entry["category"] = prompt.category
    if tokens is not None:
        entry["tokens"] = tokens
    return _built(entry, PromptEntry)


def build_manifest(*, prompts: list[PromptEntry], backends: list[str], run_id: str | None,
                   generation: GenerationSettings, model: ModelEntry | None = None,
                   device: DeviceInfo | None = None, versions: dict[str, Any] | None = None,
                   created_utc: str | None = None, updated_utc: str | None = None,
                   evalkit_version: str | None = None, command: list[str] | None = None,
                   prompts_file: str | None = None, prompts_sha256: str | None = None,
                   tokenization_note: str | None = None, reference_backend: str = REFERENCE_BACKEND,
                   memory_convention: dict[str, Any] | None = None, fid_mode: FidMode | None = None,
                   config: RunConfig | None = None) -> Manifest:
    """The manifest, as generate writes it. `backends` keeps its order (the report's order)."""
    if evalkit_version is None:
        from evalkit.version import __version__ as evalkit_version
    manifest: Manifest = {
        "schema_version": SCHEMA_VERSION, "run_id": run_id, "created_utc": created_utc, "updated_utc": updated_utc,
        "evalkit_version": evalkit_version, "command": command, "prompts_file": prompts_file,
        "prompts_sha256": prompts_sha256, "prompts": list(prompts), "tokenization_note": tokenization_note,
        "model": model, "generation": generation, "backends": list(backends), "reference_backend": reference_backend,
        "device": device, "versions": versions, "memory_convention": memory_convention, "config": config,
    }
    if fid_mode is not None:
        manifest["fid_mode"] = fid_mode
    return _built(manifest, Manifest)


def image_entry(*, prompt_id: str, seed: int, path: str, sha256: str, size_bytes: int | None = None,
                mtime_ns: int | None = None, latency_s: float | None = None, flags: list[str] | None = None,
                batch_size: int = 1, pid: int | None = None) -> ImageEntry:
    """One image of a generation record. Give size_bytes/mtime_ns (os.stat after the write) for the cheap check."""
    entry: ImageEntry = {"prompt_id": prompt_id, "seed": seed, "path": path, "sha256": sha256,
                         "latency_s": latency_s, "flags": list(flags or []), "batch_size": batch_size, "pid": pid}
    if size_bytes is not None and mtime_ns is not None:
        entry["size_bytes"], entry["mtime_ns"] = size_bytes, mtime_ns
    return _built(entry, ImageEntry)


def image_entry_for_file(root: str | os.PathLike[str], rel_path: str, *, prompt_id: str, seed: int,
                         **fields: Any) -> ImageEntry:
    """`image_entry` for a file already written under run directory `root`: hash and stat it."""
    from evalkit.io import sha256_file

    f = Path(root) / rel_path
    st = f.stat()
    return image_entry(prompt_id=prompt_id, seed=seed, path=rel_path, sha256=sha256_file(f), size_bytes=st.st_size,
                       mtime_ns=st.st_mtime_ns, **fields)


def checked_generation_record(record: Mapping[str, Any]) -> GenerationRecord:
    """The worker builds its record step by step while it runs; this checks the finished one against the schema
    before it is written, as build_generation_record checks what it builds."""
    return _built(dict(record), GenerationRecord)


def checked_calibration(record: Mapping[str, Any]) -> CalibrationFile:
    """calibrate builds calibration.json as it measures; this checks the finished one before it is written."""
    return _built(dict(record), CalibrationFile)


def checked_merge(record: Mapping[str, Any]) -> MergeFile:
    return _built(dict(record), MergeFile)


def checked_unit(record: Mapping[str, Any]) -> UnitFile:
    return _built(dict(record), UnitFile)


def build_generation_record(*, backend: str, status: Literal["ok", "failed", "skipped"], reason: str | None = None,
                            images: list[ImageEntry] | None = None, recipe: Recipe | None = None,
                            quantization: QuantizationCensus | None = None, footprint: Footprint | None = None,
                            memory: MemoryRecord | None = None, latency: LatencyRecord | None = None,
                            load_time_s: float | None = None, compile_time_s: float | None = None,
                            prepare: PrepareStep | None = None, compile: CompileRecord | None = None,
                            placement: Placement | None = None, error: ErrorInfo | None = None,
                            warmup_times_s: list[float] | None = None, resumed_images: int | None = None,
                            started_utc: str | None = None, finished_utc: str | None = None,
                            pid: int | None = None) -> GenerationRecord:
    """One backend's generation record. A backend that did not finish says why (`reason`)."""
    if status != "ok" and not reason:
        raise ValueError(f"building a generation record for {backend}: status {status!r} needs a reason")
    record: GenerationRecord = {
        "schema_version": SCHEMA_VERSION, "backend": backend, "status": status, "reason": reason, "error": error,
        "recipe": recipe, "quantization": quantization, "footprint": footprint, "placement": placement,
        "prepare": prepare, "compile": compile, "load_time_s": load_time_s, "compile_time_s": compile_time_s,
        "memory": memory, "latency": latency, "warmup_times_s": warmup_times_s, "resumed_images": resumed_images,
        "images": list(images or []), "started_utc": started_utc, "finished_utc": finished_utc, "pid": pid,
    }
    return _built(record, GenerationRecord)


def build_metric_record(*, backend: str, metrics: dict[str, MetricResult],
                        reference_backend: str = REFERENCE_BACKEND, metrics_version: Any = None, device: Any = None,
                        left_out: list[SkippedPair] | None = None,
                        missing_headline_metrics: list[str] | None = None, broken: list[BrokenEntry] | None = None,
                        tripwires: ScoreTripwires | None = None) -> MetricRecord:
    """One backend's metric record, as score writes it. `left_out`: images score could not use, with reasons;
    `missing_headline_metrics`: default metrics skipped for lack of their pinned weights; `broken` and `tripwires`:
    the broken images left out of every mean and their census (evalkit.tripwires)."""
    record: MetricRecord = {"schema_version": SCHEMA_VERSION, "backend": backend,
                            "reference_backend": reference_backend, "metrics_version": metrics_version,
                            "metrics": dict(metrics), "device": device}
    if missing_headline_metrics is not None:
        record["missing_headline_metrics"] = list(missing_headline_metrics)
    if left_out is not None:
        record["left_out"] = list(left_out)
    if broken is not None:
        record["broken"] = list(broken)
    if tripwires is not None:
        record["tripwires"] = tripwires
    return _built(record, MetricRecord)


def build_summary(manifest: Manifest, generation: Mapping[str, GenerationRecord | None],
                  metrics: Mapping[str, MetricRecord | None], fid_mode: FidMode | None = None) -> Summary:
    """summary.json from the manifest, each backend's records (None where a record is not written yet) and score's
    fid_mode.json (rundir.load_fid_mode; a schema-1 manifest's own `fid_mode` when not given)."""
    backends: dict[str, SummaryBackend] = {}
    left_out: list[LeftOut] = []
    for name in manifest.get("backends") or []:
        gen, met = generation.get(name), metrics.get(name)
        backends[name] = _summary_backend(gen, met)
        left_out.extend(_left_out(name, gen, met))
    summary: Summary = {
        "schema_version": SCHEMA_VERSION,
        "run_id": manifest.get("run_id"),
        "model": manifest.get("model"),
        "device": manifest.get("device"),
        "generation": manifest.get("generation"),
        "reference_backend": manifest.get("reference_backend") or REFERENCE_BACKEND,
        "n_prompts": len(manifest.get("prompts") or []),
        "memory_convention": manifest.get("memory_convention"),
        "fid_mode": fid_mode.copy() if fid_mode is not None else manifest.get("fid_mode"),
        "backends": backends,
        "images_left_out": left_out,
        "status": "ok",
        "missing_headline_metrics": list(dict.fromkeys(
            m for met in metrics.values() if met for m in met.get("missing_headline_metrics") or [])),
    }
    if summary["missing_headline_metrics"]:
        summary["status"] = "missing headline metrics"
    return _built(summary, Summary)


def _summary_backend(gen: GenerationRecord | None, met: MetricRecord | None) -> SummaryBackend:
    gen_d = gen or {}
    return {
        "status": gen_d.get("status", "pending"),
        "reason": gen_d.get("reason") if gen else "not generated yet",
        "partial_reason": partial_reason(gen),
        "memory": gen_d.get("memory"),
        "latency": gen_d.get("latency"),
        "load_time_s": gen_d.get("load_time_s"),
        "compile_time_s": gen_d.get("compile_time_s"),
        # one-time library step before loading (optimum-quanto's CUDA kernel build), seconds or None
        "prepare_time_s": (gen_d.get("prepare") or {}).get("seconds"),
        "footprint_gib": (gen_d.get("footprint") or {}).get("total_gib"),
        "components_quantized": list((gen_d.get("quantization") or {}).get("components_quantized") or []),
        "image_flags": _flag_counts(gen_d),
        "n_images": len(gen_d.get("images") or []),
        "metrics": {metric: {k: v for k, v in value.items() if k not in ("per_prompt", "per_image")}
                    for metric, value in ((met or {}).get("metrics") or {}).items()},
        "broken": recorded_broken(gen, met),
    }


def _flag_counts(gen: GenerationRecord) -> dict[str, int]:
    counts: dict[str, int] = {}
    for img in gen.get("images") or []:
        for flag in img.get("flags") or []:
            counts[flag] = counts.get(flag, 0) + 1
    return counts


def _left_out(backend: str, gen: GenerationRecord | None, met: MetricRecord | None) -> list[LeftOut]:
    """Images the score stage did not use, one entry per (image, reason), naming the metrics when not all did.

    Read from the metric record's `left_out` list and from each metric's `skipped` pairs (records written before
    `left_out` existed list a truncated PNG only there).
    """
    if not met:
        return []
    paths = {img.get("prompt_id"): img.get("path") for img in (gen or {}).get("images") or []}
    found: dict[tuple[Any, Any, str], LeftOut] = {}
    for item in met.get("left_out") or []:
        pid = item.get("prompt_id")
        path = item.get("path") or paths.get(pid)
        found.setdefault((pid, path, str(item.get("reason"))),
                         {"backend": backend, "prompt_id": pid, "path": path,
                          "reason": str(item.get("reason"))})
    for metric, result in sorted((met.get("metrics") or {}).items()):
        for item in result.get("skipped") or []:
            pid = item.get("prompt_id")
            key = (pid, item.get("path") or paths.get(pid), str(item.get("reason")))
            entry = found.setdefault(key, {"backend": backend, "prompt_id": key[0], "path": key[1],
                                           "reason": key[2], "metrics": []})
            if "metrics" in entry:
                entry["metrics"].append(metric)
    return list(found.values())

"""Merge the ranks' shard files into the run-directory contract: generation/<backend>.json and merge.json.

Each rank writes only its own files (generation/shards/<backend>/<tag>.{unit.json,partial.jsonl,json}, tag =
`w<world size>-r<rank>`). The merge reads, per backend: the existing merged record (if status ok), every shard's
final record (or its partial list when it has none: a rank that died). Every entry is verified (evalkit.integrity) and must carry the prompt's seed;
what fails is dropped, so the planner regenerates it. Then:

- two shard files whose valid entries claim one prompt: a duplicate, refused with both files named;
- a prompt with no valid entry: missing, named with the tag that was to make it; no merged record is written
  (unless a shard failed: then the merged record says which rank failed and why, and the shard files stay);
- otherwise the merged record is written (images in manifest order, latency over all images, memory and load
  time the maximum over ranks, per-rank figures under `ranks`), merge.json records every unit's rank and sha256,
  and the backend's shard files are deleted.

Imports no torch: `evalkit merge RUN_DIR` and the no-op rerun check read through here.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError
from evalkit.io import atomic_write_json, read_jsonl
from evalkit.record_types import MERGE_SCHEMA
from evalkit.records import (checked_merge, generation_record_if_any, read_generation_record, read_manifest,
                             read_merge, read_unit)
from evalkit.rundir import SCHEMA_VERSION, RunDir
from evalkit.timeutil import utc_now

_TAG = re.compile(r"^w(\d+)-r(\d+)$")
SHARD_SUFFIXES = (".unit.json", ".partial.jsonl", ".json")
# Fields of the merged record taken from the lowest tag's shard (every rank ran the same recipe).
BASE_FIELDS = ("recipe", "quantization", "footprint", "compile", "numerics", "placement", "prepare",
               "warmup_times_s", "tripwires")
RANK_FIELDS = ("pid", "memory", "latency", "load_time_s", "compile_time_s", "prepare", "warmup_times_s",
               "started_utc", "finished_utc", "startup")


def tag_key(tag: str) -> tuple[int, int, str]:
    """Sort key of a tag: world size, then rank (so w4-r10 comes after w4-r2)."""
    m = _TAG.match(tag)
    return (int(m.group(1)), int(m.group(2)), tag) if m else (1 << 30, 0, tag)


def tag_rank(tag: str) -> tuple[int | None, int | None]:
    m = _TAG.match(tag)
    return (int(m.group(2)), int(m.group(1))) if m else (None, None)


@dataclass
class Shard:
    tag: str
    unit: dict[str, Any] | None = None
    record: dict[str, Any] | None = None
    partial: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def entries(self) -> list[dict[str, Any]]:
        """Its final record's images when it finished ok, else what its partial list holds (a rank that died)."""
        if self.record is not None and self.record.get("status") == "ok":
            return list(self.record.get("images") or [])
        by_id: dict[str, dict[str, Any]] = {}
        for e in self.partial:  # appended twice after a resume: the last one is the file's current entry
            if isinstance(e, dict) and isinstance(e.get("prompt_id"), str):
                by_id[e["prompt_id"]] = e
        return list(by_id.values())

    @property
    def failed_reason(self) -> str | None:
        if self.record is not None and self.record.get("status") == "failed":
            return str(self.record.get("reason") or "failed")
        return None


def read_shards(rd: RunDir, backend: str) -> dict[str, Shard]:
    """Every tag's files under generation/shards/<backend>/, by tag in tag order."""
    folder = rd.shards_dir(backend)
    shards: dict[str, Shard] = {}
    if not folder.is_dir():
        return shards
    for path in sorted(folder.iterdir()):
        suffix = next((s for s in SHARD_SUFFIXES if path.name.endswith(s)), None)
        if suffix is None or not path.is_file():
            continue
        tag = path.name[: -len(suffix)]
        sh = shards.setdefault(tag, Shard(tag))
        sh.files.append(path)
        try:
            if suffix == ".unit.json":
                sh.unit = read_unit(path)
            elif suffix == ".json":
                sh.record = read_generation_record(path)
            else:
                sh.partial = read_jsonl(path)
        except (EvalkitError, OSError, ValueError):
            pass  # a damaged file contributes nothing; its prompts show up as missing and are regenerated
    return {t: shards[t] for t in sorted(shards, key=tag_key)}


def has_shards(rd: RunDir, backend: str) -> bool:
    folder = rd.shards_dir(backend)
    return folder.is_dir() and any(folder.iterdir())


@dataclass
class Collected:
    """One backend's verified entries, with where each came from, and what is wrong."""

    backend: str
    valid: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)  # prompt id -> (entry, source)
    duplicates: list[tuple[str, str, str]] = field(default_factory=list)  # (prompt id, file, other file)
    shards: dict[str, Shard] = field(default_factory=dict)
    previous: dict[str, Any] | None = None  # the existing merged record, when status ok
    dropped: int = 0

    def missing(self, manifest: dict[str, Any]) -> list[str]:
        return [p["id"] for p in manifest["prompts"] if p["id"] not in self.valid]


def _verified(rd: RunDir, backend: str, entries: list[dict[str, Any]], seeds: dict[str, int],
              manifest: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    from evalkit.integrity import verify_images

    seeded = [e for e in entries if isinstance(e, dict) and e.get("prompt_id") in seeds
              and seeds[e["prompt_id"]] == e.get("seed")]
    report = verify_images(rd, backend, {"images": seeded}, manifest=manifest, check_extra=False)
    return report.ok, len(entries) - len(report.ok)


def collect(rd: RunDir, manifest: dict[str, Any], backend: str) -> Collected:
    """Every valid entry for `backend`: shard entries first (the planner gave them only prompts that had none),
    then the previous merged record."""
    seeds = {p["id"]: p["seed"] for p in manifest["prompts"]}
    out = Collected(backend, shards=read_shards(rd, backend))
    owner: dict[str, str] = {}
    for tag, sh in out.shards.items():
        ok, dropped = _verified(rd, backend, sh.entries(), seeds, manifest)
        out.dropped += dropped
        src = f"{tag}.json" if sh.record is not None and sh.record.get("status") == "ok" else f"{tag}.partial.jsonl"
        for e in ok:
            pid = e["prompt_id"]
            if pid in owner and owner[pid] != tag:
                out.duplicates.append((pid, rd.relative(rd.shards_dir(backend) / out.valid[pid][1]),
                                       rd.relative(rd.shards_dir(backend) / src)))
                continue
            owner[pid] = tag
            out.valid[pid] = (e, src)
    rec = generation_record_if_any(rd.generation_record(backend))
    if rec is not None and rec.get("status") == "ok":
        out.previous = rec
        ok, dropped = _verified(rd, backend, list(rec.get("images") or []), seeds, manifest)
        out.dropped += dropped
        for e in ok:
            out.valid.setdefault(e["prompt_id"], (e, "merged"))
    return out


@dataclass
class BackendMerge:
    backend: str
    status: str  # complete | incomplete | failed | duplicate
    message: str | None = None
    missing: list[str] = field(default_factory=list)
    units: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class MergeResult:
    backends: dict[str, BackendMerge] = field(default_factory=dict)

    @property
    def problems(self) -> list[str]:
        """One line per backend that is incomplete or has a duplicate (a failed backend is a record, not an error)."""
        return [b.message for b in self.backends.values() if b.status in ("incomplete", "duplicate") and b.message]

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 0


def _unit_owner(shards: dict[str, Shard]) -> dict[str, str]:
    owner: dict[str, str] = {}
    for tag, sh in shards.items():
        for pid in (sh.unit or {}).get("prompt_ids") or []:
            owner[pid] = tag
    return owner


def _max(values: list[Any]) -> Any:
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return max(nums) if nums else None


def _merged_memory(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    mems = [r.get("memory") for r in records if isinstance(r.get("memory"), dict)]
    if not mems:
        return None
    out: dict[str, Any] = {}
    for m in mems:
        for k, v in m.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = v if not isinstance(out.get(k), (int, float)) else max(out[k], v)
            else:
                out.setdefault(k, v)
    return out


def _rank_entry(rec: dict[str, Any], n_images: int) -> dict[str, Any]:
    sh = rec.get("shard") or {}
    out = {k: sh.get(k) for k in ("tag", "rank", "world_size", "host", "gpu")}
    out["n_images"] = n_images
    out.update({k: rec.get(k) for k in RANK_FIELDS})
    return out


def _quantized_counts_note(records: list[dict[str, Any]]) -> str | None:
    counts = {(r.get("shard") or {}).get("tag"): (r.get("quantization") or {}).get("quantized_linear_count")
              for r in records}
    if len({repr(v) for v in counts.values()}) > 1:
        return "ranks disagree on quantized layer counts: " + "; ".join(f"{t}: {v}" for t, v in counts.items())
    return None


def _merged_record(backend: str, manifest: dict[str, Any], col: Collected) -> dict[str, Any]:
    images = [col.valid[p["id"]][0] for p in manifest["prompts"]]
    used = {src.split(".")[0] for _, src in col.valid.values()}
    shard_recs = [sh.record for tag, sh in col.shards.items()
                  if tag in used and sh.record is not None and sh.record.get("status") == "ok"]
    prev = col.previous or {}
    base = shard_recs[0] if shard_recs else prev
    kept_prev = sum(1 for _, src in col.valid.values() if src == "merged")
    ranks: list[dict[str, Any]] = []
    if kept_prev:
        ranks.extend(prev.get("ranks") or [{"tag": None, "rank": None, "world_size": None, "host": None,
                                            "gpu": None, "n_images": kept_prev,
                                            **{k: prev.get(k) for k in RANK_FIELDS}}])
    for rec in shard_recs:
        tag = (rec.get("shard") or {}).get("tag")
        ranks.append(_rank_entry(rec, sum(1 for _, src in col.valid.values() if src.split(".")[0] == tag)))
    lat_samples = [e["latency_s"] for e in images if isinstance(e.get("latency_s"), (int, float))]
    warmup = int((manifest.get("generation") or {}).get("warmup_runs", 1))
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "backend": backend, "status": "ok", "reason": None, "error": None,
        **{k: base.get(k) for k in BASE_FIELDS},
        "memory": _merged_memory(shard_recs + ([prev] if kept_prev and prev else [])),
        "latency": _merged_latency(lat_samples, warmup, ranks),
        "load_time_s": _max([r.get("load_time_s") for r in ranks]),
        "compile_time_s": _max([r.get("compile_time_s") for r in ranks]),
        # images not made by this attempt: kept from the earlier merged record, or carried forward
        "resumed_images": sum(1 for _, src in col.valid.values() if src == "merged")
        + sum(int(r.get("resumed_images") or 0) for r in shard_recs),
        "images": images,
        "started_utc": min((r["started_utc"] for r in ranks if r.get("started_utc")), default=None),
        "finished_utc": utc_now(),
        "pid": base.get("pid"),
        "ranks": ranks,
    }
    if isinstance(record.get("tripwires"), dict):  # the lowest tag's section, its counts over every merged image
        from evalkit.tripwires import image_counts

        record["tripwires"] = {**record["tripwires"], **image_counts(images)}
    note = _quantized_counts_note(shard_recs)
    if note and isinstance(record.get("quantization"), dict):
        record["quantization"] = {**record["quantization"], "ranks_note": note}
    return record


def _failed_record(backend: str, col: Collected, failed: list[tuple[str, str]]) -> dict[str, Any]:
    lines = []
    for tag, why in failed:
        rank, ws = tag_rank(tag)
        lines.append(f"rank {rank} of {ws} ({tag}): {why}" if rank is not None else f"{tag}: {why}")
    first = next(sh.record for tag, sh in col.shards.items() if tag == failed[0][0])
    return {"schema_version": SCHEMA_VERSION, "backend": backend, "status": "failed", "reason": "; ".join(lines),
            "error": (first or {}).get("error"), "recipe": (first or {}).get("recipe"), "images": [],
            "memory": None, "latency": None, "load_time_s": None, "compile_time_s": None,
            "finished_utc": utc_now(),
            "ranks": [_rank_entry(sh.record, 0) for sh in col.shards.values() if sh.record is not None]}


def _previous_units(rd: RunDir) -> dict[str, dict[str, dict[str, Any]]]:
    try:
        old = read_merge(rd.merge_manifest) if rd.merge_manifest.is_file() else None
    except EvalkitError:
        old = None
    return {b: {u["prompt_id"]: u for u in (v.get("units") or []) if isinstance(u, dict) and "prompt_id" in u}
            for b, v in ((old or {}).get("backends") or {}).items() if isinstance(v, dict)}


def merge_backend(rd: RunDir, manifest: dict[str, Any], backend: str,
                  previous_units: dict[str, dict[str, Any]] | None = None) -> BackendMerge:
    """Merge one backend (see the module docstring); writes its merged record and deletes its shard files only
    when it is complete."""
    col = collect(rd, manifest, backend)
    if col.duplicates:
        pid, a, b = col.duplicates[0]
        more = f" (and {len(col.duplicates) - 1} more)" if len(col.duplicates) > 1 else ""
        return BackendMerge(backend, "duplicate", message=(
            f"{backend}: prompt {pid} is claimed by two shards, {a} and {b}{more}; delete the shard file that should "
            f"not count (its images are regenerated on the next run if needed), then rerun `evalkit merge {rd.root}`"))
    missing = col.missing(manifest)
    if missing:
        owner = _unit_owner(col.shards)
        shown = ", ".join(f"{p} ({owner.get(p, 'no unit')})" for p in missing[:3])
        failed = [(tag, sh.failed_reason) for tag, sh in col.shards.items() if sh.failed_reason]
        if failed:
            atomic_write_json(rd.generation_record(backend), _failed_record(backend, col, failed))
            return BackendMerge(backend, "failed", missing=missing,
                                message=f"{backend}: failed: {_failed_record(backend, col, failed)['reason']}")
        return BackendMerge(backend, "incomplete", missing=missing, message=(
            f"{backend}: {len(missing)} of {len(manifest['prompts'])} prompt(s) have no valid image: {shown}"
            f"{', ...' if len(missing) > 3 else ''}; rerun the same generate command (any number of ranks) to "
            "make exactly those"))
    prev_units = previous_units or {}
    if all(src == "merged" for _, src in col.valid.values()):
        # Nothing new: the merged record stands as it is (rewriting it would change nothing but its dates).
        return BackendMerge(backend, "complete", units=[
            {**prev_units.get(p["id"], {"prompt_id": p["id"], "tag": None, "rank": None, "world_size": None}),
             "sha256": col.valid[p["id"]][0]["sha256"]} for p in manifest["prompts"]])
    record = _merged_record(backend, manifest, col)
    from evalkit.records import checked_generation_record

    atomic_write_json(rd.generation_record(backend), checked_generation_record(record))
    units = []
    for p in manifest["prompts"]:
        entry, src = col.valid[p["id"]]
        tag = src.split(".")[0]
        if src == "merged":
            old = prev_units.get(p["id"])
            unit = dict(old) if old and old.get("sha256") == entry["sha256"] else {
                "prompt_id": p["id"], "tag": None, "rank": None, "world_size": None}
        else:
            rank, ws = tag_rank(tag)
            unit = {"prompt_id": p["id"], "tag": tag, "rank": rank, "world_size": ws}
        unit["sha256"] = entry["sha256"]
        units.append(unit)
    return BackendMerge(backend, "complete", units=units)


def remove_shards(rd: RunDir, backend: str) -> None:
    for sh in read_shards(rd, backend).values():
        for f in sh.files:
            f.unlink(missing_ok=True)
    for leftover in (rd.shards_dir(backend), rd.shards_dir(backend).parent):
        try:
            leftover.rmdir()
        except OSError:
            pass  # not empty (another backend's shards, or a file that is not ours): leave it


def merge_run(rd: RunDir, backends: list[str] | None = None) -> MergeResult:
    """Merge every backend of the run that has shard files or a merged record (or `backends`), then write
    merge.json (atomic) and delete the complete backends' shard files. Returns what each backend came to."""
    manifest = read_manifest(rd.manifest)
    names = list(backends if backends is not None else manifest.get("backends", []))
    previous = _previous_units(rd)
    result = MergeResult()
    for name in names:
        rec = generation_record_if_any(rd.generation_record(name))
        if not has_shards(rd, name) and rec is not None and rec.get("status") in ("skipped", "failed"):
            if rec.get("status") == "failed":
                result.backends[name] = BackendMerge(name, "failed", message=f"{name}: failed: {rec.get('reason')}")
            continue  # skipped: the direct record stands, nothing to merge
        result.backends[name] = merge_backend(rd, manifest, name, previous.get(name))
    old_backends: dict[str, Any] = {}
    if rd.merge_manifest.is_file():
        try:
            old_backends = dict(read_merge(rd.merge_manifest).get("backends") or {})
        except EvalkitError:
            old_backends = {}
    for name, bm in result.backends.items():
        if bm.status == "duplicate":
            continue  # nothing changed for it: keep what merge.json said before
        old_backends[name] = {"status": bm.status, "missing": bm.missing, "units": bm.units}
    atomic_write_json(rd.merge_manifest, checked_merge({"schema": MERGE_SCHEMA, "updated_utc": utc_now(),
                                                        "host": socket.gethostname(), "backends": old_backends}))
    for name, bm in result.backends.items():
        if bm.status == "complete":
            remove_shards(rd, name)
    return result


def _merged_latency(samples: list[float], warmup: int, ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """The pooled latency of every rank's images. Pooled images are in prompt order, so "the first image" is each
    unit's own: the merged first_vs_median is the worst unit's (each rank's is in `ranks`)."""
    from evalkit.generate.worker.measure import latency_stats

    lat = latency_stats(samples, warmup)
    lat.pop("first_s", None)
    firsts = [r["latency"]["first_vs_median"] for r in ranks
              if isinstance(r.get("latency"), dict) and isinstance(r["latency"].get("first_vs_median"), (int, float))]
    if "first_vs_median" in lat:
        lat["first_vs_median"] = max(firsts) if firsts else None
    return lat

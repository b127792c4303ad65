"""Read a run directory into the plain data the report draws from. Pure Python: no numpy, no matplotlib.

Everything the page, the figures and the tables show comes from here, so the three never disagree.
"""

from __future__ import annotations

import math
import re
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError
from evalkit.quantizers.base import Library
from evalkit.quantizers.registry import LIBRARIES, library_order
from evalkit.record_readings import partial_reason
from evalkit.records import GenerationRecord, MetricResult, read_generation_record, read_metric_record
from evalkit.rundir import REFERENCE_BACKEND, RunDir, current_summary, load_fid_mode, open_run


@dataclass(frozen=True)
class MetricInfo:
    """How to show one metric: read from the metric registry (evalkit/metrics/registry.py), never restated here.

    `kind` is the registry's "paired" | "prompt" | "set", or "unknown" for a metric an older run recorded that
    this evalkit no longer registers (it still shows, under its own name, with the direction its record states).
    """

    key: str
    label: str
    unit: str = ""
    higher_is_better: bool | None = None
    digits: int = 4
    kind: str = "unknown"
    reference: str = "bf16"  # what it compares against: "bf16" (the reference backend), "text", "real"

    @property
    def vs_reference(self) -> bool:
        """Measured per image against the reference backend's image: the reference itself has no value by design."""
        return self.kind == "paired" or (self.kind == "prompt" and self.reference == "bf16")

    @property
    def compares(self) -> str:
        """What a reader should know it is measured against: "reference", "text", "distribution" or "real"."""
        if self.kind == "paired":
            return "reference"
        if self.kind == "prompt":
            return "text" if self.reference == "text" else "reference-text"
        if self.kind == "set":
            return "real" if self.reference == "real" else "distribution"
        return "unknown"


def _registry() -> list[Any]:
    from evalkit.metrics.registry import list_metrics

    return list_metrics()


def metric_info(key: str, record: dict[str, Any] | None = None) -> MetricInfo:
    """The registry's facts for `key`; the record's own higher_is_better wins (it is what the run computed)."""
    spec = next((s for s in _registry() if s.name == key), None)
    if spec is not None:
        base = MetricInfo(key, spec.display, spec.unit, spec.higher_is_better, spec.digits, spec.kind, spec.reference)
    else:
        base = MetricInfo(key, key.replace("_", " "))
    hib = (record or {}).get("higher_is_better")
    if isinstance(hib, bool) and hib != base.higher_is_better:
        base = MetricInfo(base.key, base.label, base.unit, hib, base.digits, base.kind, base.reference)
    return base


def metric_order(keys: list[str]) -> list[str]:
    """Registry order (the order metrics were registered), then unknown metrics by name."""
    order = [s.name for s in _registry()]
    return sorted(keys, key=lambda k: (order.index(k) if k in order else len(order), k))


# Memory fields of a generation record, in the order the table shows them.
MEMORY_PHASES = [("after_load", "After load"), ("load_peak", "Load peak"), ("peak", "Peak (generation)")]
MEMORY_KINDS = [("allocated", "alloc."), ("reserved", "reserved")]

# Memory numbers a plot's x-axis can use: key -> (record field, axis label).
MEMORY_AXES: dict[str, tuple[str, str]] = {
    "peak_reserved": ("peak_reserved_gib", "Peak GPU memory, reserved (GiB)\ntorch.cuda.max_memory_reserved during generation"),
    "peak_allocated": ("peak_allocated_gib", "Peak GPU memory, allocated (GiB)\ntorch.cuda.max_memory_allocated during generation"),
    "after_load_reserved": ("after_load_reserved_gib", "GPU memory after load, reserved (GiB)\ntorch.cuda.memory_reserved"),
    "after_load_allocated": ("after_load_allocated_gib", "GPU memory after load, allocated (GiB)\ntorch.cuda.memory_allocated"),
    "load_peak_reserved": ("load_peak_reserved_gib", "Peak GPU memory while loading, reserved (GiB)\ntorch.cuda.max_memory_reserved"),
    "footprint": ("footprint_gib", "Weight footprint (GiB)\nbytes of all parameters and buffers"),
    "cpu_peak_rss": ("cpu_peak_rss_gib", "CPU peak RSS of the worker process (GiB)\nru_maxrss; NOT GPU memory"),
}


def expected_gap(b: "BackendView", key: str, m: dict[str, Any], reference: str) -> bool:
    """A metric that has no value by design: the reference compared with itself, or a backend that never ran
    (its reason is already shown once, as a backend problem)."""
    if not b.ok:
        return True
    return b.name == reference and "reference" in str(m.get("reason") or "").lower()


def metric_value(m: dict[str, Any] | None) -> float | None:
    """The headline number of a metric record: `mean` for per-image metrics, `value` for set-level ones (FID)."""
    if not m or m.get("status", "ok") != "ok":
        return None
    for k in ("mean", "value"):
        v = m.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return None


def safe_name(name: str) -> str:
    """A file-name component for any string: kept as is when already plain, else sanitised plus a hash (no collisions)."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64].strip(".") or "_"
    if clean == name:
        return name
    return f"{clean}-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:8]}"


@dataclass
class BackendView:
    name: str
    status: str  # ok | failed | skipped | pending
    reason: str | None
    record: dict[str, Any] | None
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary_entry: dict[str, Any] = field(default_factory=dict)  # summary.json backends[name]

    @property
    def partial_reason(self) -> str | None:
        """Why this backend quantized less than its name says on this device (e.g. bnb on CPU: only the T5), or None.

        summary.json's `partial_reason` first; older runs: the generation record's quantization.partial_reason,
        else its quantization.note when that says a component was left in bf16."""
        v = self.summary_entry.get("partial_reason")
        if isinstance(v, str) and v:
            return v
        return partial_reason(self.record)  # the one reading of a record (evalkit.record_readings), old notes included

    @property
    def partial(self) -> bool:
        return self.partial_reason is not None

    @property
    def broken(self) -> list[dict[str, Any]]:
        """Its broken images and backend-level tripwires (evalkit.tripwires): summary.json's list, else (a run
        summarised before tripwires) what its generation record states."""
        v = self.summary_entry.get("broken")
        if isinstance(v, list):
            return [e for e in v if isinstance(e, dict)]
        from evalkit.tripwires import recorded_broken

        return recorded_broken(self.record, None)

    @property
    def n_broken(self) -> int:
        from evalkit.tripwires import count_broken

        return count_broken(self.broken, len((self.record or {}).get("images") or [])) if self.broken else 0

    @property
    def latency_noisy(self) -> bool:
        """p90 - p10 above the median: the spread is larger than the number, so a ranking by it is noise."""
        lat = self.latency
        med, lo, hi = (lat.get(k) for k in ("median_s", "p10_s", "p90_s"))
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (med, lo, hi)):
            return False
        return (hi - lo) > med

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def memory(self) -> dict[str, Any]:
        return (self.record or {}).get("memory") or {}

    @property
    def latency(self) -> dict[str, Any]:
        return (self.record or {}).get("latency") or {}

    @property
    def recipe(self) -> dict[str, Any]:
        return (self.record or {}).get("recipe") or {}

    @property
    def library(self) -> str:
        return str(self.recipe.get("library") or self.name.split("-")[0].split("+")[0])

    @property
    def library_record(self) -> Library | None:
        return LIBRARIES.get(self.library)

    @property
    def library_display(self) -> str:
        lib = self.library_record
        return lib.display if lib else self.library

    @property
    def footprint_gib(self) -> float | None:
        fp = (self.record or {}).get("footprint") or {}
        v = fp.get("total_gib")
        if v is None and isinstance(fp.get("total_bytes"), (int, float)):
            v = fp["total_bytes"] / 2**30
        return v

    def memory_value(self, field_name: str) -> float | None:
        v = self.footprint_gib if field_name == "footprint_gib" else self.memory.get(field_name)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    @property
    def images(self) -> dict[str, dict[str, Any]]:
        return {img.get("prompt_id"): img for img in (self.record or {}).get("images") or [] if img.get("prompt_id")}

    @property
    def flags(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for img in (self.record or {}).get("images") or []:
            for f in img.get("flags") or []:
                counts[f] = counts.get(f, 0) + 1
        return counts


@dataclass
class ReportData:
    root: Path
    rd: RunDir
    manifest: dict[str, Any]
    summary: dict[str, Any]
    backends: list[BackendView]
    prompts: list[dict[str, Any]]
    metrics: list[MetricInfo]  # metrics with at least one ok value, in display order
    memory_axis: str
    notes: list[str] = field(default_factory=list)  # problems reading the run, shown on the page
    include_partial: bool = False  # let partially quantized backends win "best" cards and sit on Pareto fronts
    # metric key -> the reference's noise floor from calibration.json (evalkit/report/noise_floor.py); {} without one
    floors: dict[str, Any] = field(default_factory=dict)

    def competes(self, b: BackendView) -> bool:
        """May `b` be named best / sit on a Pareto front? A backend that quantized less than its name says would
        win on quality for the wrong reason, so it competes only when the user asked (--include-partial)."""
        return b.ok and (self.include_partial or not b.partial)

    @property
    def fid_mode(self) -> dict[str, Any] | None:
        """How score computed FID/KID (fid_mode.json; a schema-1 run's manifest), None before FID was scored."""
        mode = load_fid_mode(self.rd, self.manifest)
        return dict(mode) if mode else None

    @property
    def images_left_out(self) -> list[dict[str, Any]]:
        """summary.json `images_left_out`: [{backend, path, reason}] (images the stages refused to use)."""
        raw = self.summary.get("images_left_out") if isinstance(self.summary, dict) else None
        return [x for x in raw if isinstance(x, dict)] if isinstance(raw, list) else []

    @property
    def reference(self) -> str:
        return str(self.manifest.get("reference_backend") or REFERENCE_BACKEND)

    @property
    def reference_view(self) -> BackendView | None:
        return next((b for b in self.backends if b.name == self.reference), None)

    @property
    def random_weights(self) -> bool:
        model = self.manifest.get("model") or {}
        return bool(model.get("random_weights")) or model.get("quality_meaningful") is False

    @property
    def synthetic(self) -> bool:
        """A run evalkit.report.synthetic made up (demos, tests, the docs' figure): nothing in it was measured."""
        return (self.manifest.get("config") or {}).get("synthetic") is True

    @property
    def device_type(self) -> str:
        return str((self.manifest.get("device") or {}).get("type") or "unknown")

    @property
    def has_cuda_memory(self) -> bool:
        return any(b.memory_value("peak_reserved_gib") is not None for b in self.backends)

    @property
    def scored(self) -> bool:
        return any(b.metrics for b in self.backends)

    def skipped_metrics(self, expected: bool = False) -> list[tuple[str, str, str]]:
        """(backend, metric, reason) for every metric without a value; `expected` picks the by-design gaps instead."""
        out = []
        for b in self.backends:
            for key, m in b.metrics.items():
                if m.get("status", "ok") != "ok" or metric_value(m) is None:
                    if expected_gap(b, key, m, self.reference) == expected:
                        out.append((b.name, key, str(m.get("reason") or m.get("status") or "no value")))
        return out


def verify_images(rd: RunDir, manifest: dict[str, Any], generation: dict[str, dict[str, Any] | None]) -> None:
    """The images the page shows and its numbers describe are the files the generation records list (evalkit.integrity,
    as score and check do: stat fingerprints, a hash where they differ); EvalkitError naming the first bad file.
    `generation`: {backend: its generation record, or None}. A missing file is not refused: the page says "image
    file missing" in its place and its numbers still describe the recorded file (a run copied without its images)."""
    from evalkit.integrity import MISSING, IntegrityReport, verify_images as verify_backend

    total = IntegrityReport(root=rd.root)
    for name, rec in generation.items():
        if isinstance(rec, dict) and rec.get("status") == "ok" and isinstance(rec.get("images"), list):
            total.merge(verify_backend(rd, name, rec, manifest=manifest, check_extra=False))
    total.problems = [p for p in total.problems if not str(p.get("reason", "")).startswith(MISSING)]
    total.raise_if_problems("The run's metrics were computed from the recorded file, so a page built now would "
                            "show numbers that no longer describe its images")


def load_report_data(run_dir: str | Path, memory_axis: str | None = None, include_partial: bool = False) -> ReportData:
    """Open a run directory and gather what the report shows; the run's summary is built in memory
    (rundir.current_summary): score owns summary.json, and the report writes no record.

    Raises EvalkitError (one line, naming the file) for a manifest or record with the wrong shape."""
    rd, manifest = open_run(run_dir)  # the typed reader: one line naming the file and the field
    names = list(manifest.get("backends") or [])
    reference = str(manifest.get("reference_backend") or REFERENCE_BACKEND)
    if reference in names:  # the reference goes first everywhere
        names.remove(reference)
        names.insert(0, reference)
    notes: list[str] = []
    # Every record is read and shape-checked before the summary is built from them, so a mangled one is named here.
    records = {name: _read_backend_records(rd, name) for name in names}
    verify_images(rd, manifest, {name: rec for name, (rec, _metrics) in records.items()})
    summary = current_summary(rd, manifest)  # report reads the run; it writes only its own files
    views = _backend_views(names, records, summary, reference)

    data = ReportData(rd.root, rd, manifest, summary, views, list(manifest.get("prompts") or []),
                      _shown_metrics(views), "", notes, include_partial)
    from evalkit.report.noise_floor import load_noise_floors

    data.floors, floor_note = load_noise_floors(rd.root, reference)
    if floor_note:
        notes.append(floor_note)
    data.memory_axis = choose_memory_axis(data, memory_axis)
    return data


def _read_backend_records(rd: RunDir, name: str) -> tuple[GenerationRecord | None, dict[str, MetricResult]]:
    """A backend's generation record (None before it is generated) and its metric results by key ({} before it is
    scored), through the run directory's typed readers (evalkit.records): EvalkitError naming the file and the
    field otherwise."""
    gen_path, met_path = rd.generation_record(name), rd.metrics_record(name)
    rec = read_generation_record(gen_path) if gen_path.exists() else None
    metrics = dict(read_metric_record(met_path).get("metrics") or {}) if met_path.exists() else {}
    return rec, metrics


def _backend_views(names: list[str], records: dict[str, tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]],
                   summary: dict[str, Any], reference: str) -> list[BackendView]:
    """One view per backend of the manifest, in the order every table and figure shows them: the reference first,
    then libraries in their registered order (evalkit/quantizers/base.py), run order within one."""
    entries = summary.get("backends") if isinstance(summary, dict) else None
    entries = entries if isinstance(entries, dict) else {}
    views = []
    for name in names:
        rec, metrics = records[name]
        status = str(rec.get("status") or "failed") if rec else "pending"
        reason = (rec or {}).get("reason") or (None if rec else "not generated yet (no generation record)")
        entry = entries.get(name)
        views.append(BackendView(name, status, reason, rec, metrics, entry if isinstance(entry, dict) else {}))
    views.sort(key=lambda b: (b.name != reference, library_order(b.library)))
    return views


def _shown_metrics(views: list[BackendView]) -> list[MetricInfo]:
    """The metrics with at least one ok value, in display order (metric_order), each described by the registry
    and the first record that has it."""
    keys: list[str] = []
    for b in views:
        for k, m in b.metrics.items():
            if metric_value(m) is not None and k not in keys:
                keys.append(k)
    keys = metric_order(keys)
    return [metric_info(k, next((b.metrics[k] for b in views if k in b.metrics), None)) for k in keys]


def choose_memory_axis(data: ReportData, requested: str | None) -> str:
    """Peak reserved on CUDA (what decides whether a run fits a card). On CPU the weight footprint: a real, stable
    number, where process RSS differences (0.02 GiB between backends) are allocator noise."""
    if requested:
        if requested not in MEMORY_AXES:
            from evalkit.errors import suggest

            raise EvalkitError(f"unknown memory axis {requested!r}; choose from {', '.join(MEMORY_AXES)}.{suggest(requested, list(MEMORY_AXES))}")
        return requested
    if data.has_cuda_memory:
        return "peak_reserved"
    if any(b.footprint_gib is not None for b in data.backends):
        return "footprint"
    return "cpu_peak_rss"


def pareto_front(points: list[tuple[str, float, float]], higher_is_better: bool) -> list[str]:
    """Names of the non-dominated (x, y) points: less memory and better quality. Sorted by x."""
    sign = 1.0 if higher_is_better else -1.0
    front = []
    for name, x, y in points:
        dominated = any(
            (qx <= x and sign * qy >= sign * y) and (qx < x or sign * qy > sign * y)
            for qn, qx, qy in points if qn != name
        )
        if not dominated:
            front.append((x, name))
    return [n for _, n in sorted(front)]

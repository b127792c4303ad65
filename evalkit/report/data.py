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

from evalkit.io import read_json
from evalkit.rundir import REFERENCE_BACKEND, RunDir, open_run, write_summary


@dataclass(frozen=True)
class MetricInfo:
    """How to show one metric. `higher_is_better` from the metric record wins over this table."""

    key: str
    label: str
    unit: str = ""
    higher_is_better: bool | None = None
    digits: int = 4
    compares: str = "reference"  # what it compares against: "reference" (bf16's image), "text", "distribution"


# Known metrics (score's names). An unknown metric still shows, under its own name.
KNOWN_METRICS: dict[str, MetricInfo] = {m.key: m for m in [
    MetricInfo("lpips_alex", "LPIPS (AlexNet)", "", False, 4),
    MetricInfo("lpips_vgg", "LPIPS (VGG16)", "", False, 4),
    MetricInfo("psnr", "PSNR", "dB", True, 2),
    MetricInfo("ssim", "SSIM", "", True, 4),
    MetricInfo("ms_ssim", "MS-SSIM", "", True, 4),
    MetricInfo("fid", "FID", "", False, 2, "distribution"),
    MetricInfo("kid", "KID", "", False, 4, "distribution"),
    MetricInfo("fid_real", "FID vs real images", "", False, 2, "real"),
    MetricInfo("kid_real", "KID vs real images", "", False, 4, "real"),
    MetricInfo("clip_score", "CLIP score", "", True, 2, "text"),
    MetricInfo("clip_score_drop", "CLIP score drop", "", False, 3, "text"),
    MetricInfo("clip_iqa", "CLIP-IQA", "", True, 4, "image"),
    MetricInfo("image_reward", "ImageReward", "", True, 3, "text"),
]}
METRIC_ORDER = list(KNOWN_METRICS)

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


def metric_info(key: str, record: dict[str, Any] | None = None) -> MetricInfo:
    base = KNOWN_METRICS.get(key) or MetricInfo(key, key.replace("_", " "))
    hib = (record or {}).get("higher_is_better")
    if isinstance(hib, bool) and hib != base.higher_is_better:
        base = MetricInfo(base.key, base.label, base.unit, hib, base.digits, base.compares)
    return base


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


def load_report_data(run_dir: str | Path, memory_axis: str | None = None) -> ReportData:
    """Open a run directory, rebuild summary.json (the contract says every stage does), and gather what the report shows."""
    rd, manifest = open_run(run_dir)
    summary = write_summary(rd.root)
    names = list(manifest.get("backends") or [])
    reference = str(manifest.get("reference_backend") or REFERENCE_BACKEND)
    if reference in names:  # the reference goes first everywhere
        names.remove(reference)
        names.insert(0, reference)
    notes: list[str] = []
    views = []
    for name in names:
        gen_path, met_path = rd.generation_record(name), rd.metrics_record(name)
        rec = None
        if gen_path.exists():
            try:
                rec = read_json(gen_path)
            except Exception as e:  # one broken record must not take the whole report down
                notes.append(str(e))
        status = str(rec.get("status") or "failed") if rec else "pending"
        reason = (rec or {}).get("reason") or (None if rec else "not generated yet (no generation record)")
        metrics: dict[str, dict[str, Any]] = {}
        if met_path.exists():
            try:
                metrics = dict((read_json(met_path) or {}).get("metrics") or {})
            except Exception as e:
                notes.append(str(e))
        views.append(BackendView(name, status, reason, rec, metrics))

    keys: list[str] = []
    for b in views:
        for k, m in b.metrics.items():
            if metric_value(m) is not None and k not in keys:
                keys.append(k)
    keys.sort(key=lambda k: (METRIC_ORDER.index(k) if k in METRIC_ORDER else len(METRIC_ORDER), k))
    metrics = [metric_info(k, next((b.metrics[k] for b in views if k in b.metrics), None)) for k in keys]

    data = ReportData(rd.root, rd, manifest, summary, views, list(manifest.get("prompts") or []), metrics, "", notes)
    data.memory_axis = choose_memory_axis(data, memory_axis)
    return data


def choose_memory_axis(data: ReportData, requested: str | None) -> str:
    """Peak reserved on CUDA (what decides whether a run fits a card); the CPU RSS only when no CUDA number exists."""
    if requested:
        if requested not in MEMORY_AXES:
            from evalkit.errors import EvalkitError, suggest

            raise EvalkitError(f"unknown memory axis {requested!r}; choose from {', '.join(MEMORY_AXES)}.{suggest(requested, list(MEMORY_AXES))}")
        return requested
    if data.has_cuda_memory:
        return "peak_reserved"
    if any(b.memory_value("cpu_peak_rss_gib") is not None for b in data.backends):
        return "cpu_peak_rss"
    return "footprint"


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


# ---- formatting shared by the page and the tables ----

def fmt_num(v: Any, digits: int = 3) -> str:
    if v is None or not isinstance(v, (int, float)) or isinstance(v, bool):
        return "—"
    if not math.isfinite(v):
        return "∞" if v > 0 else ("−∞" if v < 0 else "NaN")
    if v != 0 and abs(v) < 10 ** -(digits - 1):
        # Near-identical images give LPIPS ~1e-5: fixed decimals would print 0.000 and hide the ranking.
        return f"{v:.3g}"
    return f"{v:.{digits}f}"


def fmt_seconds(v: Any) -> str:
    """Milliseconds below one second, seconds above: tiny CPU runs and full GPU runs both read naturally."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return "—"
    if abs(v) < 1:
        return f"{v * 1000:.1f} ms"
    if abs(v) < 100:
        return f"{v:.2f} s"
    return f"{v:.0f} s"

"""The number a bound is judged against, read from summary.json, or why there is none.

A value the run states as null with a reason (CUDA memory on a CPU run) is "unmeasured"; a value of the wrong type
(a string, a list) is a malformed summary and stops the check (exit 2) naming the file and the field: it must never
read as "not measured", which `allow_unmeasured` would excuse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.check.inputs import number_or_none
from evalkit.check.thresholds import RESOURCES, Bound
from evalkit.rundir import RunDir


@dataclass(frozen=True)
class Measured:
    """A value read from the run, or why there is none (`unmeasured` is true for a null-with-reason resource)."""

    value: float | None
    label: str = ""  # which statistic: "mean", "ci_high", ...
    why_missing: str = ""
    unmeasured: bool = False  # excusable by allow_unmeasured
    note: str = ""
    sd: float | None = None  # per-prompt standard deviation (ddof=1), for sample-size guidance
    n: int | None = None


def dig(entry: dict[str, Any] | None, path: tuple[str, ...]) -> Any:
    cur: Any = entry
    for k in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(k)
    return cur


def num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def fmt(x: float | None) -> str:
    """Four significant digits: enough to see why 0.2501 > 0.25, short enough for a PR comment."""
    if x is None:
        return "—"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return f"{x:.4g}"


def within(value: float, bound: Bound) -> bool:
    if math.isnan(value):
        return False  # a NaN never passes (inputs with NaN are refused before this; a computed NaN is not a pass)
    return value <= bound.limit if bound.kind == "max" else value >= bound.limit


def measure_metric(bound: Bound, backend: str, entry: dict[str, Any], rd: RunDir, use_ci: bool,
                   n_prompts: int | None = None) -> Measured:
    metrics = entry.get("metrics") or {}
    name = bound.quantity
    m = metrics.get(name)
    if m is None:
        if not metrics:
            return Measured(None, why_missing=f"{name} not scored: the run has no metrics for {backend} "
                                              f"(no {rd.relative(rd.metrics_record(backend))}; run `evalkit score`)")
        return Measured(None, why_missing=f"{name} not scored for this backend (scored: {', '.join(sorted(metrics))})")
    st = m.get("status", "ok")
    if st != "ok":
        return Measured(None, why_missing=f"{name} was {st} in the run: {m.get('reason') or 'no reason recorded'}")
    point_key = "mean" if m.get("mean") is not None else "value"
    point = m.get(point_key)
    if point is None:
        return Measured(None, why_missing=f"{name} has no value in the run ({point_key} is null)")
    n = m.get("n")
    # Fewer values than prompts is said, never a silently smaller n.
    of = f" of {n_prompts} prompts" if n_prompts is not None and isinstance(n, int) and n < n_prompts else ""
    note = f"n={n}{of}" if n is not None else ""
    sd = num(m.get("std"))
    n_int = n if isinstance(n, int) and not isinstance(n, bool) else None
    if not use_ci:
        return Measured(float(point), point_key, note=note, sd=sd, n=n_int)
    ci_key = "ci_high" if bound.kind == "max" else "ci_low"
    ci = m.get(ci_key)
    if ci is not None:
        return Measured(float(ci), ci_key, note=f"{note}, {point_key}={fmt(point)}".lstrip(", "), sd=sd, n=n_int)
    # FID/KID are one number over the whole set; there is no CI to judge, so say the point value is used.
    return Measured(float(point), f"{point_key}; no CI", note=f"{name} has no {ci_key}; judged on its {point_key}")


def measure_resource(bound: Bound, backend: str, entry: dict[str, Any], summary: dict[str, Any], reference: str,
                     summary_path: Path) -> Measured:
    res = RESOURCES[bound.quantity]

    def read(name: str, e: dict[str, Any] | None, path: tuple[str, ...]) -> float | None:
        return number_or_none(summary_path, f"backends.{name}.{'.'.join(path)}", dig(e, path))

    if res.name == "latency_ratio_to_bf16":
        mine = read(backend, entry, ("latency", "median_s"))
        ref_entry = summary["backends"].get(reference)
        ref = read(reference, ref_entry, ("latency", "median_s"))
        if mine is None:
            return Measured(None, why_missing="not measured (latency.median_s is null)", unmeasured=True)
        if ref is None or ref <= 0:
            why = (f"reference {reference!r} {ref_entry.get('status')}: {ref_entry.get('reason')}"
                   if ref_entry and ref_entry.get("status") != "ok" else f"reference {reference!r} has no latency")
            return Measured(None, why_missing=f"no latency ratio: {why}")
        return Measured(mine / ref, note=f"{fmt(mine)} s / {reference} {fmt(ref)} s")
    if res.name == "flagged_images":
        flags = entry.get("image_flags") or {}  # counts, checked when summary.json was read
        return Measured(float(sum(flags.values())), note=", ".join(f"{k}: {v}" for k, v in sorted(flags.items())))
    value = read(backend, entry, res.path)
    if value is None:
        why = dig(entry, res.reason_path) if res.reason_path else None
        if why is None and res.path[0] == "memory":
            why = f"device {dig(entry, ('memory', 'device')) or 'unknown'}"
        field = ".".join(res.path)
        return Measured(None, why_missing=f"not measured ({field} is null: {why or 'no reason recorded'})",
                        unmeasured=True)
    return Measured(value)

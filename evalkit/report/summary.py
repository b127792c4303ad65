"""The Summary section's view model: the model notice, the cards, the memory-and-speed table and the quality table.

Every number here is formatted per column (evalkit/report/numbers.py): one unit and one number of decimals per
column. Nothing is called best (a bold cell, a card) unless its interval is clear of every other competitor's,
and a bold cell shows enough digits for the reader to see that it is.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from evalkit.report.data import MEMORY_AXES, MEMORY_KINDS, MEMORY_PHASES, BackendView, MetricInfo, ReportData, metric_value
from evalkit.report.numbers import (
    SecondsColumn, decimals_for, fmt_fixed, fmt_num, fmt_seconds, intervals_clear, is_number, separating_decimals,
)

GIB_DECIMALS = 2  # memory never shows fewer decimals than this (0.01 GiB): the allocator noise is 0.02 GiB


# ---------------------------------------------------------------- the model

def model_notice(data: ReportData) -> dict[str, str] | None:
    """What the reader must know about the model before any number: a synthetic demo, or a model whose seeded
    random weights make its images noise. (A `random_weights` run has its own banner and shows no quality.)

    The manifest's model record says `random_weights`/`quality_meaningful`; the tiny model records false/true there
    (its quality metrics do measure how far each backend's arithmetic moves from bf16's) and says "seeded random
    weights" only in its `note`, so the kind and the note are read too."""
    model = data.manifest.get("model") or {}
    if data.random_weights:
        return None
    note = str(model.get("note") or "")
    facts = (f"Manifest: model {model.get('spec') or '?'} (kind {model.get('kind') or '?'}), "
             f"random_weights={str(bool(model.get('random_weights'))).lower()}, "
             f"quality_meaningful={str(model.get('quality_meaningful') is not False).lower()}"
             + (f"; note: “{note}”" if note else "") + ".")
    if data.synthetic:
        return {"kind": "synthetic", "title": "Synthetic demo data: not a measurement.",
                "text": "No model ran: images, memory, latency and metrics were made up by evalkit.report.synthetic "
                        "to show how the report reads. Every figure is stamped as such.", "facts": facts}
    tiny = model.get("kind") == "tiny"
    if tiny or re.search(r"random(ly initiali[sz]ed)? weights", note, re.I):
        what = "a toy-sized pipeline whose weights are seeded random numbers" if tiny else "random weights (its note)"
        return {"kind": "toy", "title": "Test model with random weights: its images are noise, not pictures.",
                "text": f"“{model.get('spec') or 'this model'}” is {what}. The quality metrics still measure how far "
                        f"each backend's arithmetic moves its output from {data.reference}'s, but nothing here says how "
                        "a real model's images would look"
                        + ("; memory and latency are those of a toy-sized model." if tiny else "."), "facts": facts}
    return None


# ---------------------------------------------------------------- who wins

def _interval(rec: dict[str, Any] | None) -> tuple[float, float] | None:
    lo, hi = (rec or {}).get("ci_low"), (rec or {}).get("ci_high")
    ok = all(is_number(x) and math.isfinite(x) for x in (lo, hi))
    return (float(lo), float(hi)) if ok else None


@dataclass(frozen=True)
class Candidate:
    name: str
    value: float
    interval: tuple[float, float] | None  # a CI, or p10–p90 for latency; None: nothing backs a ranking
    indicative: bool = False


def _metric_candidates(data: ReportData, m: MetricInfo) -> list[Candidate]:
    out = []
    for b in data.backends:
        if b.name == data.reference or not data.competes(b):
            continue
        rec = b.metrics.get(m.key)
        v = metric_value(rec)
        if v is not None:
            out.append(Candidate(b.name, v, _interval(rec), bool((rec or {}).get("indicative"))))
    return out


def clear_winner(cands: list[Candidate], higher_is_better: bool) -> Candidate | None:
    """The best candidate when its interval is clear of every other's, else None (no interval, an indicative
    value or an overlap: the data cannot back the claim)."""
    if not cands:
        return None
    ranked = sorted(cands, key=lambda c: -c.value if higher_is_better else c.value)
    best = ranked[0]
    if best.interval is None or best.indicative or any(c.interval is None for c in ranked[1:]):
        return None
    return best if intervals_clear(best.interval, [c.interval for c in ranked[1:]]) else None  # type: ignore[misc]


def best_backend(data: ReportData, m: MetricInfo) -> str | None:
    """The backend to bold for `m`, or None when the data cannot back the claim: the best value's CI must be
    disjoint from every other competitor's CI (no CI, an indicative value, or an overlap: nothing is bolded)."""
    if m.higher_is_better is None:
        return None
    win = clear_winner(_metric_candidates(data, m), m.higher_is_better)
    return win.name if win else None


def _latency_candidates(data: ReportData) -> list[Candidate]:
    out = []
    for b in data.backends:
        lat = b.latency
        med = lat.get("median_s")
        if not data.competes(b) or not is_number(med):
            continue
        lo, hi = lat.get("p10_s"), lat.get("p90_s")
        out.append(Candidate(b.name, float(med), (float(lo), float(hi)) if is_number(lo) and is_number(hi) else None))
    return out


# ---------------------------------------------------------------- quality table

@dataclass(frozen=True)
class QualityColumn:
    decimals: int
    best: str | None  # the backend shown bold, only when the digits shown make its lead visible


def quality_column(data: ReportData, m: MetricInfo) -> QualityColumn:
    """One format for a metric's column (values, CIs, std, noise floor): the registry's decimals, more when its
    smallest value would show fewer than 3 significant digits (the floor fewer than 2), and more again when a bold
    value's lead is hidden."""
    nums: list[Any] = []
    for b in data.backends:
        rec = b.metrics.get(m.key) or {}
        if b.ok and metric_value(rec) is not None:
            shows_std = rec.get("ci_low") is None and not m.vs_reference  # as quality_rows prints it
            nums += [metric_value(rec), rec.get("ci_low"), rec.get("ci_high"), rec.get("std") if shows_std else None]
    decimals = decimals_for(nums, 3, at_least=m.digits)
    floor = data.floors.get(m.key)
    if floor is not None and floor.ok and is_number(floor.value):
        # The floor is printed in the same column format, with at least two significant digits: calibrate's own
        # display rounds 0.0000666 to "0.0001", one digit beside values printed with three.
        decimals = max(decimals, decimals_for([floor.value], 2))
    best = best_backend(data, m)
    if best is not None:
        cands = _metric_candidates(data, m)
        mine = next(c for c in cands if c.name == best)
        others = [c.interval for c in cands if c.name != best and c.interval is not None]
        shown = separating_decimals(mine.interval, others, bool(m.higher_is_better), decimals)  # type: ignore[arg-type]
        if shown is None:
            best = None  # a lead no printable digit shows is not one to put in bold
        else:
            decimals = shown
    return QualityColumn(decimals, best)


def quality_rows(data: ReportData) -> list[dict[str, Any]]:
    cols = {m.key: quality_column(data, m) for m in data.metrics}
    rows = []
    for b in data.backends:
        if not b.ok:
            continue
        cells = []
        for m in data.metrics:
            rec = b.metrics.get(m.key) or {}
            v = metric_value(rec)
            if v is None:
                why = rec.get("reason") or ("reference" if b.name == data.reference and m.vs_reference else "not scored")
                cells.append({"value": None, "why": why})
                continue
            d = cols[m.key].decimals
            lo, hi, sd = rec.get("ci_low"), rec.get("ci_high"), rec.get("std")
            # Per-image metrics carry a bootstrap CI; set-level ones (FID, KID) at most a std over subsets.
            spread = (f"[{fmt_fixed(lo, d)}, {fmt_fixed(hi, d)}]" if lo is not None and hi is not None
                      else f"± {fmt_fixed(sd, d)} std" if is_number(sd) and not m.vs_reference else "no CI")
            cells.append({"value": fmt_fixed(v, d), "raw": v, "ci": spread, "note": rec.get("note") or rec.get("description") or "",
                          "n": rec.get("n"), "n_ref": rec.get("n_reference"), "best": cols[m.key].best == b.name,
                          "indicative": bool(rec.get("indicative"))})
        rows.append({"name": b.name, "cells": cells, "is_ref": b.name == data.reference, "partial": b.partial_reason,
                     "broken": b.n_broken})
    return rows


def floor_text(data: ReportData, m: MetricInfo) -> str | None:
    """The metric's noise floor in its column's format ("identical" and the like as calibrate wrote them); None
    without a measured floor. calibrate's own `display` rounds at the registry's digits (0.0000666 -> "0.0001"),
    which put one significant digit beside values printed with three."""
    f = data.floors.get(m.key)
    if f is None or not f.ok:
        return None
    if not is_number(f.value):
        return f.display or "—"
    return fmt_fixed(f.value, quality_column(data, m).decimals)


def noise_floor_cells(data: ReportData) -> list[dict[str, Any]] | None:
    """The quality table's noise-floor row, one cell per shown metric; None when the run has no calibration.json
    (the table is then exactly what it was before calibrations existed)."""
    if not data.floors:
        return None
    cells = []
    for m in data.metrics:
        f = data.floors.get(m.key)
        if f is None:
            cells.append({"text": "—", "note": "not a paired metric: calibration does not measure it", "ok": False})
        elif not f.ok:
            cells.append({"text": "not measured", "note": f.reason or f.status, "ok": False})
        else:
            note = "byte-identical under every perturbation" if f.identical else f"set by {f.source}" if f.source else ""
            cells.append({"text": floor_text(data, m), "note": note, "ok": True})
    return cells


# ---------------------------------------------------------------- memory and speed table

def _ratio(v: float | None, ref: float | None) -> str:
    if v is None or ref in (None, 0):
        return ""
    return f"×{v / ref:.2f}"


def _gib_column(values: list[Any]) -> int:
    return decimals_for(values, 3, at_least=GIB_DECIMALS)


def perf_view(data: ReportData) -> dict[str, Any]:
    """The memory-and-speed table: rows, and per column one unit and one format.

    A run where no backend measured GPU memory (a CPU run) has no GPU columns at all: the reason is said once,
    above the table, instead of one identical "n/a (CPU: ...)" row per backend."""
    ok = [b for b in data.backends if b.ok]
    gpu_fields = [f"{phase}_{kind}_gib" for phase, _ in MEMORY_PHASES for kind, _ in MEMORY_KINDS]
    gpu_columns = any(b.memory_value(f) is not None for b in ok for f in gpu_fields)
    # The unit and digits follow the medians (the headline); p10–p90 beneath share them.
    lat = SecondsColumn([b.latency.get("median_s") for b in ok])
    load = SecondsColumn([(b.record or {}).get("load_time_s") for b in ok])
    comp = SecondsColumn([(b.record or {}).get("compile_time_s") for b in ok])
    d_weights = _gib_column([b.footprint_gib for b in ok])
    d_gpu = _gib_column([b.memory_value(f) for b in ok for f in gpu_fields])
    d_rss = _gib_column([b.memory_value("cpu_peak_rss_gib") for b in ok])
    ref = data.reference_view
    ref_peak = ref.memory_value("peak_reserved_gib") if ref else None
    ref_rss = ref.memory_value("cpu_peak_rss_gib") if ref else None
    ref_lat = ref.latency.get("median_s") if ref else None
    rows = []
    for b in data.backends:
        is_ref = b.name == data.reference
        cells = [b.memory_value(f) for f in gpu_fields]
        cuda_na = None
        if gpu_columns and b.ok and all(c is None for c in cells):
            cuda_na = f"n/a ({_device_word(b, data)}: {b.memory.get('cuda_reason') or 'not measured'})"
        lat_rec, rec = b.latency, (b.record or {})
        med = lat_rec.get("median_s")
        rows.append({
            "name": b.name, "status": b.status, "reason": b.reason, "ok": b.ok, "library": b.library, "is_ref": is_ref,
            "footprint": b.footprint_gib, "footprint_text": fmt_fixed(b.footprint_gib, d_weights),
            "cells": [{"raw": c, "text": fmt_fixed(c, d_gpu)} for c in cells], "cuda_na": cuda_na,
            "peak_ratio": "" if is_ref else _ratio(b.memory_value("peak_reserved_gib"), ref_peak),
            "rss": b.memory_value("cpu_peak_rss_gib"), "rss_text": fmt_fixed(b.memory_value("cpu_peak_rss_gib"), d_rss),
            "rss_ratio": "" if is_ref or gpu_columns else _ratio(b.memory_value("cpu_peak_rss_gib"), ref_rss),
            "lat_med": med, "lat_text": lat(med), "lat_spread": f"{lat(lat_rec.get('p10_s'))}–{lat(lat_rec.get('p90_s'))}",
            "lat_n": lat_rec.get("n"), "lat_ratio": "" if is_ref else _ratio(med, ref_lat),
            "load": rec.get("load_time_s"), "load_text": load(rec.get("load_time_s")),
            "compile": rec.get("compile_time_s"), "compile_text": comp(rec.get("compile_time_s")),
            "flags": b.flags, "partial": b.partial_reason, "lat_noisy": b.latency_noisy, "broken": b.n_broken,
            # the library's integration is deprecated upstream (recipe.deprecated, from its Library record)
            "deprecated": b.recipe.get("deprecated"),
        })
    reasons = sorted({str(b.memory.get("cuda_reason") or "not measured") for b in ok})
    return {"rows": rows, "gpu_columns": gpu_columns, "gpu_na_reasons": [] if gpu_columns else reasons,
            "units": {"latency": lat.unit, "load": load.unit, "compile": comp.unit}}


def _device_word(b: BackendView, data: ReportData) -> str:
    dev = b.memory.get("device") or data.device_type
    return "CPU" if dev == "cpu" else str(dev)


# ---------------------------------------------------------------- cards

def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def highlights(data: ReportData) -> list[dict[str, str]]:
    """At-a-glance cards: least memory, fastest, and closest to the reference by the first paired metric. A card
    names a winner only when the numbers back it: "Fastest" needs a p10–p90 clear of every other backend's, and
    "Closest" a CI clear of every other's (as the bold in the quality table)."""
    # A partially quantized backend cannot be "least memory" or "closest to bf16" for the wrong reason.
    ok = [b for b in data.backends if data.competes(b)]
    out = []
    field, label = MEMORY_AXES[data.memory_axis]
    mem = [(b.memory_value(field), b) for b in ok if b.memory_value(field) is not None]
    ref = data.reference_view
    if mem:
        v, b = min(mem, key=lambda t: t[0])  # type: ignore[arg-type, return-value]
        refv = ref.memory_value(field) if ref and ref.ok else None
        out.append({"title": "Least memory", "backend": b.name, "value": f"{fmt_num(v, 2)} GiB",
                    "detail": label.split("\n")[0] + (f"; {data.reference}: {fmt_num(refv, 2)} GiB" if refv and b.name != data.reference else "")})
    card = _fastest_card(data)
    if card:
        out.append(card)
    if not data.random_weights:
        card = _closest_card(data)
        if card:
            out.append(card)
    partial = [b for b in data.backends if b.ok and b.partial]
    if partial:
        out.append({"title": "Partly quantized", "backend": _plural(len(partial), "backend") + " †",
                    "value": ", ".join(b.name for b in partial[:3]) + ("…" if len(partial) > 3 else ""),
                    "detail": ("quantized less than the name says on this device; "
                               + ("included in the cards above (--include-partial)" if data.include_partial
                                  else "left out of the cards above and the Pareto fronts"))})
    failed = [b for b in data.backends if not b.ok]
    if failed:
        out.append({"title": "Did not run", "backend": _plural(len(failed), "backend"),
                    "value": ", ".join(b.name for b in failed[:3]) + ("…" if len(failed) > 3 else ""), "detail": "reasons under Problems"})
    return out


def _fastest_card(data: ReportData) -> dict[str, str] | None:
    cands = _latency_candidates(data)
    if not cands:
        return None
    win = clear_winner(cands, higher_is_better=False)
    if win is None:
        # Name who is tied, not who "nearly" won: the lowest median's p10–p90 and the ranges it overlaps.
        low = min(cands, key=lambda c: c.value)
        tied = [c.name for c in cands if c is not low and (low.interval is None or c.interval is None
                                                          or not intervals_clear(low.interval, [c.interval]))]
        names = ", ".join([low.name] + tied[:3]) + ("…" if len(tied) > 3 else "")
        return {"title": "Fastest", "backend": "No clear winner", "value": "p10–p90 ranges overlap",
                "detail": f"{names}: their latency spreads overlap, so none of them is measurably the fastest",
                "unclear": "1"}
    ref = data.reference_view
    refv = ref.latency.get("median_s") if ref and ref.ok else None
    return {"title": "Fastest", "backend": win.name, "value": fmt_seconds(win.value),
            "detail": "median latency per image, p10–p90 clear of every other backend's"
                      + (f"; {data.reference}: {fmt_seconds(refv)}" if refv and win.name != data.reference else "")}


def _closest_card(data: ReportData) -> dict[str, str] | None:
    for m in data.metrics:
        if m.kind != "paired" or m.higher_is_better is None:
            continue
        cands = _metric_candidates(data, m)
        if not cands:
            continue
        col = quality_column(data, m)
        side = "higher is better" if m.higher_is_better else "lower is better"
        if col.best is None:
            return {"title": f"Closest to {data.reference}", "backend": "No clear winner",
                    "value": f"by {m.label}", "unclear": "1",
                    "detail": f"the 95% CIs overlap ({side}): no backend is measurably closer"}
        v = next(c.value for c in cands if c.name == col.best)
        return {"title": f"Closest to {data.reference}", "backend": col.best,
                "value": f"{m.label} {fmt_fixed(v, col.decimals)}",
                "detail": f"by {m.label} ({side}); its 95% CI is clear of every other backend's"}
    return None

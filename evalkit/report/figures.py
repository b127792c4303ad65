"""Paper figures (matplotlib, Agg): quality vs memory with the Pareto front, quality vs latency, memory and latency bars.

Each figure is written as PDF (papers), SVG (the HTML page) and PNG (slides, README), from one style.
Colours are Okabe–Ito (safe for the common colour-vision deficiencies); colour marks the library,
marker shape tells backends of one library apart, so the plots also survive greyscale printing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.quantizers.base import REFERENCE_COLOUR
from evalkit.quantizers.registry import library_order
from evalkit.report.data import MEMORY_AXES, MetricInfo, ReportData, metric_value, pareto_front, safe_name
from evalkit.report.noise_floor import BAND_LABEL, IDENTICAL_NOTE, NoiseFloor, band_limits, metric_identity

# Okabe–Ito, for the bars of memory phases and for a library that has no record (an older run's); a registered
# library's colour and order come from its record in evalkit/quantizers/base.py.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]
UNKNOWN_LIBRARY_COLOUR = "#777777"
NOISE_FLOOR_COLOUR = "#8a8a8a"  # neutral grey: the band is context, not a backend
PARTIAL_MARK = " †"  # after a backend that quantized less than its name says (see the caption)
MEMORY_AXIS_SHORT = {
    "peak_reserved": "peak GPU memory (reserved)", "peak_allocated": "peak GPU memory (allocated)",
    "after_load_reserved": "GPU memory after load (reserved)", "after_load_allocated": "GPU memory after load (allocated)",
    "load_peak_reserved": "GPU memory peak while loading (reserved)", "footprint": "weight footprint",
    "cpu_peak_rss": "CPU peak RSS",
}

STYLE = {
    "font.family": "DejaVu Sans", "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "legend.fontsize": 7.5,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.color": "#e3e3e3",
    "grid.linewidth": 0.6, "axes.axisbelow": True, "figure.dpi": 100, "savefig.dpi": 200,
    # Each figure asks for layout="constrained" itself (bbox="tight" would draw every figure twice per format),
    # and pin_layout then removes the engine: with the rc default on, matplotlib would put it back after a save.
    "pdf.fonttype": 42, "ps.fonttype": 42,  # TrueType in PDFs: journals reject Type 3 fonts
    "svg.fonttype": "path", "svg.hashsalt": "evalkit",  # stable SVG ids: reruns give identical files
}


@dataclass
class Figure:
    key: str
    title: str
    caption: str
    files: dict[str, Path] = field(default_factory=dict)


def _styles(data: ReportData) -> dict[str, dict[str, Any]]:
    """backend -> {color, marker, partial}: colour from the library's record, marker by position within the
    library (libraries in their registered order), hollow for a partially quantized backend; stable for a run."""
    seen: dict[str, int] = {}
    out = {}
    for b in sorted(data.backends, key=lambda b: library_order(b.library)):
        i = seen.get(b.library, 0)
        seen[b.library] = i + 1
        ref = b.name == data.reference
        lib = b.library_record
        colour = REFERENCE_COLOUR if ref else lib.colour if lib else UNKNOWN_LIBRARY_COLOUR
        out[b.name] = {"color": colour, "marker": "*" if ref else MARKERS[i % len(MARKERS)], "size": 90 if ref else 36,
                       "partial": b.partial}
    return out


def _metric_label(m: MetricInfo, data: ReportData) -> str:
    unit = f" ({m.unit})" if m.unit else ""
    arrow = " ↑ better" if m.higher_is_better else " ↓ better" if m.higher_is_better is False else ""
    against = f" vs {data.reference}" if m.vs_reference else ""
    return f"{m.label}{against}{unit}{arrow}"


def _label_offsets() -> list[tuple[float, float, str, str, bool]]:
    """Candidate label positions around a point, nearest first: (dx, dy, ha, va, needs a leader line)."""
    import math

    out = []
    for r in (7, 15, 25, 37, 50):
        for deg in (30, -30, 150, -150, 90, -90, 0, 180):
            dx, dy = r * math.cos(math.radians(deg)), r * math.sin(math.radians(deg))
            ha = "left" if dx > 1 else "right" if dx < -1 else "center"
            va = "bottom" if dy > 1 else "top" if dy < -1 else "center"
            out.append((dx, dy, ha, va, r > 7))
    return out


def _label_box(size: tuple[float, float], anchor: tuple[float, float], dx: float, dy: float, ha: str, va: str,
               px_per_pt: float):
    """Display box of a text of `size` (w, h px) offset by (dx, dy) points from `anchor` with that alignment: the
    box matplotlib would give the annotation, computed without making one (placing labels tried up to 40 each)."""
    from matplotlib.transforms import Bbox

    w, h = size
    x = anchor[0] + dx * px_per_pt - {"left": 0.0, "center": w / 2, "right": w}[ha]
    y = anchor[1] + dy * px_per_pt - {"bottom": 0.0, "center": h / 2, "top": h}[va]
    return Bbox.from_bounds(x, y, w, h)


# Where a leader line leaves its label: the label's corner (or edge middle) next to the point, so the line never
# crosses the text. (Clipping the line at the text box instead cost a Bezier search on every draw of every format.)
_LEADER_START = {"left": 0.0, "center": 0.5, "right": 1.0, "bottom": 0.0, "top": 1.0}


def _place_labels(ax, fig, pts: list[tuple[float, float, str, str]]) -> None:
    """Label points without overlaps: try positions nearest first, keep the first that hits no placed label,
    no other marker and stays in the axes; far labels get a thin leader line so they stay attributable."""
    renderer = fig.canvas.get_renderer()
    px_per_pt = renderer.points_to_pixels(1.0)
    placed = []
    marks = [ax.transData.transform((x, y)) for x, y, _, _ in pts]
    axbox = ax.get_window_extent(renderer)
    offsets = _label_offsets()
    for i, (x, y, text, colour) in enumerate(pts):
        probe = ax.annotate(text, (x, y), xytext=(0, 0), textcoords="offset points", fontsize=6.5)
        extent = probe.get_window_extent(renderer)
        probe.remove()
        chosen = None
        for dx, dy, ha, va, leader in offsets:
            bb = _label_box((extent.width, extent.height), marks[i], dx, dy, ha, va, px_per_pt).expanded(1.04, 1.15)
            clash = any(bb.overlaps(p) for p in placed) or any(
                bb.contains(mx, my) for j, (mx, my) in enumerate(marks) if j != i)
            inside = axbox.x0 <= bb.x0 and bb.x1 <= axbox.x1 and axbox.y0 <= bb.y0 and bb.y1 <= axbox.y1
            if not clash and inside:
                chosen = (dx, dy, ha, va, leader)
                break
        dx, dy, ha, va, leader = chosen or (7, 4, "left", "bottom", False)
        arrow = dict(arrowstyle="-", color=colour, lw=0.5, shrinkA=0, shrinkB=3, patchA=None,
                     relpos=(_LEADER_START[ha], _LEADER_START[va]))
        t = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=6.5,
                        color=colour, zorder=5, alpha=1.0 if chosen else 0.75, arrowprops=arrow if leader else None)
        placed.append(t.get_window_extent(renderer).expanded(1.04, 1.15))


def _scatter(data: ReportData, m: MetricInfo, xfield: str, xlabel: str, title: str, xerr_fields: tuple[str, str] | None):
    import matplotlib.pyplot as plt

    styles = _styles(data)
    fig, ax = plt.subplots(figsize=(5.4, 3.8), layout="constrained")
    pts = []
    for b in data.backends:
        if not b.ok:
            continue
        x = b.memory_value(xfield) if not xfield.startswith("latency.") else b.latency.get(xfield.split(".", 1)[1])
        rec = b.metrics.get(m.key) or {}
        y = metric_value(rec)
        if x is None or y is None:
            continue
        pts.append((b.name, float(x), y, rec))
    ref = data.reference_view
    refx = None
    if ref and ref.ok:
        refx = ref.memory_value(xfield) if not xfield.startswith("latency.") else ref.latency.get(xfield.split(".", 1)[1])
    if refx is not None and not any(n == data.reference for n, *_ in pts):
        # A metric measured against bf16 has no value for bf16 itself: mark where bf16 sits instead.
        ax.axvline(refx, color=REFERENCE_COLOUR, lw=0.9, ls=(0, (4, 3)), zorder=1)
        ax.annotate(f"{data.reference} (reference)", (refx, 1), xycoords=("data", "axes fraction"), xytext=(3, -3),
                    textcoords="offset points", ha="left", va="top", fontsize=6.5, rotation=90)
    competing = {b.name for b in data.backends if data.competes(b)}
    front = (pareto_front([(n, x, y) for n, x, y, _ in pts if n in competing], bool(m.higher_is_better))
             if m.higher_is_better is not None else [])
    if len(front) >= 1:
        fx = [x for n, x, y, _ in sorted(pts, key=lambda p: p[1]) if n in front]
        fy = [y for n, x, y, _ in sorted(pts, key=lambda p: p[1]) if n in front]
        ax.step(fx, fy, where="post", color="#555555", lw=1.1, zorder=2, label="Pareto front")
        ax.scatter(fx, fy, s=150, facecolors="none", edgecolors="#555555", linewidths=1.0, zorder=2)
    for n, x, y, rec in pts:
        st = styles[n]
        lo, hi = rec.get("ci_low"), rec.get("ci_high")
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
            ax.errorbar(x, y, yerr=[[max(y - lo, 0)], [max(hi - y, 0)]], fmt="none", ecolor=st["color"], elinewidth=0.9, capsize=2, zorder=3)
        if xerr_fields:
            b = next(bb for bb in data.backends if bb.name == n)
            lo_x, hi_x = b.latency.get(xerr_fields[0]), b.latency.get(xerr_fields[1])
            if isinstance(lo_x, (int, float)) and isinstance(hi_x, (int, float)):
                ax.errorbar(x, y, xerr=[[max(x - lo_x, 0)], [max(hi_x - x, 0)]], fmt="none", ecolor=st["color"], elinewidth=0.9, capsize=2, zorder=3)
        if st["partial"]:  # hollow: this point is not what the backend's name promises
            ax.scatter([x], [y], s=st["size"], marker=st["marker"], facecolors="white", edgecolors=st["color"], linewidths=1.2, zorder=4)
        else:
            ax.scatter([x], [y], s=st["size"], marker=st["marker"], color=st["color"], edgecolors="white", linewidths=0.5, zorder=4)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(_metric_label(m, data))
    ax.set_title(title, loc="left")
    ax.margins(x=0.12, y=0.12)
    floor_in_legend = draw_noise_floor(ax, m, data.floors.get(m.key))
    fig.draw_without_rendering()  # lays the axes out, so the labels below are placed where they will be drawn
    _place_labels(ax, fig, [(x, y, n + (PARTIAL_MARK if styles[n]["partial"] else "") + (" ★" if n in front else ""),
                             styles[n]["color"]) for n, x, y, _ in pts])
    if front or floor_in_legend:  # after the labels: "best" avoids them too, and is searched once (pin_layout)
        ax.legend(loc="best", frameon=False)
    return fig, [n for n, *_ in pts], front


def draw_noise_floor(ax, m: MetricInfo, floor: NoiseFloor | None) -> bool:
    """Shade the reference's noise floor on a quality axis (y = metric `m`); True when it added a legend entry.
    No calibration or a floor that was not measured: nothing (the caption says why). Byte-identical: no band, a
    legend line saying so."""
    if floor is None or not floor.ok or m.higher_is_better is None:
        return False
    if floor.identical:
        ax.plot([], [], ls="none", label=IDENTICAL_NOTE)
        return True
    _, identity = metric_identity(m.key)
    ax.autoscale_view()
    lo, hi = ax.get_ylim()
    # The floor (and, lower-is-better, its identity end) must be on the axis, or the band would be invisible.
    ends = [float(floor.value)] + ([identity] if not m.higher_is_better and identity is not None else [])  # type: ignore[arg-type]
    pad = 0.05 * ((max(hi, *ends) - min(lo, *ends)) or 1.0)
    lo = min(ends) - pad if min(ends) < lo else lo
    hi = max(ends) + pad if max(ends) > hi else hi
    ax.set_ylim(lo, hi)
    span = band_limits(floor, m.higher_is_better, identity, (lo, hi))
    if span is None:
        return False
    ax.axhspan(span[0], span[1], color=NOISE_FLOOR_COLOUR, alpha=0.22, lw=0, zorder=0, label=BAND_LABEL)
    ax.axhline(float(floor.value), color=NOISE_FLOOR_COLOUR, lw=0.8, ls=":", zorder=1)  # type: ignore[arg-type]
    ax.set_ylim(lo, hi)
    return True


def quality_vs_memory(data: ReportData, m: MetricInfo):
    field, label = MEMORY_AXES[data.memory_axis]
    return _scatter(data, m, field, label, f"{m.label} vs {MEMORY_AXIS_SHORT[data.memory_axis]}", None)


def quality_vs_latency(data: ReportData, m: MetricInfo):
    return _scatter(data, m, "latency.median_s", "Latency per image (s): median, whiskers p10–p90",
                    f"{m.label} vs latency", ("p10_s", "p90_s"))


def memory_bars(data: ReportData):
    """Grouped horizontal bars: after load, load peak, peak; allocated and reserved side by side (CUDA), or CPU RSS."""
    import matplotlib.pyplot as plt
    import numpy as np

    ok = [b for b in data.backends if b.ok]
    names = [b.name for b in ok][::-1]  # reference on top
    h = max(2.2, 0.32 * len(names) + 1.0)
    if data.has_cuda_memory:
        fig, axes = plt.subplots(1, 2, figsize=(7.2, h), sharey=True, layout="constrained")
        series = [("after_load", "After load", OKABE_ITO[5]), ("load_peak", "Load peak", OKABE_ITO[1]), ("peak", "Peak (generation)", OKABE_ITO[3])]
        for ax, kind, fn in zip(axes, ["allocated", "reserved"], ["memory_allocated", "memory_reserved"]):
            y = np.arange(len(names))
            for i, (phase, label, col) in enumerate(series):
                vals = [next(b for b in ok if b.name == n).memory_value(f"{phase}_{kind}_gib") for n in names]
                ax.barh(y + (i - 1) * 0.27, [v or 0 for v in vals], height=0.26, color=col, label=label)
            ax.set_title(f"{kind.capitalize()} (torch.cuda.*{fn})", loc="left", fontsize=8.5)
            ax.set_xlabel(f"GPU memory, {kind} (GiB)")
            ax.grid(axis="y", visible=False)
        axes[0].set_yticks(np.arange(len(names)), names)
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=3, frameon=False)
        total = (data.manifest.get("device") or {}).get("total_memory_gib")
        if isinstance(total, (int, float)):
            for ax in axes:
                ax.axvline(total, color="#555555", lw=0.8, ls=":")
                ax.annotate(f"device total {total:.0f} GiB", (total, 1), xycoords=("data", "axes fraction"), xytext=(-3, -2),
                            textcoords="offset points", ha="right", va="top", fontsize=6.5, rotation=90, color="#555555")
        fig.suptitle("GPU memory per backend (GiB = 2³⁰ B)", x=0.01, ha="left", fontsize=10)
    else:
        # The weight footprint, not process RSS: RSS differences between backends on CPU are allocator noise
        # (0.02 GiB), while the footprint is what the quantization changed. RSS stays in the table.
        fig, ax = plt.subplots(figsize=(6.0, h), layout="constrained")
        y = np.arange(len(names))
        styles = _styles(data)
        fp = [next(b for b in ok if b.name == n).footprint_gib for n in names]
        ax.barh(y, [v or 0 for v in fp], height=0.6, color=[styles[n]["color"] for n in names],
                hatch=[("//" if styles[n]["partial"] else "") for n in names], edgecolor="white")
        ax.set_yticks(y, [n + (PARTIAL_MARK if styles[n]["partial"] else "") for n in names])
        ax.set_xlabel("Weight footprint, GiB (2³⁰ B): bytes of all parameters and buffers — CPU run, no GPU memory")
        ax.grid(axis="y", visible=False)
        ax.set_title("Memory per backend (CPU run)", loc="left")
    return fig


def latency_bars(data: ReportData):
    import matplotlib.pyplot as plt
    import numpy as np

    styles = _styles(data)
    ok = [b for b in data.backends if b.ok and isinstance(b.latency.get("median_s"), (int, float))]
    names = [b.name for b in ok][::-1]
    fig, ax = plt.subplots(figsize=(6.0, max(2.2, 0.3 * len(names) + 1.0)), layout="constrained")
    y = np.arange(len(names))
    med = [next(b for b in ok if b.name == n).latency["median_s"] for n in names]
    lo = [next(b for b in ok if b.name == n).latency.get("p10_s", m) for n, m in zip(names, med)]
    hi = [next(b for b in ok if b.name == n).latency.get("p90_s", m) for n, m in zip(names, med)]
    ax.barh(y, med, color=[styles[n]["color"] for n in names], height=0.6)
    ax.errorbar(med, y, xerr=[[max(m - (l if l is not None else m), 0) for m, l in zip(med, lo)],
                              [max((h if h is not None else m) - m, 0) for m, h in zip(med, hi)]],
                fmt="none", ecolor="#333333", capsize=2, elinewidth=0.8)
    ref = data.reference_view
    if ref and ref in ok:
        ax.axvline(ref.latency["median_s"], color="#333333", lw=0.8, ls=(0, (4, 3)))
    noisy = {b.name for b in ok if b.latency_noisy}
    ax.set_yticks(y, [n + (" (noisy)" if n in noisy else "") + (PARTIAL_MARK if styles[n]["partial"] else "") for n in names])
    ax.set_xlabel("Latency per image (s): median, whiskers p10–p90\ncompile time excluded")
    ax.grid(axis="y", visible=False)
    ax.set_title("Latency per backend", loc="left")
    return fig


_DATA: ReportData | None = None  # the run being drawn, inherited by forked figure workers


def _jobs(data: ReportData) -> list[tuple[str, int]]:
    jobs: list[tuple[str, int]] = []
    if any(b.ok for b in data.backends):
        jobs += [("memory", -1), ("latency", -1)]
    if not data.random_weights:
        for i in range(len(data.metrics)):
            jobs += [("quality_vs_memory", i), ("quality_vs_latency", i)]
    return jobs


def _render(job: tuple[str, int], formats: tuple[str, ...]) -> Figure | None:
    """Draw one figure and save it in every format (atomically); None when the run has nothing to plot."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    data = _DATA
    assert data is not None
    out = data.root / "figures"
    kind, i = job
    with plt.rc_context(STYLE):
        if kind == "memory":
            fig, key, title = memory_bars(data), "memory", "Memory per backend"
            caption = ("After load, peak while loading, and peak while generating." if data.has_cuda_memory else
                       "CPU run: weight footprint (parameter and buffer bytes); no GPU memory was measured, and process "
                       "RSS differences on CPU are too small to compare (they are in the table).")
        elif kind == "latency":
            fig, key, title = latency_bars(data), "latency", "Latency per backend"
            caption = ("Median seconds per image; whiskers p10–p90. (noisy): p90 − p10 exceeds the median, so the "
                       "ranking by this number is not reliable.")
        else:
            m = data.metrics[i]
            if kind == "quality_vs_memory":
                fig, shown, front = quality_vs_memory(data, m)
                caption = f"x: {MEMORY_AXES[data.memory_axis][1].splitlines()[0]}. Pareto front: {', '.join(front) or '—'}."
                title = f"{m.label} vs memory"
            else:
                fig, shown, front = quality_vs_latency(data, m)
                caption = f"x: median latency per image. Pareto front: {', '.join(front) or '—'}."
                title = f"{m.label} vs latency"
            key = f"{kind}_{safe_name(m.key)}"
            floor = data.floors.get(m.key)
            if floor is not None:
                caption += " " + floor.caption(m.label)
            if any(b.partial for b in data.backends if b.ok):
                caption += (f" † quantized less than its name says on this device (hollow marker)"
                            f"{'' if data.include_partial else '; not on the Pareto front (--include-partial)'}.")
            if not shown:
                plt.close(fig)
                return None
        f = Figure(key, title, caption)
        pin_layout(fig)
        for ext in formats:
            path = out / f"{key}.{ext}"
            tmp = out / f".{key}.tmp.{ext}"
            fig.savefig(tmp, format=ext, metadata=_metadata(ext))
            tmp.replace(path)
            f.files[ext] = path
        plt.close(fig)
    return f


def pin_layout(fig) -> None:
    """Lay `fig` out once and keep that layout for every format it is saved in.

    With a layout engine, each savefig runs constrained layout and a hidden draw before the real one, and each
    draw searches again for the best legend position: three quarters of the figure time went there. Pinning the
    axes positions and each legend's place (as fractions of its anchor box, so independent of the dpi) gives
    the same picture with one draw per format."""
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        box, anchor = legend.get_window_extent(renderer), legend.get_bbox_to_anchor()
        legend.set_loc(((box.x0 - anchor.x0) / anchor.width, (box.y0 - anchor.y0) / anchor.height))
    # None, not "none": "none" leaves a placeholder engine, and savefig would still do its hidden draw.
    fig.set_layout_engine(None)


def write_figures(data: ReportData, formats: tuple[str, ...] = ("svg", "pdf", "png"), workers: int | None = None) -> list[Figure]:
    """Draw every figure the run supports into figures/ and describe each for the page (start_figures, then wait)."""
    return start_figures(data, formats, workers).wait()


class PendingFigures:
    """Figures being drawn by worker processes: `wait()` returns them in page order, `cancel()` stops the workers."""

    def __init__(self, jobs: list[tuple[str, int]], formats: tuple[str, ...], workers: int) -> None:
        self.jobs, self.formats = jobs, formats
        self._pool = self._pending = None
        if workers > 1:
            import functools
            import multiprocessing as mp

            # Longest first (scatter plots, then bars), so no worker is left with a long figure at the end.
            self._order = sorted(range(len(jobs)), key=lambda i: jobs[i][0] in ("memory", "latency"))
            self._pool = mp.get_context("fork").Pool(workers)
            self._pending = self._pool.map_async(functools.partial(_render, formats=formats),
                                                 [jobs[i] for i in self._order], chunksize=1)
            self._pool.close()

    def wait(self) -> list[Figure]:
        if self._pool is None:  # one worker, or no fork: drawn here, now
            return [f for f in (_render(j, self.formats) for j in self.jobs) if f is not None]
        try:
            drawn = self._pending.get()  # type: ignore[union-attr]
        finally:
            self.cancel()
        results: list[Figure | None] = [None] * len(self.jobs)
        for i, f in zip(self._order, drawn):
            results[i] = f
        return [f for f in results if f is not None]

    def cancel(self) -> None:
        if self._pool is not None:
            self._pool.terminate()  # after an error, no worker may go on writing into figures/
            self._pool.join()


def start_figures(data: ReportData, formats: tuple[str, ...] = ("svg", "pdf", "png"),
                  workers: int | None = None) -> PendingFigures:
    """Start drawing every figure the run supports into figures/. Figures are independent, so they are drawn in
    forked worker processes (two cores: about half the time) while the caller goes on with the thumbnails and
    tables; call `.wait()` for the figures, or `.cancel()` on an error."""
    global _DATA
    import os

    out = data.root / "figures"
    out.mkdir(parents=True, exist_ok=True)
    _DATA = data
    jobs = _jobs(data)
    workers = workers if workers is not None else min(len(jobs), os.cpu_count() or 1, 4)
    return PendingFigures(jobs, formats, workers if hasattr(os, "fork") else 1)


def _metadata(ext: str) -> dict[str, Any]:
    # No creation dates: rerunning the report on the same run gives byte-identical figures.
    if ext == "pdf":
        return {"Creator": "evalkit", "Producer": "evalkit", "CreationDate": None}
    if ext == "svg":
        return {"Creator": "evalkit", "Date": None}
    if ext == "png":
        return {"Software": "evalkit"}
    return {}

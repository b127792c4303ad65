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
from evalkit.report.labels import place_labels
from evalkit.floors import NoiseFloor
from evalkit.report.noise_floor import BAND_LABEL, IDENTICAL_NOTE, band_limits, metric_identity
from evalkit.report.noise_floor import caption as floor_caption
from evalkit.report.summary import floor_text

# Okabe–Ito, for the bars of memory phases and for a library that has no record (an older run's); a registered
# library's colour and order come from its record in evalkit/quantizers/base.py.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]
UNKNOWN_LIBRARY_COLOUR = "#777777"
NOISE_FLOOR_COLOUR = "#8a8a8a"  # neutral grey: the band is context, not a backend
PARTIAL_MARK = " †"  # after a backend that quantized less than its name says (see the caption)
SYNTHETIC_STAMP = "synthetic demo data — not a measurement"
STAMP_COLOUR = "#a3261b"
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


def new_figure(data: ReportData, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """plt.subplots with constrained layout, stamped when the run is synthetic: a figure of made-up numbers must
    say so wherever it is copied to. The stamp is the figure's bottom line (constrained layout makes room for it;
    beside the title it collided with a long one)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*args, layout="constrained", **kwargs)
    if data.synthetic:
        fig.supxlabel(SYNTHETIC_STAMP, x=0.99, ha="right", color=STAMP_COLOUR, fontsize=8, fontweight="bold")
    return fig, axes


def _metric_label(m: MetricInfo, data: ReportData) -> str:
    unit = f" ({m.unit})" if m.unit else ""
    arrow = " ↑ better" if m.higher_is_better else " ↓ better" if m.higher_is_better is False else ""
    against = f" vs {data.reference}" if m.vs_reference else ""
    return f"{m.label}{against}{unit}{arrow}"


def _scatter(data: ReportData, m: MetricInfo, xfield: str, xlabel: str, title: str, xerr_fields: tuple[str, str] | None):
    styles = _styles(data)
    fig, ax = new_figure(data, figsize=(5.4, 3.8))
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
    # Plain tick numbers: an SSIM axis otherwise reads "1e−5+9.997e−1" above ticks 3…7, which no reader should decode.
    ax.ticklabel_format(axis="both", style="plain", useOffset=False)
    ax.margins(x=0.12, y=0.12)
    floor_in_legend = draw_noise_floor(ax, m, data.floors.get(m.key))
    if front:  # last: it runs to the axes' edges, which are final only now
        by_x = sorted((x, y) for n, x, y, _ in pts if n in front)
        draw_pareto_front(ax, [x for x, _ in by_x], [y for _, y in by_x])
    fig.draw_without_rendering()  # lays the axes out, so the labels below are placed where they will be drawn
    place_labels(ax, fig, [(x, y, n + (PARTIAL_MARK if styles[n]["partial"] else "") + (" ★" if n in front else ""),
                            styles[n]["color"]) for n, x, y, _ in pts])
    if front or floor_in_legend:  # after the labels: "best" avoids them too, and is searched once (pin_layout)
        ax.legend(loc="best", frameon=False)
    return fig, [n for n, *_ in pts], front


def draw_pareto_front(ax, xs: list[float], ys: list[float]) -> None:
    """The Pareto front (points sorted by x) as a staircase through its points that runs on, at the last point's
    level, to the right edge: everything right of it and worse is dominated. A front of one point (the usual case
    with few backends) is then still a visible line, as the legend promises. (No edge-to-edge line on the left:
    it would run along the first point's own whisker and hide it.)"""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    sx = [x for pair in zip(xs, xs[1:] + [x1]) for x in pair]
    sy = [y for y in ys for _ in (0, 1)]
    ax.plot(sx, sy, color="#555555", lw=1.1, zorder=2, label="Pareto front", solid_joinstyle="miter")
    ax.scatter(xs, ys, s=150, facecolors="none", edgecolors="#555555", linewidths=1.0, zorder=2)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)


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
    import numpy as np

    ok = [b for b in data.backends if b.ok]
    names = [b.name for b in ok][::-1]  # reference on top
    h = max(2.2, 0.32 * len(names) + 1.0)
    if data.has_cuda_memory:
        fig, axes = new_figure(data, 1, 2, figsize=(7.2, h), sharey=True)
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
        fig, ax = new_figure(data, figsize=(6.0, h))
        y = np.arange(len(names))
        styles = _styles(data)
        fp = [next(b for b in ok if b.name == n).footprint_gib for n in names]
        ax.barh(y, [v or 0 for v in fp], height=0.6, color=[styles[n]["color"] for n in names],
                hatch=[("//" if styles[n]["partial"] else "") for n in names], edgecolor="white")
        ax.set_yticks(y, [n + (PARTIAL_MARK if styles[n]["partial"] else "") for n in names])
        # Two short lines: one line of this did not fit the figure and was cut ("…CPU run, no GPU m").
        ax.set_xlabel("Weight footprint (GiB = 2³⁰ B): bytes of all parameters and buffers\nCPU run: no GPU memory measured")
        ax.grid(axis="y", visible=False)
        ax.set_title("Memory per backend (CPU run)", loc="left")
    return fig


def latency_bars(data: ReportData):
    import numpy as np

    styles = _styles(data)
    ok = [b for b in data.backends if b.ok and isinstance(b.latency.get("median_s"), (int, float))]
    names = [b.name for b in ok][::-1]
    fig, ax = new_figure(data, figsize=(6.0, max(2.2, 0.3 * len(names) + 1.0)))
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
                caption += " " + floor_caption(floor, m.label, floor_text(data, m))
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

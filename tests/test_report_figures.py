"""The figures as a paper reviewer reads them (issue #24): no text cut at the figure's edge, point labels that cover
no other label, marker, whisker, reference line or Pareto line, a Pareto line the legend can point at, plain tick
numbers, and the synthetic stamp on every figure of a synthetic run (and on no other).

The geometry is checked on the drawn figure, from matplotlib's own artists, not from the placement code."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from report_fixtures import FIFTEEN_BACKENDS, synthetic_run, tiny_like_run

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg", force=True)
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import LineCollection, PathCollection  # noqa: E402
from matplotlib.text import Annotation, Text  # noqa: E402

from evalkit.report import figures  # noqa: E402
from evalkit.report.data import ReportData, load_report_data  # noqa: E402


@pytest.fixture(scope="module")
def tiny_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_like_run(tmp_path_factory.mktemp("tinylike"))


@pytest.fixture(scope="module")
def crowded_cuda(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_run(tmp_path_factory.mktemp("crowded"), backends=[b[0] for b in FIFTEEN_BACKENDS], device="cuda")


def _every_figure(data: ReportData) -> list[tuple[str, Any]]:
    """Each figure the report draws for `data` (figures._jobs), drawn as _render lays it out."""
    out = []
    with plt.rc_context(figures.STYLE):
        for kind, i in figures._jobs(data):
            if kind == "memory":
                fig = figures.memory_bars(data)
            elif kind == "latency":
                fig = figures.latency_bars(data)
            else:
                make = figures.quality_vs_memory if kind == "quality_vs_memory" else figures.quality_vs_latency
                fig = make(data, data.metrics[i])[0]
            figures.pin_layout(fig)
            fig.canvas.draw()
            out.append((f"{kind}:{data.metrics[i].key if i >= 0 else ''}", fig))
    return out


def _texts(fig) -> list[Any]:
    texts = list(fig.texts)
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
        # Tick labels outside the view limits exist but are not drawn.
        texts += [t for t in ax.get_xticklabels() if x0 <= t.get_position()[0] <= x1]
        texts += [t for t in ax.get_yticklabels() if y0 <= t.get_position()[1] <= y1]
        if ax.get_legend():
            texts += list(ax.get_legend().get_texts())
    return [t for t in texts if t.get_visible() and t.get_text()]


@pytest.mark.parametrize("which", ["tiny_like", "crowded_cuda"])
def test_no_text_is_cut_at_the_figure_edge(which: str, request: pytest.FixtureRequest) -> None:
    """memory.png's x label ran past the figure ("…CPU run, no GPU m"): every text must lie inside the canvas."""
    data = load_report_data(request.getfixturevalue(which))
    for name, fig in _every_figure(data):
        renderer = fig.canvas.get_renderer()
        width, height = fig.canvas.get_width_height()
        for t in _texts(fig):
            box = t.get_window_extent(renderer)
            assert box.x0 >= -0.5 and box.y0 >= -0.5 and box.x1 <= width + 0.5 and box.y1 <= height + 0.5, \
                (name, t.get_text(), box.bounds, (width, height))
        plt.close(fig)


def _seg_hits_box(p0: tuple[float, float], p1: tuple[float, float], box: Any, inset: float = 1.0) -> bool:
    """Does the segment p0-p1 enter `box` (shrunk by `inset` px: touching is not covering)? Liang-Barsky clip."""
    x0, y0, x1, y1 = box.x0 + inset, box.y0 + inset, box.x1 - inset, box.y1 - inset
    if x0 >= x1 or y0 >= y1:
        return False
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t0, t1 = 0.0, 1.0
    for p, q in ((-dx, p0[0] - x0), (dx, x1 - p0[0]), (-dy, p0[1] - y0), (dy, y1 - p0[1])):
        if p == 0:
            if q < 0:
                return False
        else:
            t = q / p
            if p < 0:
                t0 = max(t0, t)
            else:
                t1 = min(t1, t)
            if t0 > t1:
                return False
    return True


def _label_collisions(ax, renderer, backends: set[str]) -> list[str]:
    """What each point label covers: other labels, other markers, lines (whiskers, reference, Pareto, floor),
    other texts. One string per collision."""
    px_per_pt = renderer.points_to_pixels(1.0)
    labels = [a for a in ax.texts if isinstance(a, Annotation) and a.get_text().split(" ")[0] in backends
              and a.xycoords == "data"]
    others = [t for t in ax.texts if t not in labels and t.get_visible() and t.get_text()]
    segments: list[tuple[str, Any, Any]] = []
    for line in ax.get_lines():
        if line.get_linestyle() in ("None", "none", "", " ") or not len(line.get_xydata()):
            continue
        xy = line.get_transform().transform(line.get_xydata())
        segments += [(f"line {line.get_label()!r}", a, b) for a, b in zip(xy[:-1], xy[1:])]
    markers: list[tuple[Any, float]] = []
    for coll in ax.collections:
        if isinstance(coll, LineCollection):
            for seg in coll.get_segments():
                xy = coll.get_transform().transform(seg)
                segments += [("whisker", a, b) for a, b in zip(xy[:-1], xy[1:])]
        elif isinstance(coll, PathCollection):
            sizes = coll.get_sizes()
            for k, c in enumerate(coll.get_offset_transform().transform(coll.get_offsets())):
                markers.append((c, math.sqrt(sizes[k % len(sizes)]) * px_per_pt / 2))
    out = []
    # The text's own box (an Annotation's window extent also spans its leader line's bounding box).
    boxes = [(a, Text.get_window_extent(a, renderer)) for a in labels]
    for i, (a, box) in enumerate(boxes):
        own = ax.transData.transform(a.xy)
        for b, other in boxes[i + 1:]:
            if box.overlaps(other):
                out.append(f"{a.get_text()!r} covers label {b.get_text()!r}")
        for t in others:
            if box.overlaps(Text.get_window_extent(t, renderer)):
                out.append(f"{a.get_text()!r} covers text {t.get_text()!r}")
        for what, p, q in segments:
            if _seg_hits_box(p, q, box):
                out.append(f"{a.get_text()!r} covers a {what}")
        for c, r in markers:
            if abs(c[0] - own[0]) < 0.5 and abs(c[1] - own[1]) < 0.5:
                continue  # its own marker and ring: what the label points at
            nx, ny = min(max(c[0], box.x0), box.x1), min(max(c[1], box.y0), box.y1)
            if math.hypot(nx - c[0], ny - c[1]) < r - 1:
                out.append(f"{a.get_text()!r} covers a marker at {tuple(round(v) for v in c)}")
    return out


def test_labels_near_zero_cover_nothing_on_the_tiny_runs_figures(tiny_like: Path) -> None:
    """Issue #24: in LPIPS vs latency the labels of the points near zero overlapped, and the bf16 line ran
    through a label. On the tiny run's numbers no label may cover anything."""
    data = load_report_data(tiny_like)
    names = {b.name for b in data.backends}
    for name, fig in _every_figure(data):
        if name.startswith("quality_vs"):
            assert _label_collisions(fig.axes[0], fig.canvas.get_renderer(), names) == [], name
        plt.close(fig)


def test_crowded_labels_never_cover_each_other(crowded_cuda: Path) -> None:
    """Fifteen backends: every label is still readable (no label on a label or on another text), and at most a
    couple of lines are crossed where the plot leaves no free place."""
    data = load_report_data(crowded_cuda)
    names = {b.name for b in data.backends}
    for name, fig in _every_figure(data):
        if name.startswith("quality_vs"):
            hits = _label_collisions(fig.axes[0], fig.canvas.get_renderer(), names)
            assert [h for h in hits if "covers label" in h or "covers text" in h] == [], name
            assert len(hits) <= 2, (name, hits)
        plt.close(fig)


def _pareto_line(ax):
    return next((ln for ln in ax.get_lines() if ln.get_label() == "Pareto front"), None)


@pytest.mark.parametrize("which", ["tiny_like", "crowded_cuda"])
def test_pareto_front_the_legend_lists_is_a_visible_line(which: str, request: pytest.FixtureRequest) -> None:
    """A front of one point drew a step of zero length: the legend listed a line no one could see."""
    data = load_report_data(request.getfixturevalue(which))
    checked = 0
    for name, fig in _every_figure(data):
        ax = fig.axes[0]
        legend = [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else []
        if "Pareto front" in legend:
            line = _pareto_line(ax)
            xy = line.get_transform().transform(line.get_xydata())
            length = sum(math.hypot(*(b - a)) for a, b in zip(xy[:-1], xy[1:]))
            assert length >= 30, (name, length)
            checked += 1
        plt.close(fig)
    assert checked >= 2


def test_one_point_front_runs_to_the_right_edge(tiny_like: Path) -> None:
    data = load_report_data(tiny_like)
    m = next(x for x in data.metrics if x.key == "lpips_alex")
    with plt.rc_context(figures.STYLE):
        fig, _, front = figures.quality_vs_latency(data, m)
    assert front == ["gguf-q8_0"]  # fastest and, among the non-partial backends, closest
    xs = _pareto_line(fig.axes[0]).get_xdata()
    assert xs[-1] == pytest.approx(fig.axes[0].get_xlim()[1]) and xs[0] == pytest.approx(0.112)
    plt.close(fig)


def test_tick_labels_are_plain_numbers(tiny_like: Path) -> None:
    """SSIM 0.99973…0.99977 drew ticks 3…7 under an offset "1e−5+9.997e−1"."""
    data = load_report_data(tiny_like)
    for name, fig in _every_figure(data):
        for ax in fig.axes:
            assert ax.yaxis.get_offset_text().get_text() == "" and ax.xaxis.get_offset_text().get_text() == "", name
        if name == "quality_vs_memory:ssim":
            ticks = [t.get_text() for t in fig.axes[0].get_yticklabels() if t.get_text()]
            assert ticks and all(t.startswith("0.9997") for t in ticks), ticks
        plt.close(fig)


def test_every_figure_of_a_synthetic_run_is_stamped_and_no_other(tiny_like: Path, crowded_cuda: Path) -> None:
    for root, synthetic in ((crowded_cuda, True), (tiny_like, False)):
        data = load_report_data(root)
        assert data.synthetic is synthetic
        drawn = _every_figure(data)
        assert len(drawn) == 2 + 2 * len(data.metrics)
        for name, fig in drawn:
            stamped = any(t.get_text() == figures.SYNTHETIC_STAMP for t in _texts(fig))
            assert stamped is synthetic, name
            plt.close(fig)

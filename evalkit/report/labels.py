"""Point labels on the scatter plots, placed where they cover nothing else that is drawn.

A label may not overlap another label, another backend's marker, any whisker (CI or p10–p90), the reference's
dashed line or its caption, the Pareto staircase or the noise-floor line, and must stay inside the axes. The
obstacles are read off the axes' own artists after the plot is drawn, so whatever a figure draws, its labels avoid.
Candidate positions are tried nearest first (arithmetic on one measured text box, no trial annotations); far
ones get a thin leader line. When none is free, the position that covers least is taken, never a default on top.
"""

from __future__ import annotations

import math
from typing import Any

LABEL_FONTSIZE = 6.5
RADII_PT = (7, 15, 25, 37, 50, 65, 80)
ANGLES_DEG = (30, -30, 150, -150, 90, -90, 0, 180)

# Where a leader line leaves its label: the label's corner (or edge middle) next to the point, so the line never
# crosses the text. (Clipping the line at the text box instead cost a Bezier search on every draw of every format.)
LEADER_START = {"left": 0.0, "center": 0.5, "right": 1.0, "bottom": 0.0, "top": 1.0}


def label_offsets() -> list[tuple[float, float, str, str, bool]]:
    """Candidate label positions around a point, nearest first: (dx, dy, ha, va, needs a leader line)."""
    out = []
    for r in RADII_PT:
        for deg in ANGLES_DEG:
            dx, dy = r * math.cos(math.radians(deg)), r * math.sin(math.radians(deg))
            ha = "left" if dx > 1 else "right" if dx < -1 else "center"
            va = "bottom" if dy > 1 else "top" if dy < -1 else "center"
            out.append((dx, dy, ha, va, r > 7))
    return out


def label_box(size: tuple[float, float], anchor: tuple[float, float], dx: float, dy: float, ha: str, va: str,
              px_per_pt: float) -> Any:
    """Display box of a text of `size` (w, h px) offset by (dx, dy) points from `anchor` with that alignment: the
    box matplotlib would give the annotation, computed without making one."""
    from matplotlib.transforms import Bbox

    w, h = size
    x = anchor[0] + dx * px_per_pt - {"left": 0.0, "center": w / 2, "right": w}[ha]
    y = anchor[1] + dy * px_per_pt - {"bottom": 0.0, "center": h / 2, "top": h}[va]
    return Bbox.from_bounds(x, y, w, h)


def _segment_boxes(xy: Any, pad: float) -> list[Any]:
    """Thin boxes around each segment of a display-space polyline (the plots' lines are axis-aligned)."""
    from matplotlib.transforms import Bbox

    out = []
    for (x0, y0), (x1, y1) in zip(xy[:-1], xy[1:]):
        if all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            out.append(Bbox([[min(x0, x1) - pad, min(y0, y1) - pad], [max(x0, x1) + pad, max(y0, y1) + pad]]))
    return out


def _marker_box(x: float, y: float, half: float) -> Any:
    from matplotlib.transforms import Bbox

    return Bbox([[x - half, y - half], [x + half, y + half]])


def obstacles(ax: Any, renderer: Any, skip_texts: tuple[Any, ...] = ()) -> tuple[list[Any], list[tuple[Any, Any]]]:
    """(line and text boxes, [(marker centre, marker box)]) of what `ax` draws, in display pixels: lines (reference,
    noise floor, Pareto staircase, whisker caps), line collections (whiskers), scatter markers (each backend's
    point, the Pareto rings) and texts (the reference's caption, a stamp)."""
    from matplotlib.collections import LineCollection, PathCollection

    px_per_pt = renderer.points_to_pixels(1.0)
    boxes: list[Any] = []
    marks: list[tuple[Any, Any]] = []
    for line in ax.get_lines():
        if not line.get_visible():
            continue
        xy = line.get_transform().transform(line.get_xydata())
        if line.get_linestyle() not in ("None", "none", "", " "):
            boxes += _segment_boxes(xy, line.get_linewidth() * px_per_pt / 2 + 1)
        if line.get_marker() not in (None, "None", "none", "", " "):
            half = line.get_markersize() * px_per_pt / 2 + 1
            boxes += [_marker_box(x, y, half) for x, y in xy if math.isfinite(x) and math.isfinite(y)]
    for coll in ax.collections:
        if isinstance(coll, LineCollection):
            pad = max(list(coll.get_linewidths()) or [1.0]) * px_per_pt / 2 + 1
            for seg in coll.get_segments():
                boxes += _segment_boxes(coll.get_transform().transform(seg), pad)
        elif isinstance(coll, PathCollection):
            sizes = coll.get_sizes()
            offsets = coll.get_offset_transform().transform(coll.get_offsets())
            for k, (x, y) in enumerate(offsets):
                half = math.sqrt(sizes[k % len(sizes)] if len(sizes) else 36.0) * px_per_pt / 2 + 1
                marks.append(((x, y), _marker_box(x, y, half)))
    for text in ax.texts:
        if text not in skip_texts and text.get_visible() and text.get_text():
            boxes.append(text.get_window_extent(renderer))
    return boxes, marks


def _as_array(boxes: list[Any]) -> Any:
    import numpy as np

    return np.array([[b.x0, b.y0, b.x1, b.y1] for b in boxes], dtype=float).reshape(-1, 4)


def _overlaps(bb: Any, arr: Any) -> tuple[float, int]:
    """(total overlap area, number of boxes touched) of box `bb` with the boxes in `arr` (n × [x0, y0, x1, y1])."""
    import numpy as np

    if not len(arr):
        return 0.0, 0
    w = np.minimum(arr[:, 2], bb.x1) - np.maximum(arr[:, 0], bb.x0)
    h = np.minimum(arr[:, 3], bb.y1) - np.maximum(arr[:, 1], bb.y0)
    hit = (w > 0) & (h > 0)
    return float((w * h)[hit].sum()), int(hit.sum())


def place_labels(ax: Any, fig: Any, pts: list[tuple[float, float, str, str]]) -> list[Any]:
    """Label each (x, y, text, colour) point on a drawn axes where it covers nothing (see the module docstring);
    returns the annotations in the order of `pts`."""
    renderer = fig.canvas.get_renderer()
    px_per_pt = renderer.points_to_pixels(1.0)
    boxes, marks = obstacles(ax, renderer)
    lines = _as_array(boxes)
    placed: list[Any] = []
    anchors = [ax.transData.transform((x, y)) for x, y, _, _ in pts]
    axbox = ax.get_window_extent(renderer)
    out = []
    for i, (x, y, text, colour) in enumerate(pts):
        probe = ax.annotate(text, (x, y), xytext=(0, 0), textcoords="offset points", fontsize=LABEL_FONTSIZE)
        extent = probe.get_window_extent(renderer)
        probe.remove()
        # Another backend's marker is an obstacle; this point's own marker and ring are what the label points at.
        others = _as_array([box for centre, box in marks
                            if abs(centre[0] - anchors[i][0]) > 0.5 or abs(centre[1] - anchors[i][1]) > 0.5])
        labels = _as_array(placed)
        best, best_cost = None, math.inf
        for dx, dy, ha, va, leader in label_offsets():
            bb = label_box((extent.width, extent.height), anchors[i], dx, dy, ha, va, px_per_pt).expanded(1.04, 1.15)
            if not (axbox.x0 <= bb.x0 and bb.x1 <= axbox.x1 and axbox.y0 <= bb.y0 and bb.y1 <= axbox.y1):
                continue
            # Covering another label is worst, then a marker, then a line; a free position costs 0 and wins at once.
            on_lines, n_lines = _overlaps(bb, lines)
            cost = 1000 * _overlaps(bb, labels)[0] + 10 * _overlaps(bb, others)[0] + on_lines + n_lines
            if cost < best_cost:
                best, best_cost = (dx, dy, ha, va, leader), cost
            if cost == 0:
                break
        dx, dy, ha, va, leader = best or (7, 4, "left", "bottom", False)
        arrow = dict(arrowstyle="-", color=colour, lw=0.5, shrinkA=0, shrinkB=3, patchA=None,
                     relpos=(LEADER_START[ha], LEADER_START[va]))
        t = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                        fontsize=LABEL_FONTSIZE, color=colour, zorder=5, arrowprops=arrow if leader else None)
        # The text's own box, by the same arithmetic as the candidates (an Annotation's window extent also spans
        # its leader line's bounding box, which would fence off free space from the labels after it).
        placed.append(label_box((extent.width, extent.height), anchors[i], dx, dy, ha, va, px_per_pt).expanded(1.04, 1.15))
        out.append(t)
    return out

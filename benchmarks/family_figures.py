"""Figures of issue #25 item 6 from the families' GPU tables: one per family and one across families, each
backend's memory saved against its latency cost, both relative to the bf16 anchor of the same run.

    .venv/bin/python benchmarks/family_figures.py benchmarks/results/*-random-h*-2026-12-0*/table.csv \
        --out benchmarks/results/families-gpu-figures-2026-12-06

Reads the CSVs `benchmarks/gpu_table.py` writes (one family each; only `ok` rows with a bf16 anchor), writes
`<family>.svg/.png` and `families.svg/.png`, and `points.csv` with every plotted number. x: memory saved after
load, 1 - allocated / bf16's allocated (0 = none, 0.7 = 70% less). y: latency, s an image / bf16's (1 = as fast;
above 1 slower). The device and date of each family's rows are in its table; the legend says them.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

MARKERS = {"bnb-nf4": "o", "bnb-4bit": "o", "bnb-8bit": "s", "torchao-int8wo": "^", "torchao-fp8wo": "v",
           "gguf-q4_1": "D", "gguf-q8_0": "d", "fp8-layerwise": "P"}


def family_points(path: Path, bf16_gib: float | None = None) -> tuple[str, list[dict[str, float | str]]]:
    """(title, points) of one table.csv: each ok non-bf16 row's memory saved and latency ratio. A table without a
    bf16 row (bf16 does not fit the GPU) needs `bf16_gib`, the configs' bf16 bytes: memory saved is then against
    those, and latency stays in seconds (`latency_s`; no ratio exists)."""
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    anchors = {r["run"]: float(r["after_load_allocated_gib"]) for r in rows
               if r["backend"] == "bf16" and r["status"] == "ok" and r["after_load_allocated_gib"]}
    points = []
    for r in rows:
        if r["backend"] == "bf16" or r["status"] != "ok" or "+compile" in r["backend"]:
            continue  # the y axis is batch 1 without compile; +compile rows are in the tables
        alloc = float(r["after_load_allocated_gib"])
        if r["run"] in anchors and r["latency_x_bf16"]:
            points.append({"backend": r["row"], "memory_saved": 1 - alloc / anchors[r["run"]],
                           "latency_x_bf16": float(r["latency_x_bf16"]), "after_load_gib": alloc,
                           "bf16_gib": anchors[r["run"]]})
        elif not anchors and bf16_gib:
            points.append({"backend": r["row"], "memory_saved": 1 - alloc / bf16_gib, "latency_x_bf16": float("nan"),
                           "latency_s": float(r["latency_median_s"]), "after_load_gib": alloc, "bf16_gib": bf16_gib})
    first = rows[0] if rows else {}
    title = f"{path.parent.name.split('-random-')[0]} ({first.get('device', '?')}, {first.get('date_utc', '')[:10]})"
    return title, points


def absolute(points: list[dict]) -> bool:
    return any("latency_s" in p for p in points)


def draw(ax, points: list[dict], colour: str | None = None, label_points: bool = True) -> None:
    y = "latency_s" if absolute(points) else "latency_x_bf16"
    for p in points:
        ax.scatter(p["memory_saved"], p[y], marker=MARKERS.get(str(p["backend"]).split("+")[0], "x"),
                   color=colour, s=42, zorder=3)
        if label_points:
            ax.annotate(str(p["backend"]), (p["memory_saved"], p[y]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    if y == "latency_s":
        ax.set_xlabel("memory saved (1 - allocated / configs' bf16 bytes)")
        ax.set_ylabel("s an image (batch 1, no compile)")
    else:
        ax.axhline(1.0, color="0.6", lw=0.8, ls="--", zorder=1)
        ax.set_xlabel("memory saved after load (1 - allocated / bf16's)")
        ax.set_ylabel("latency / bf16's (s an image, batch 1, no compile)")
    ax.set_xlim(0, 1)
    ax.grid(True, lw=0.4, alpha=0.5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tables", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--bf16-gib", action="append", default=[], metavar="TABLE_DIR=GIB",
                    help="the configs' bf16 GiB for a table without a bf16 row, by its directory name's prefix "
                         "(flux2-dev=104.90): its figure plots seconds, and it stays off the cross-family figure")
    a = ap.parse_args()
    given = {k: float(v) for k, v in (x.split("=", 1) for x in a.bf16_gib)}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a.out.mkdir(parents=True, exist_ok=True)
    families = [family_points(p, given.get(p.parent.name.split("-random-")[0])) for p in a.tables]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    with (a.out / "points.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["family", "backend", "memory_saved", "latency_x_bf16", "latency_s", "after_load_gib",
                    "bf16_after_load_gib"])
        for title, pts in families:
            for p in pts:
                ratio = "" if "latency_s" in p else f"{p['latency_x_bf16']:.4f}"
                seconds = f"{p['latency_s']:.3f}" if "latency_s" in p else ""
                w.writerow([title, p["backend"], f"{p['memory_saved']:.4f}", ratio, seconds,
                            f"{p['after_load_gib']:.3f}", f"{p['bf16_gib']:.3f}"])
    for (title, pts), colour in zip(families, colours):
        fig, ax = plt.subplots(figsize=(5.2, 3.8))
        draw(ax, pts, colour)
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        for ext in ("svg", "png"):
            fig.savefig(a.out / f"{title.split(' ')[0]}.{ext}", dpi=150)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(8.6, 4.4))
    for (title, pts), colour in zip(families, colours):
        if absolute(pts):  # seconds, not a ratio: not on the same axes
            continue
        draw(ax, pts, colour, label_points=False)
        ax.scatter([], [], color=colour, label=title)
    for name, marker in MARKERS.items():
        if any(str(p["backend"]).split("+")[0] == name for _, pts in families for p in pts):
            ax.scatter([], [], color="0.3", marker=marker, label=name)
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: inside it covered points
    ax.set_title("What each backend buys in memory and costs in latency, per family", fontsize=9)
    fig.tight_layout()
    for ext in ("svg", "png"):
        fig.savefig(a.out / f"families.{ext}", dpi=150)
    plt.close(fig)
    print(f"{sum(len(p) for _, p in families)} points of {len(families)} families -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

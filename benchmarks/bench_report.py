"""Benchmark the report stage at the issue's size: 5 prompts × 15 backends at 1024², CUDA-style records.

Measures build time (cold and with the thumbnail cache warm), page weight (index.html plus everything
its <img> tags load, and the full-resolution PNGs it links), and Chromium's time to the load event and
to every image decoded. Writes benchmarks/results/report-<date>.md.

    python benchmarks/bench_report.py [--out /tmp/bench-report] [--size 1024] [--no-browser]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evalkit.report import build_report  # noqa: E402
from evalkit.report.synthetic import FIFTEEN_BACKENDS, make_synthetic_run  # noqa: E402

PROMPTS = [
    "Baroque style, a lavish palace interior with ornate gilded ceilings, intricate tapestries, and dramatic lighting.",
    "Futurist style, a dynamic spaceport with sleek silver starships docked at angular platforms.",
    "Noir style, a shadowy alleyway with flickering street lamps and a solitary trench-coated figure.",
    "Pop Art style, a bustling street market with bold colours and comic-book halftone dots.",
    "Surrealist style, a melting clock tower over a desert of mirrors under two moons.",
]


class _Imgs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.img: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img" and a.get("src"):
            self.img.append(a["src"])
        if tag == "a" and a.get("href") and not a["href"].startswith("#"):
            self.links.append(a["href"])


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/evalkit-bench-report")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()

    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    make_synthetic_run(root, prompts=PROMPTS, backends=[b[0] for b in FIFTEEN_BACKENDS], size=args.size, device="cuda")
    synth_s = time.perf_counter() - t
    pngs = list((root / "images").rglob("*.png"))

    t = time.perf_counter()
    index = build_report(root)
    cold_s = time.perf_counter() - t
    t = time.perf_counter()
    build_report(root)
    warm_s = time.perf_counter() - t
    t = time.perf_counter()
    build_report(root, figures=False)
    nofig_s = time.perf_counter() - t

    p = _Imgs()
    p.feed(index.read_text(encoding="utf-8"))
    html_bytes = index.stat().st_size
    img_files = {unquote(s) for s in p.img}
    img_bytes = sum((root / s).stat().st_size for s in img_files)
    visible = {s for s in img_files if ".diff." not in s}
    visible_bytes = sum((root / s).stat().st_size for s in visible)
    full_bytes = sum(f.stat().st_size for f in pngs)
    fig_bytes = sum(f.stat().st_size for f in (root / "figures").glob("*"))

    browser = {}
    if not args.no_browser:
        from evalkit.report.browser import LOAD_ALL_IMAGES_JS, Browser, find_chromium

        if find_chromium():
            with Browser() as b:
                b.goto("about:blank")
                load_s = b.goto(index.as_uri())
                t = time.perf_counter()
                res = b.eval(LOAD_ALL_IMAGES_JS, await_promise=True)
                all_s = load_s + time.perf_counter() - t
                browser = {"load_s": load_s, "all_images_s": all_s, "images": res["total"], "bad": len(res["bad"]),
                           "errors": len(b.console_errors()),
                           "outside": len([u for u in b.requests() if not u.startswith(("file:", "data:"))])}
        else:
            browser = {"skipped": "chromium not found"}

    # The synthetic scenes are smooth, so their thumbnails are unrealistically small. A real photograph
    # (scikit-image's astronaut) gives the per-thumbnail size to budget with for real renders.
    photo_thumb = None
    try:
        import io

        from PIL import Image
        from skimage import data as skdata

        im = Image.fromarray(skdata.astronaut()).resize((args.size, args.size), Image.Resampling.BICUBIC)
        im.thumbnail((256, 256), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, "WEBP", quality=85, method=4)
        photo_thumb = len(buf.getvalue())
    except Exception:
        pass

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    today = dt.date.today().isoformat()
    page_total = html_bytes + img_bytes
    lines = [
        f"# Report benchmark, {today}",
        "",
        f"Machine: {platform.node()}, {cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average at the end {', '.join(f'{x:.1f}' for x in load)} (the machine is shared: wall times are noisy).",
        f"Command: `python benchmarks/bench_report.py --size {args.size}`",
        "",
        f"Run: {len(PROMPTS)} prompts × {len(FIFTEEN_BACKENDS)} backends at {args.size}², synthetic CUDA-style records "
        f"({len(pngs)} PNGs, {_mb(full_bytes)}; synthesised in {synth_s:.1f} s).",
        "",
        "| what | value | target |",
        "|---|---|---|",
        f"| build, cold (thumbnails + heatmaps + figures + tables + page) | {cold_s:.1f} s | |",
        f"| build, rerun (thumbnail cache warm, figures redrawn) | {warm_s:.1f} s | |",
        f"| build, rerun with `--no-figures` | {nofig_s:.1f} s | |",
        f"| index.html | {_mb(html_bytes)} | |",
        f"| page weight: index.html + every `<img>` it references ({len(img_files)} files) | {_mb(page_total)} | ≤ 20 MB |",
        f"| of which shown at first (thumbnails and figures, heatmaps hidden until toggled) | {_mb(html_bytes + visible_bytes)} | |",
        f"| figures/ (SVG + PDF + PNG) | {_mb(fig_bytes)} | |",
        *([f"| estimate for real renders: {len(img_files)} thumbnails × {photo_thumb / 1e3:.0f} KB (a photograph's 256 px WebP) + figures + html | "
           f"{_mb(html_bytes + len(img_files) * photo_thumb + (img_bytes - sum((root / s).stat().st_size for s in img_files if s.startswith('thumbs/'))))} | ≤ 20 MB |"]
          if photo_thumb else []),
        f"| full-resolution PNGs (linked, loaded on click / in the blind test) | {_mb(full_bytes)} | not in the page |",
    ]
    if browser.get("skipped"):
        lines.append(f"| Chromium | skipped: {browser['skipped']} | |")
    elif browser:
        lines += [
            f"| Chromium: navigation to load event | {browser['load_s']:.2f} s | |",
            f"| Chromium: every image loaded and decoded ({browser['images']}, lazy ones forced) | {browser['all_images_s']:.2f} s | ≤ 10 s |",
            f"| Chromium: console errors / requests outside file:// / broken images | {browser['errors']} / {browser['outside']} / {browser['bad']} | 0 / 0 / 0 |",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.results) / f"report-{today}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    ok = page_total <= 20e6 and (not browser or browser.get("skipped") or browser["all_images_s"] <= 10)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Thumbnails and |backend − reference| heatmaps for the page. Full-resolution PNGs stay where generate wrote them.

Thumbnails are WebP: a 1024² PNG is 1–3 MB, a 256 px WebP is ~15 KB, and 75 of them must load in seconds.
Lossy thumbnails are for browsing only; the lightbox and the blind test show the original PNGs.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from evalkit.io import atomic_write_json, read_json
from evalkit.report.data import ReportData, safe_name

# |Δ| uses one scale for every heatmap of a run, so tiles compare across backends and prompts: 0 → black,
# ≥ scale/255 → brightest. The scale is the smallest of these that covers the 99th percentile of the run's
# worst heatmap: a fixed 64/255 left near-identical backends (|Δ| < 1) all black.
DIFF_SCALES = (2, 4, 8, 16, 32, 64, 128, 255)
THUMB_VERSION = 3  # bump when the thumbnail recipe changes, so cached files are redrawn


@dataclass
class ImageEntry:
    backend: str
    prompt_id: str
    full_href: str | None  # relative URL of the PNG, quoted
    thumb_href: str | None
    diff_href: str | None
    mean_abs_diff: float | None  # mean |Δ| in 0–255 units, all channels
    width: int | None
    height: int | None
    problem: str | None  # why there is no image, for the page


def href(rel: str) -> str:
    """A relative URL for a run-relative path: every component quoted (`+`, spaces, `#` stay literal file names)."""
    return quote(rel, safe="/")


def resolve_image(data: ReportData, backend: str, prompt: dict[str, Any], img: dict[str, Any] | None) -> tuple[Path | None, str | None]:
    """The PNG for (backend, prompt), refusing record paths that point outside the run directory."""
    root = data.root.resolve()
    candidates = []
    if img and isinstance(img.get("path"), str):
        candidates.append(img["path"])
    seed = (img or {}).get("seed", prompt.get("seed"))
    if seed is not None:
        candidates.append(data.rd.relative(data.rd.image_path(backend, str(prompt["id"]), seed)))
    for rel in candidates:
        p = (root / rel).resolve()
        if root not in p.parents:
            continue  # a record must never make the page link outside its own folder
        if p.is_file():
            return p, None
    return None, "image file missing"


# One image to draw: (backend, prompt id, its PNG, the reference's PNG for its heatmap or None, thumbnail path,
# heatmap path or None); the thumbnail and heatmap paths are relative to the run directory.
_Job = tuple[str, str, Path, Path | None, str, str | None]
# What drawing one job gave, by "<backend>\x00<prompt id>": its cache entry, and its |Δ| map at thumbnail size when
# it was computed now (None when the cache held it).
_Drawn = dict[str, tuple[dict[str, Any], Any]]


def build_images(data: ReportData, thumb_size: int = 256,
                 workers: int | None = None) -> tuple[dict[tuple[str, str], ImageEntry], int]:
    """Write thumbs/ (cached by source size and mtime) and return one entry per (backend, prompt_id), and the |Δ|
    scale."""
    root = data.root
    cache_path = root / "thumbs" / "cache.json"
    try:
        cache: dict[str, Any] = read_json(cache_path) if cache_path.exists() else {}
    except Exception:
        cache = {}
    entries, jobs = _image_jobs(data)
    workers = workers or min(8, os.cpu_count() or 1)
    done = _draw_thumbnails(root, jobs, cache, thumb_size, workers)
    p99 = [info.get("p99") for info, _ in done.values() if info.get("p99") is not None]
    scale = next((s for s in DIFF_SCALES if s >= max(p99, default=0)), DIFF_SCALES[-1])
    _paint_heatmaps(root, jobs, done, scale, thumb_size, workers)
    results = {k: info for k, (info, _) in done.items()}
    for name, pid, src, refp, thumb_rel, diff_rel in jobs:
        info = results[f"{name}\x00{pid}"]
        entries[(name, pid)] = ImageEntry(
            name, pid, href(data.rd.relative(src)), href(thumb_rel),
            href(diff_rel) if diff_rel and info.get("diff_scale") else None,
            info.get("mean_abs_diff"), info.get("width"), info.get("height"), info.get("problem"),
        )
    atomic_write_json(cache_path, results)
    return entries, scale


def _image_jobs(data: ReportData) -> tuple[dict[tuple[str, str], ImageEntry], list[_Job]]:
    """(an entry for each image with no file, saying why; a job for each one to draw), over every prompt of every
    generated backend. A heatmap is drawn against the reference's image, where it has one."""
    ref = data.reference_view
    jobs: list[_Job] = []
    entries: dict[tuple[str, str], ImageEntry] = {}
    ref_paths: dict[str, Path | None] = {}
    for p in data.prompts:
        pid = str(p["id"])
        ref_paths[pid] = (resolve_image(data, data.reference, p, (ref.images.get(pid) if ref else None))[0]
                          if ref and ref.ok else None)
    for b in data.backends:
        if not b.ok:
            continue
        imgs = b.images
        for p in data.prompts:
            pid = str(p["id"])
            src, problem = resolve_image(data, b.name, p, imgs.get(pid))
            if src is None:
                entries[(b.name, pid)] = ImageEntry(b.name, pid, None, None, None, None, None, None, problem)
                continue
            bdir = safe_name(b.name)
            thumb_rel = f"thumbs/{bdir}/{pid}.webp"
            diff_rel = f"thumbs/{bdir}/{pid}.diff.webp" if (b.name != data.reference and ref_paths.get(pid)) else None
            jobs.append((b.name, pid, src, ref_paths.get(pid) if diff_rel else None, thumb_rel, diff_rel))
    return entries, jobs


def _draw_thumbnails(root: Path, jobs: list[_Job], cache: dict[str, Any], thumb_size: int, workers: int) -> _Drawn:
    """Each job's thumbnail and |Δ| statistics, from the cache where its sources are unchanged. The heatmaps are
    painted later (_paint_heatmaps): their colour scale depends on every job's |Δ|."""

    def work(job: _Job) -> tuple[str, tuple[dict[str, Any], Any]]:
        name, pid, src, refp, thumb_rel, diff_rel = job
        key = f"{name}\x00{pid}"
        stamp = [THUMB_VERSION, thumb_size, _stat_key(src), _stat_key(refp) if refp else None]
        hit = cache.get(key)
        if (hit and hit.get("stamp") == stamp and (root / thumb_rel).exists()
                and (not diff_rel or (root / diff_rel).exists())):
            return key, (dict(hit), None)
        info, small = _make_thumb_and_diff(src, refp, root / thumb_rel, thumb_size)
        info["stamp"] = stamp
        return key, (info, small)

    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL and numpy release the GIL for the heavy parts
        return dict(pool.map(work, jobs))


def _paint_heatmaps(root: Path, jobs: list[_Job], done: _Drawn, scale: int, thumb_size: int, workers: int) -> None:
    """Each job's heatmap at the run's |Δ| scale; a cached one already drawn at that scale is kept. Records the
    scale drawn in the job's cache entry."""

    def paint(job: _Job) -> None:
        name, pid, src, refp, thumb_rel, diff_rel = job
        key = f"{name}\x00{pid}"
        info, small = done[key]
        if not diff_rel or info.get("problem") or info.get("p99") is None:
            return
        if info.get("diff_scale") == scale and small is None and (root / diff_rel).exists():
            return  # cached, drawn at this scale
        if small is None:  # cached thumbnail but the run's scale moved: recompute this heatmap
            small = _diff_map(src, refp, thumb_size)[0]
        _save_heatmap(small, scale, root / diff_rel)
        info["diff_scale"] = scale

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(paint, jobs))


def _stat_key(p: Path) -> list:
    # Size and mtime stand in for a content hash: rehashing 75 × 2 MB PNGs on every rerun is the slow part we avoid.
    st = p.stat()
    return [str(p.name), st.st_size, st.st_mtime_ns]


def _load_rgb(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def _make_thumb_and_diff(src: Path, refp: Path | None, thumb: Path, size: int) -> tuple[dict[str, Any], Any]:
    """Write the thumbnail; return stats and the |Δ| map at thumbnail size (painted later, once the run's scale is known)."""
    from PIL import Image

    try:
        im = _load_rgb(src)
    except Exception as e:  # a corrupt PNG is reported on the page, not fatal
        return {"problem": f"cannot read image: {type(e).__name__}: {e}"}, None
    info: dict[str, Any] = {"width": im.width, "height": im.height}
    thumb.parent.mkdir(parents=True, exist_ok=True)
    t = im.copy()
    t.thumbnail((size, size), Image.Resampling.LANCZOS)
    _save_webp(t, thumb, quality=85)
    if refp is None:
        return info, None
    small, mad, p99 = _diff_map(src, refp, size, im)
    if small is not None:
        info.update(mean_abs_diff=mad, p99=p99)
    return info, small


def _diff_map(src: Path, refp: Path, size: int, im=None):
    """Mean-over-RGB |src − ref| downscaled by averaging (a heatmap pixel is the mean |Δ| it covers),
    its overall mean and 99th percentile, in 0–255 units."""
    import numpy as np
    from PIL import Image

    try:
        im = im or _load_rgb(src)
        ref = _load_rgb(refp)
    except Exception:
        return None, None, None
    if ref.size != im.size:  # SVDQuant's convention: resize the reference, bicubic
        ref = ref.resize(im.size, Image.Resampling.BICUBIC)
    d = np.abs(np.asarray(im, np.int16) - np.asarray(ref, np.int16)).astype(np.float32).mean(axis=2)
    tw, th = im.size
    f = min(1.0, size / max(tw, th))
    small = np.asarray(Image.fromarray(d, "F").resize((max(1, round(tw * f)), max(1, round(th * f))), Image.Resampling.BOX))
    return small, round(float(d.mean()), 3), round(float(np.percentile(small, 99)), 3)


def _save_heatmap(small, scale: int, path: Path) -> None:
    import numpy as np
    from PIL import Image

    idx = np.clip(small * (255.0 / scale), 0, 255).astype(np.uint8)
    _save_webp(Image.fromarray(_inferno_lut()[idx], "RGB"), path, quality=90)


def _save_webp(img, path: Path, quality: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, "WEBP", quality=quality, method=4)
    os.replace(tmp, path)


_LUT = None


def _inferno_lut():
    """matplotlib's 'inferno' as a 256×3 uint8 table: perceptually uniform and readable in greyscale."""
    global _LUT
    if _LUT is None:
        import numpy as np
        from matplotlib import colormaps

        _LUT = (colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255 + 0.5).astype(np.uint8)
    return _LUT


def inferno_css_gradient() -> str:
    """The same colour map as a CSS gradient, for the legend under the heatmaps."""
    lut = _inferno_lut()
    stops = [f"rgb({r},{g},{b}) {i * 100 // 8}%" for i, (r, g, b) in enumerate(lut[:: 32].tolist() + [lut[-1].tolist()])]
    return "linear-gradient(to right, " + ", ".join(stops) + ")"

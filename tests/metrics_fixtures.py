"""Helpers for the metrics tests: real photographs, graded distortions, and synthetic run directories
laid out per docs/run-directory.md (manifest + images + generation records)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

from evalkit.prompts import prompt_id, prompt_seed
from evalkit.io import atomic_write_json, sha256_file

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "camera")


def photo(name: str, size: int | None = 128) -> np.ndarray:
    """A scikit-image data photograph as uint8 RGB, center-cropped square and resized to `size` (None: as is)."""
    from skimage import data

    arr = getattr(data, name)()
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, -1)
    arr = arr[..., :3]
    if size is None:
        return np.ascontiguousarray(arr)
    h, w = arr.shape[:2]
    s = min(h, w)
    arr = arr[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.BICUBIC))


def jpeg(arr: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def blur(arr: np.ndarray, radius: float) -> np.ndarray:
    return np.asarray(Image.fromarray(arr).filter(ImageFilter.GaussianBlur(radius)))


def noise(arr: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(arr.astype(np.float64) + rng.normal(0, sigma, arr.shape), 0, 255).round().astype(np.uint8)


# Graded strengths, mildest first: quality metrics must get monotonically worse along each list.
GRADES: dict[str, list[Callable[[np.ndarray], np.ndarray]]] = {
    "jpeg": [lambda a, q=q: jpeg(a, q) for q in (90, 60, 30, 10)],
    "blur": [lambda a, r=r: blur(a, r) for r in (0.5, 1.0, 2.0, 4.0)],
    "noise": [lambda a, s=s: noise(a, s) for s in (4, 10, 25, 60)],
}


def _png(path: Path, arr: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")
    return sha256_file(path)


def make_run(root: Path, backends: dict[str, Callable[[np.ndarray, int], np.ndarray] | None],
             n_prompts: int = 4, size: int = 96, random_weights: bool = False,
             status: dict[str, str] | None = None) -> Path:
    """A run directory. `backends` maps name -> f(reference image, prompt index) -> image (None for bf16).
    Reference images are crops of real photographs, one per prompt."""
    status = status or {}
    prompts = []
    for i in range(n_prompts):
        text = f"a photograph number {i} of {PHOTOS[i % len(PHOTOS)]}, highly detailed, 35mm"
        pid, seed = prompt_id(i, text), prompt_seed(text, 0)  # evalkit's own formulas, never re-derived here
        prompts.append({"index": i, "id": pid, "text": text, "seed": seed,
                        "tokens": {"clip": 20, "clip_limit": 77, "clip_truncated": False}})
    refs = [photo(PHOTOS[i % len(PHOTOS)], size) for i in range(n_prompts)]
    names = list(backends)
    manifest = {
        "schema_version": 1, "run_id": "test-run", "created_utc": "2026-11-21T00:00:00Z", "evalkit_version": "0.1.0",
        "prompts": prompts, "backends": names, "reference_backend": "bf16",
        "model": {"spec": "tiny", "kind": "tiny", "random_weights": random_weights,
                  "quality_meaningful": not random_weights},
        "generation": {"height": size, "width": size}, "device": {"type": "cpu"}, "versions": {},
    }
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / "manifest.json", manifest)
    for b, fn in backends.items():
        st = status.get(b, "ok")
        images = []
        if st == "ok":
            for i, p in enumerate(prompts):
                arr = refs[i] if fn is None else fn(refs[i], i)
                rel = f"images/{b}/{p['id']}_s{p['seed']}.png"
                images.append({"prompt_id": p["id"], "seed": p["seed"], "path": rel,
                               "sha256": _png(root / rel, arr), "latency_s": 0.01, "flags": []})
        atomic_write_json(root / "generation" / f"{b}.json", {
            "schema_version": 1, "backend": b, "status": st, "reason": None if st == "ok" else "test failure",
            "images": images, "memory": {}, "latency": {}})
    return root

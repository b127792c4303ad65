"""Helpers for the metrics tests: real photographs, graded distortions, and synthetic run directories
laid out per docs/run-directory.md (manifest + images + generation records)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

import fake_run

from evalkit.prompts import Prompt

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


def make_run(root: Path, backends: dict[str, Callable[[np.ndarray, int], np.ndarray] | None],
             n_prompts: int = 4, size: int = 96, random_weights: bool = False,
             status: dict[str, str] | None = None) -> Path:
    """A run directory (tests/fake_run.py builds it). `backends` maps name -> f(reference image, prompt index) ->
    image (None for bf16). Reference images are crops of real photographs, one per prompt."""
    texts = [f"a photograph number {i} of {PHOTOS[i % len(PHOTOS)]}, highly detailed, 35mm" for i in range(n_prompts)]
    refs = [photo(PHOTOS[i % len(PHOTOS)], size) for i in range(n_prompts)]

    def image(backend: str, prompt: Prompt) -> np.ndarray:
        fn = backends[backend]
        return refs[prompt.index] if fn is None else fn(refs[prompt.index], prompt.index)

    return fake_run.make_run(root, prompts=texts, backends=tuple(backends), size=size, image=image, status=status,
                             random_weights=random_weights,
                             tokens={"clip": 20, "clip_limit": 77, "clip_truncated": False})

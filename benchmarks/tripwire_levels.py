"""How the broken-output tripwires' levels were set (evalkit.tripwires): measure every tripwire's value over

  * healthy images: every quantized backend of a tiny study against its bf16 reference (a run directory);
  * "unrelated" pairs: each bf16 image against the bf16 images of the other prompts (same model, other content:
    what an unrelated image is);
  * natural-like images: 1/f-spectrum random images (the spectrum of photographs) with a healthy perturbation
    (noise of 2 levels, a half-pixel shift), and the same with a fine period-2 texture in the reference itself;
  * real photographs (scikit-image's samples): JPEG q30, blur, noise and a 2-pixel shift as the healthy side, the
    other photographs as the unrelated side;
  * the synthetic failures: black, white, one colour, a checkerboard overlay of amplitude 4 and 8 levels, a period-8
    grid, NaN pixels (0 in the PNG).

    python benchmarks/tripwire_levels.py RUN_DIR [--out FILE.md]

Prints (and writes) a Markdown table of min / median / max per tripwire and population.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

from evalkit import tripwires as tw


def load(p: Path) -> np.ndarray:
    return np.asarray(Image.open(p).convert("RGB"))


def natural(rng: np.random.Generator, n: int = 256) -> np.ndarray:
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.fftfreq(n)[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1
    out = []
    for _c in range(3):
        spec = (rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))) / f
        img = np.real(np.fft.ifft2(spec))
        out.append((img - img.mean()) / img.std())
    a = np.stack(out, axis=2) * 40 + 128
    return np.clip(a, 0, 255).astype(np.uint8)


PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "hubble_deep_field",
          "coins", "page", "horse")


def real_photos(size: int = 256) -> dict[str, np.ndarray]:
    """scikit-image's sample photographs (offline), center-cropped and resized: real image statistics."""
    try:
        from skimage import data
    except ImportError:
        return {}
    out = {}
    for name in PHOTOS:
        try:
            arr = np.asarray(getattr(data, name)())
        except Exception:  # noqa: BLE001 - a sample that is not installed is left out
            continue
        if arr.dtype != np.uint8:
            arr = (arr.astype(float) * (255 if arr.max() <= 1 else 1)).clip(0, 255).astype(np.uint8)
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, -1)
        arr = arr[..., :3]
        h, w = arr.shape[:2]
        m = min(h, w)
        arr = arr[(h - m) // 2:(h - m) // 2 + m, (w - m) // 2:(w - m) // 2 + m]
        out[name] = np.asarray(Image.fromarray(np.ascontiguousarray(arr)).resize((size, size), Image.BICUBIC))
    return out


def jpeg(arr: np.ndarray, quality: int) -> np.ndarray:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def blur(arr: np.ndarray, radius: float) -> np.ndarray:
    from PIL import ImageFilter

    return np.asarray(Image.fromarray(arr).filter(ImageFilter.GaussianBlur(radius)))


def values(img: np.ndarray, ref: np.ndarray | None) -> dict[str, float | None]:
    out: dict[str, float | None] = {"constant": tw.constant(img)["value"], "saturated": tw.saturated(img, ref)["value"]}
    if ref is not None:
        e = tw.grid_energy(img, ref)
        out["grid"] = e[0]
        out["concentration"] = e[3] if e[0] > 0.5 else None  # only where there is a difference to speak of
        out["unrelated"] = tw.correlation(img, ref)
    return out


def checker(h: int, w: int, amp: float, period: int = 2) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    pattern = np.where(((y // (period // 2)) + (x // (period // 2))) % 2 == 0, 1.0, -1.0)
    return (pattern * amp)[:, :, None]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--out")
    args = ap.parse_args()
    run = Path(args.run_dir)
    manifest = json.loads((run / "manifest.json").read_text())
    ref_name = manifest.get("reference_backend", "bf16")
    pops: dict[str, list[dict[str, float | None]]] = {}
    refs = {p.name: load(p) for p in sorted((run / "images" / ref_name).glob("*.png"))}
    worst_backend: dict[str, tuple[float, str]] = {}
    for d in sorted((run / "images").iterdir()):
        if d.name == ref_name or not d.is_dir():
            continue
        for p in sorted(d.glob("*.png")):
            v = values(load(p), refs[p.name])
            pops.setdefault("healthy: tiny backends vs bf16", []).append(v)
            c = v.get("unrelated")
            if c is not None and c < worst_backend.get("unrelated", (9, ""))[0]:
                worst_backend["unrelated"] = (c, f"{d.name}/{p.name}")
            g = v.get("grid") or 0
            if g > worst_backend.get("grid", (-1, ""))[0]:
                worst_backend["grid"] = (g, f"{d.name}/{p.name}")
    for name, r in refs.items():
        pops.setdefault("healthy: bf16 itself", []).append(values(r, None))
        for other, r2 in refs.items():
            if other != name:
                pops.setdefault("unrelated: bf16 image vs another prompt's", []).append(values(r, r2))
    rng = np.random.default_rng(0)
    for _ in range(12):
        ref = natural(rng)
        h, w = ref.shape[:2]
        shifted = (ref.astype(float) + np.roll(ref.astype(float), 1, axis=1)) / 2
        healthy = np.clip(shifted + rng.normal(0, 2, ref.shape), 0, 255).astype(np.uint8)
        pops.setdefault("healthy: natural-like (1/f) + noise 2 + half-pixel shift", []).append(values(healthy, ref))
        textured = np.clip(ref.astype(float) + checker(h, w, 20), 0, 255).astype(np.uint8)
        healthy_t = np.clip(textured.astype(float) + rng.normal(0, 2, ref.shape), 0, 255).astype(np.uint8)
        pops.setdefault("healthy: natural-like with a period-2 texture of its own (amp 20) + noise 2", []).append(
            values(healthy_t, textured))
    photos = real_photos()
    for name, ph in photos.items():
        for label, f in (("JPEG q30", lambda a: jpeg(a, 30)), ("blur r2", lambda a: blur(a, 2.0)),
                         ("noise 10", lambda a: np.clip(a + rng.normal(0, 10, a.shape), 0, 255).astype(np.uint8)),
                         ("shift 2 px", lambda a: np.roll(a, 2, axis=1))):
            pops.setdefault("healthy-like: real photographs, JPEG q30 / blur r2 / noise 10 / 2-px shift", []).append(
                values(f(ph), ph))
        for other, ph2 in photos.items():
            if other != name:
                pops.setdefault("unrelated: real photograph vs another photograph", []).append(values(ph2, ph))
        pops.setdefault("failure: real photograph + checkerboard amp 8", []).append(
            values(np.clip(ph + checker(*ph.shape[:2], 8), 0, 255).astype(np.uint8), ph))
    for name, r in list(refs.items()):
        h, w = r.shape[:2]
        fails = {
            "failure: black": np.zeros_like(r), "failure: white": np.full_like(r, 255),
            "failure: one colour": np.full_like(r, 90) + np.array([0, 30, 60], dtype=np.uint8),
            "failure: checkerboard overlay amp 4": np.clip(r + checker(h, w, 4), 0, 255).astype(np.uint8),
            "failure: checkerboard overlay amp 8": np.clip(r + checker(h, w, 8), 0, 255).astype(np.uint8),
            "failure: period-8 grid amp 8": np.clip(r + checker(h, w, 8, 8), 0, 255).astype(np.uint8),
            "failure: saturated (x8 contrast)": np.clip((r.astype(float) - 128) * 8 + 128, 0, 255).astype(np.uint8),
        }
        for k, img in fails.items():
            pops.setdefault(k, []).append(values(img, r))
    lines = [f"# Broken-output tripwire levels, measured {time.strftime('%Y-%m-%d', time.gmtime())}",
             "", f"Machine: {platform.node()} ({platform.machine()}, {platform.processor() or 'cpu'}), "
             f"{platform.python_version()}, numpy {np.__version__}. Run: `{run}` (model {manifest['model'].get('spec')}, "
             f"{manifest['generation']['width']}x{manifest['generation']['height']}, "
             f"{manifest['generation']['num_inference_steps']} steps, {len(refs)} prompts). "
             "Written by `benchmarks/tripwire_levels.py`.", "",
             "Values: constant = largest per-channel std (8-bit levels, trips below the level); saturated = fraction "
             "of clipped pixels (trips at or above); grid = RMS levels of the difference at period-k grid frequencies "
             "beyond the reference's own (trips at or above); unrelated = correlation of 16x16 block means (trips "
             "below).", "",
             "| population | n | constant min | saturated max | grid max | grid median | grid concentration min / max "
             "(where grid > 0.5) | correlation min | correlation median | correlation max |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def stat(vals: list[dict[str, float | None]], key: str, fn: object) -> str:
        xs = [v[key] for v in vals if v.get(key) is not None]
        return f"{fn(xs):.3g}" if xs else "—"  # type: ignore[operator]

    for k, vals in pops.items():
        lines.append(f"| {k} | {len(vals)} | {stat(vals, 'constant', min)} | {stat(vals, 'saturated', max)} | "
                     f"{stat(vals, 'grid', max)} | {stat(vals, 'grid', np.median)} | {stat(vals, 'concentration', min)} / {stat(vals, 'concentration', max)} | "
                     f"{stat(vals, 'unrelated', min)} | "
                     f"{stat(vals, 'unrelated', np.median)} | {stat(vals, 'unrelated', max)} |")
    lines += ["", "Worst healthy backend image: " + "; ".join(f"{k} {v[0]:.3g} ({v[1]})" for k, v in worst_backend.items()),
              "", "Levels (evalkit.tripwires.TRIPWIRES): " + ", ".join(f"{t.name} {t.level:g}" for t in
                                                                    tw.TRIPWIRES.values())]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()

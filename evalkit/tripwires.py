"""Broken-output tripwires (#27 item 1): an image that is not an image of the prompt is never averaged into a mean.

Shared by generate's worker (non-finite latents and pixels, a near-constant image: on the tensors, before the PNG),
score and compare-images (the image tests, against the reference image of the same seed) and check/report (which
read the records). numpy only, imported where pixels are handled (check and the CLI read records without it); no
torch, no import of any stage.

Every tripwire is a registry entry (`TRIPWIRES`): its name, what it detects, its level and why that level. The
levels were measured on 2026-12-05 (benchmarks/results/tripwires-2026-12-05.md): healthy quantized backends of the
tiny study and distorted real photographs against unrelated images and synthetic failures; docs/metrics.md "Broken
output" says the same.

A tripwire that cannot be computed (an odd array, a failure inside numpy) never stops a run: its result is
`not evaluated` with the reason, and the image counts as healthy for it.

Record shapes (docs/run-directory.md "Broken output"):
  * `BrokenEntry`: one broken image (or, `scope: "backend"`, a whole backend): file, tripwire, reason, value, level;
  * generation records: each image entry may carry `nonfinite` {latents, pixels} and `broken` [BrokenEntry];
    the record's `tripwires` {version, latents, broken_backend, n_broken_images, n_nonfinite_images}; metric
    records: `broken` [BrokenEntry] and `tripwires` {version, n_broken, n_reference_broken, not_evaluated, ...}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, TypedDict

from evalkit.record_types import BrokenEntry

if TYPE_CHECKING:
    import numpy as np

# Bumped when a level or a definition changes: score's cached tripwire values and its inputs key depend on it.
TRIPWIRES_VERSION = 1


@dataclass(frozen=True)
class Tripwire:
    name: str
    detects: str
    level: float
    unit: str
    when: str  # "generate", "score", "both", "backend"
    why: str  # how the level was set


# Figures quoted in `why` come from benchmarks/results/tripwires-2026-12-05.md.
TRIPWIRES: dict[str, Tripwire] = {t.name: t for t in [
    Tripwire("nonfinite", "NaN or Inf values in the final latents or the decoded pixels (before the PNG, where a NaN "
             "becomes 0)", 0, "values", "generate",
             "any non-finite value is a broken computation; no working backend produces one"),
    Tripwire("constant", "a near-constant image: all black, all white or one colour", 2.0, "8-bit levels (largest "
             "per-channel standard deviation)", "both",
             "healthy images have a largest per-channel std of 16.6 levels or more (the 15 tiny backends and bf16: "
             "37.8+; real photographs, the Hubble deep field included: 16.6+); black, white and one-colour images 0, "
             "so does a VAE decoding NaN (0 in the PNG); 2 leaves room for dither and a faint gradient"),
    Tripwire("saturated", "a saturated image: nearly every pixel clipped to 0 or 255 in every channel, where its "
             "reference is not", 0.98, "fraction of clipped pixels", "score",
             "healthy tiny images clip at most 0.012% of pixels, but a real photograph of a night sky clips 97%: so "
             "only against a reference, which must clip under half (the reference backend's own images are judged "
             "by `constant` alone); an overflowing decoder (black or white) clips 100%"),
    Tripwire("grid", "a periodic high-frequency artefact (checkerboard, period-2..8 grid) that its reference does "
             "not have", 3.0, "8-bit levels (RMS of the difference image at the period-k grid frequencies, beyond "
             "the reference's own energy there)", "score",
             "healthy pairs show 0-0.03 levels (tiny backends; natural-like images), real photographs under JPEG "
             "q30, blur, noise or a 2-px shift at most 1.27; a reference with its own period-2 texture of amplitude "
             "20 shows 0 (its energy is subtracted); checkerboard overlays of amplitude 4 and 8 show 3.98 and 8, a "
             "period-8 grid of amplitude 8 7.7. The difference must also be concentrated there (>= 20x its mean "
             "power per frequency bin: overlays 260-21,800; broadband differences such as another picture or a x8 "
             "contrast change at most 2.7, JPEG's 8x8 blocks at most 6.3), so a difference large everywhere is not "
             "called a grid"),
    Tripwire("unrelated", "an image unrelated to its reference (another composition altogether)", 0.7,
             "Pearson correlation of the grey 16x16 block means", "score",
             "every healthy tiny backend correlates with its reference at 0.989 or more (lowest: gguf-q2_k, the "
             "coarsest quantization of the study), real photographs under JPEG q30, blur r2, noise 10 or a 2-px "
             "shift at 0.953 or more; unrelated images, i.e. bf16 images of other prompts (-0.09..0.23) and other "
             "photographs (-0.54..0.59), stay below 0.6; 0.7 sits between, nearer the unrelated side so that a "
             "working backend is not failed"),
    Tripwire("not_quantized", "a backend that did not quantize: the census finds no quantized layer where its recipe "
             "quantizes components", 0, "quantized layers", "backend",
             "a quantization backend with no quantized layer measures bf16, not itself"),
    Tripwire("identical_to_reference", "a backend whose every image is byte-identical to the reference's", 1.0,
             "fraction of images identical", "backend",
             "a quantized backend changes at least one pixel of some image; every image identical means it ran bf16 "
             "(backends built on the reference itself, e.g. bf16+offload, are exempt)"),
]}

# Grid periods looked at (period 2 is the checkerboard / Nyquist; the VAE upsamples by 8).
GRID_PERIODS = (2, 3, 4, 5, 6, 7, 8)
# A grid artefact concentrates the difference at its frequencies: at least this many times the difference's mean
# power per frequency bin (a broadband difference, e.g. another composition or a contrast change, has ~1 or less).
GRID_CONCENTRATION = 20.0
UNRELATED_BLOCKS = 16
SATURATED_REFERENCE_MAX = 0.5


class Result(TypedDict, total=False):
    """One tripwire on one image: tripped or not, or not evaluated (with why)."""
    tripwire: str
    tripped: bool
    value: float | None
    level: float
    reason: str | None
    not_evaluated: str | None


def _res(name: str, value: float | None, tripped: bool, reason: str | None = None) -> Result:
    return {"tripwire": name, "tripped": bool(tripped), "value": None if value is None else float(value),
            "level": TRIPWIRES[name].level, "reason": reason if tripped else None, "not_evaluated": None}


def _not_evaluated(name: str, why: str) -> Result:
    return {"tripwire": name, "tripped": False, "value": None, "level": TRIPWIRES[name].level, "reason": None,
            "not_evaluated": why}


def _guarded(name: str, fn: Any, *args: Any) -> Result:
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - a tripwire that fails must not kill the run
        return _not_evaluated(name, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}".rstrip(": "))


def as_float_image(arr: Any) -> np.ndarray:
    """HxWxC as float32 in 8-bit levels (0..255): uint8 as is, floats in [0, 1] scaled, non-finite values as 0 (what
    the PNG holds)."""
    import numpy as np

    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"expected an HxWxC image, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32)
    return np.nan_to_num(a.astype(np.float32) * 255.0, nan=0.0, posinf=0.0, neginf=0.0)


class Pixels:
    """One image, with the views the tripwires need computed once: per-channel mean and std, the clipped fraction,
    and the grey image (float32, full resolution: a period-2 grid needs every pixel)."""

    def __init__(self, arr: Any) -> None:
        import numpy as np

        a = np.asarray(arr)
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3:
            raise ValueError(f"expected an HxWxC image, got shape {a.shape}")
        self.raw = a
        self.shape = a.shape
        self._grey: np.ndarray | None = None
        self._stats: tuple[np.ndarray, np.ndarray, float] | None = None

    def stats(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(per-channel mean, per-channel std, fraction of pixels clipped to 0 or 255 in every channel), in levels."""
        import numpy as np

        if self._stats is None:
            a = self.raw[:, :, :3]
            if a.dtype == np.uint8:  # exact and fast from each channel's histogram
                means, stds = [], []
                levels = np.arange(256, dtype=np.float64)
                for c in range(a.shape[2]):
                    hist = np.bincount(a[:, :, c].ravel(), minlength=256).astype(np.float64)
                    n = hist.sum()
                    m = float((hist * levels).sum() / n)
                    means.append(m)
                    stds.append(float(np.sqrt(max((hist * levels ** 2).sum() / n - m * m, 0.0))))
                clip = None
                for c in range(a.shape[2]):  # channel by channel: `.all(axis=2)` is a slow strided reduction
                    ch = a[:, :, c]
                    m = (ch == 0) | (ch == 255)
                    clip = m if clip is None else clip & m
                clipped = float(np.count_nonzero(clip)) / clip.size
                self._stats = (np.array(means), np.array(stds), clipped)
            else:
                f = as_float_image(a).reshape(-1, a.shape[2])
                clipped = float(np.logical_or(f <= 0.5, f >= 254.5).all(axis=1).mean())
                self._stats = (f.mean(axis=0, dtype=np.float64), f.std(axis=0, dtype=np.float64), clipped)
        return self._stats

    @property
    def grey(self) -> np.ndarray:
        import numpy as np

        if self._grey is None:
            a = self.raw
            if a.shape[2] >= 3:  # channel by channel: a mean over the last axis of 3 is a slow strided reduction
                chans = [as_float_image(a[:, :, c:c + 1])[:, :, 0] for c in range(3)]
                self._grey = (chans[0] + chans[1] + chans[2]) * np.float32(1 / 3)
            else:
                self._grey = as_float_image(a)[:, :, 0]
        return self._grey


def _px(x: Any) -> Pixels:
    return x if isinstance(x, Pixels) else Pixels(x)


# --------------------------------------------------------------------------------------------- single image

def count_nonfinite(arr: Any) -> int:
    """Non-finite values of an array or torch tensor: one reduction (on the tensor's device for a tensor)."""
    import numpy as np

    if hasattr(arr, "isfinite") and hasattr(arr, "numel"):  # a torch tensor: no copy to the host
        return int((~arr.isfinite()).sum().item())
    a = np.asarray(arr)
    if not np.issubdtype(a.dtype, np.floating):
        return 0
    return int(a.size - np.count_nonzero(np.isfinite(a)))


def nonfinite_result(latents: int | None, pixels: int | None) -> Result:
    n = (latents or 0) + (pixels or 0)
    parts = [f"{k} {v}" for k, v in (("latents", latents), ("pixels", pixels)) if v]
    return _res("nonfinite", n, n > 0, f"non-finite values (NaN/Inf): {', '.join(parts)}")


def _constant(img: Any) -> Result:
    mean, std_c, _clipped = _px(img).stats()
    std = float(std_c.max())
    if mean.max() <= 8:
        what = "all black"
    elif mean.min() >= 247:
        what = "all white"
    else:
        what = "one colour (" + ", ".join(str(int(round(x))) for x in mean[:3]) + ")"
    return _res("constant", std, std < TRIPWIRES["constant"].level,
                f"near-constant image, {what}: largest channel std {std:.2f} < {TRIPWIRES['constant'].level:g} levels")


def constant(img: Any) -> Result:
    return _guarded("constant", _constant, img)


def _saturated(img: Any, ref: Any | None) -> Result:
    frac = _px(img).stats()[2]
    level = TRIPWIRES["saturated"].level
    if ref is None or (frac >= level and _px(ref).stats()[2] >= SATURATED_REFERENCE_MAX):
        return _res("saturated", frac, False)  # a night sky is mostly black: only a reference can say it is wrong
    return _res("saturated", frac, frac >= level, f"saturated image: {frac:.1%} of pixels clipped to 0 or 255 "
                f"(level {level:.0%})")


def saturated(img: Any, ref: Any | None = None) -> Result:
    return _guarded("saturated", _saturated, img, ref)


# --------------------------------------------------------------------------------------------- against the reference

def _grid_power(d: np.ndarray, k: int) -> tuple[float, int, int]:
    """Power of `d` at the frequencies of a period-k grid (every multiple of h/k and w/k but DC), with no full FFT:
    folding the image onto one k x k tile (summing pixels of equal y mod k, x mod k) and taking that tile's DFT gives
    exactly the image's DFT at those frequencies (the image cropped to multiples of k). Returns (power, bins,
    pixels), power as numpy's unnormalised fft2 would have it."""
    import numpy as np

    h, w = d.shape
    hk, wk = h // k * k, w // k * k
    # rows first (a contiguous reduction, fast), then the small k x (w/k) x k remainder
    tile = d[:hk, :wk].reshape(hk // k, k, wk // k, k).sum(axis=0, dtype=np.float64).sum(axis=1)
    pw = np.abs(np.fft.fft2(tile)) ** 2
    pw[0, 0] = 0.0
    return float(pw.sum()), k * k - 1, hk * wk


def grid_energy(img: Any, ref: Any) -> tuple[float, int, float, float]:
    """(RMS in 8-bit levels of (img - ref) at the grid frequencies beyond the reference's own, the period with the
    most, the RMS of the reference there, and how concentrated the difference is there: its power per grid bin
    over its mean power per bin, ~1 or less for a broadband difference). Images of the same size, grey.

    Cost: a pass over the pixels per period (no FFT of the image)."""
    import numpy as np

    a, r = _px(img).grey, _px(ref).grey
    if a.shape != r.shape:
        raise ValueError(f"image {a.shape} and reference {r.shape} differ in size")
    h, w = a.shape
    d = a - r
    total = float(np.square(d, dtype=np.float64).sum())  # Parseval: h*w times the mean power per DFT bin
    best = (0.0, 0, 0.0, 0.0)
    for k in GRID_PERIODS:
        if h < 2 * k or w < 2 * k:
            continue
        ed, nbins, n = _grid_power(d, k)
        er, _, _ = _grid_power(r, k)
        mean_bin = total * n / (h * w)
        excess = math.sqrt(max(ed - er, 0.0)) / n  # energy the reference does not have there
        if excess > best[0]:
            best = (excess, k, math.sqrt(er) / n, ed / (nbins * mean_bin) if mean_bin > 0 else 0.0)
    return best


def _grid(img: np.ndarray, ref: np.ndarray) -> Result:
    excess, k, ref_rms, conc = grid_energy(img, ref)
    level = TRIPWIRES["grid"].level
    return _res("grid", excess, excess >= level and conc >= GRID_CONCENTRATION,
                f"periodic artefact (period {k} grid{', checkerboard' if k == 2 else ''}): {excess:.1f} levels RMS "
                f"at its frequencies beyond the reference's {ref_rms:.1f} (level {level:g})")


def grid(img: Any, ref: Any) -> Result:
    return _guarded("grid", _grid, img, ref)


def _blocks(g: np.ndarray, n: int) -> np.ndarray:
    h, w = g.shape
    bh, bw = max(1, h // n), max(1, w // n)
    nh, nw = h // bh, w // bw
    return g[:nh * bh, :nw * bw].reshape(nh, bh, nw, bw).mean(axis=(1, 3))


def correlation(img: Any, ref: Any) -> float | None:
    """Pearson correlation of the grey 16x16 block means of two images (None when either is flat)."""
    import numpy as np

    a = _blocks(_px(img).grey, UNRELATED_BLOCKS).ravel().astype(np.float64)
    r = _blocks(_px(ref).grey, UNRELATED_BLOCKS).ravel().astype(np.float64)
    a, r = a - a.mean(), r - r.mean()
    den = math.sqrt(float((a * a).sum()) * float((r * r).sum()))
    if den <= 1e-9:
        return None
    return float((a * r).sum() / den)


def _unrelated(img: np.ndarray, ref: np.ndarray) -> Result:
    c = correlation(img, ref)
    if c is None:
        return _not_evaluated("unrelated", "an image or its reference is flat (no correlation to measure)")
    level = TRIPWIRES["unrelated"].level
    return _res("unrelated", c, c < level, f"unrelated to its reference: block correlation {c:.2f} < {level:g}")


def unrelated(img: Any, ref: Any) -> Result:
    return _guarded("unrelated", _unrelated, img, ref)


def image_tests(img: Any, ref: Any | None) -> list[Result]:
    """The score-time image tripwires of one image (and its reference image of the same seed, None for the
    reference backend). Comparisons against a reference that is itself broken are not evaluated."""
    try:
        img, ref = _px(img), (None if ref is None else _px(ref))
    except Exception as e:  # noqa: BLE001 - not an image: every test is not evaluated
        why = f"{type(e).__name__}: {e}"
        return [_not_evaluated(n, why) for n in ("constant", "saturated", "grid", "unrelated")][:2 if ref is None else 4]
    out = [constant(img), saturated(img, ref)]
    if ref is None:
        return out
    same = img.shape[:2] == ref.shape[:2]
    ref_flat = constant(ref)
    if not same:
        why = "image and reference differ in size"
        return out + [_not_evaluated("grid", why), _not_evaluated("unrelated", why)]
    if ref_flat["tripped"]:
        why = "the reference image is itself near-constant"
        return out + [_not_evaluated("grid", why), _not_evaluated("unrelated", why)]
    return out + [grid(img, ref), unrelated(img, ref)]


# --------------------------------------------------------------------------------------------- entries

def entry_from(results: Sequence[Mapping[str, Any]], *, prompt_id: str | None = None, seed: int | None = None,
               file: str | None = None, when: str = "score", scope: str = "image") -> BrokenEntry | None:
    """One BrokenEntry for an image from its tripwire results (the first tripped is the entry, the rest `others`);
    None when none tripped."""
    tripped = [r for r in results if r.get("tripped")]
    if not tripped:
        return None
    first = tripped[0]
    e: BrokenEntry = {"scope": scope, "prompt_id": prompt_id, "seed": seed, "file": file,
                      "tripwire": str(first["tripwire"]), "reason": str(first.get("reason") or first["tripwire"]),
                      "value": first.get("value"), "level": float(first.get("level", TRIPWIRES[first["tripwire"]].level)),
                      "when": str(first.get("when") or when)}
    if len(tripped) > 1:
        e["others"] = [{"tripwire": r["tripwire"], "reason": r.get("reason"), "value": r.get("value"),
                        "level": r.get("level"), "when": r.get("when") or when} for r in tripped[1:]]
    return e


def merge_entries(first: Iterable[Mapping[str, Any]], then: Iterable[Mapping[str, Any]]) -> list[BrokenEntry]:
    """Entries of `first` (generate time) with those of `then` (score time) for the same image folded into them as
    `others` (a tripwire both found counts once); order: first's, then the rest."""
    out: dict[Any, dict[str, Any]] = {}
    for e in list(first) + list(then):
        key = (e.get("scope", "image"), e.get("prompt_id"), e.get("seed"), e.get("file") if e.get("prompt_id") is None else None)
        if key not in out:
            out[key] = {**e, "others": list(e.get("others") or [])}
            continue
        have = out[key]
        names = {have["tripwire"]} | {o.get("tripwire") for o in have["others"]}
        for o in [e] + list(e.get("others") or []):
            if o.get("tripwire") not in names:
                have["others"].append({k: o.get(k) for k in ("tripwire", "reason", "value", "level", "when")})
                names.add(o.get("tripwire"))
    for e in out.values():
        if not e["others"]:
            del e["others"]
    return list(out.values())  # type: ignore[return-value]


def all_reasons(e: Mapping[str, Any]) -> str:
    """The entry's reason and those of its other tripwires, one line."""
    return "; ".join([str(e.get("reason"))] + [str(o.get("reason")) for o in e.get("others") or []])


# --------------------------------------------------------------------------------------------- per backend

def not_quantized(gen: Mapping[str, Any], reference: bool, reference_name: str = "bf16") -> BrokenEntry | None:
    """The census tripwire of one generation record: a non-reference backend whose recipe quantizes components
    (`quantization.components_quantized`) but whose census finds no quantized layer in any of them."""
    if reference or gen.get("status") != "ok" or reference_based(gen, reference_name):
        return None
    recipe = gen.get("recipe") or {}
    q = gen.get("quantization") or {}
    expected = list(q.get("components_quantized") or recipe.get("components") or [])
    counts = q.get("quantized_linear_count")
    if not expected or not isinstance(counts, Mapping) or not any(c in counts for c in expected):
        return None  # no census of these components was taken: nothing to judge (never a guess)
    total = sum(int(counts.get(c) or 0) for c in expected)
    if total > 0:
        return None
    return {"scope": "backend", "prompt_id": None, "seed": None, "file": None, "tripwire": "not_quantized",
            "reason": f"did not quantize: the census finds no quantized layer in {', '.join(expected)} "
                      f"(recipe {recipe.get('name') or gen.get('backend')} quantizes them)",
            "value": 0.0, "level": 0.0, "when": "generate"}


def identical_to_reference(images: Mapping[str, str], reference: Mapping[str, str]) -> BrokenEntry | None:
    """Every image byte-identical to the reference's image of the same prompt (sha256 by prompt id)."""
    shared = [p for p in images if p in reference]
    if not shared or any(images[p] != reference[p] for p in shared):
        return None
    return {"scope": "backend", "prompt_id": None, "seed": None, "file": None, "tripwire": "identical_to_reference",
            "reason": f"did not quantize: all {len(shared)} images are byte-identical to the reference's",
            "value": 1.0, "level": 1.0, "when": "score"}


def reference_based(gen: Mapping[str, Any], reference_name: str = "bf16") -> bool:
    """A backend built on the reference recipe itself (bf16+offload, bf16+compile): identical images are expected,
    and no layer is quantized. Told by name (the run's reference backend, modifiers aside), never by library."""
    recipe = gen.get("recipe") or {}
    base = str(recipe.get("name") or gen.get("backend") or "").split("+")[0]
    return base == str(reference_name).split("+")[0]


def count_broken(entries: Iterable[Mapping[str, Any]], n_images: int) -> int:
    """Broken images of a backend: every image when a backend-level tripwire fired, else one per image entry."""
    entries = list(entries)
    if any(e.get("scope") == "backend" for e in entries):
        return n_images or 1
    return len({(e.get("prompt_id"), e.get("file")) for e in entries})


def describe(entries: Sequence[Mapping[str, Any]], shown: int = 5) -> str:
    """'p00-… (constant: near-constant image, all black …); p01-… (…)' for messages, at most `shown` named."""
    parts = []
    for e in entries[:shown]:
        who = e.get("file") or e.get("prompt_id") or ("every image" if e.get("scope") == "backend" else "?")
        parts.append(f"{who} ({e.get('tripwire')}: {all_reasons(e)})")
    more = f"; and {len(entries) - shown} more" if len(entries) > shown else ""
    return "; ".join(parts) + more


def recorded_broken(gen: Mapping[str, Any] | None, met: Mapping[str, Any] | None) -> list[BrokenEntry]:
    """A backend's broken entries as its records state them: the metric record's `broken` once scored (it includes
    generate's), else generate's own (image entries' `broken` and the record's census tripwire)."""
    if met and isinstance(met.get("broken"), list):
        return list(met["broken"])
    gen = gen or {}
    out = list(((gen.get("tripwires") or {}).get("broken_backend")) or [])
    for e in gen.get("images") or []:
        out += list(e.get("broken") or [])
    return out


def image_counts(images: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """A generation record's per-backend totals of its image entries' generate-time tripwires."""
    images = list(images)
    return {"n_broken_images": sum(1 for e in images if e.get("broken")),
            "n_nonfinite_images": sum(1 for e in images
                                      if any((e.get("nonfinite") or {}).get(k) for k in ("latents", "pixels")))}


def registry_rows() -> list[dict[str, Any]]:
    return [{"name": t.name, "detects": t.detects, "level": t.level, "unit": t.unit, "when": t.when, "why": t.why}
            for t in TRIPWIRES.values()]

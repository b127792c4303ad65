"""The reference's noise floor (RUN_DIR/calibration.json, written by `evalkit calibrate`) as the report shows it.

The calibrate stage owns the numbers; this module only reads them (the run directory is the contract, no stage
imports another). Direction and identity value come from the metric registry, never from the metric's name:
for a lower-is-better metric the band runs from identity (LPIPS 0) up to the floor, for a higher-is-better one
from the floor up to identity (SSIM 1, PSNR's cap), drawn to the axis edge so a 100 dB cap does not squash the plot.
Pure Python: no numpy, no matplotlib.
"""

from __future__ import annotations

import math
from pathlib import Path

from evalkit.floors import NoiseFloor, read_floors
from evalkit.rundir import RunDir

BAND_LABEL = "reference noise floor (calibration)"
IDENTICAL_NOTE = "reference: byte-identical under every perturbation"


def draws_band(floor: NoiseFloor) -> bool:
    """A band only for a measured, non-zero noise: an identical floor has nothing to shade."""
    return floor.ok and not floor.identical and floor.value is not None and math.isfinite(floor.value)


def caption(floor: NoiseFloor, label: str, shown: str | None = None) -> str:
    """One sentence for a figure caption: the floor, the byte-identical note, or why there is none. `shown` is the
    floor as the quality table prints it (its column's digits); calibrate's `display` otherwise."""
    text = shown or floor.display or "—"
    if not floor.ok:
        return f"No {label} noise floor: {floor.reason or floor.status}."
    if floor.identical:
        return f"{label} noise floor: {IDENTICAL_NOTE} (no band)."
    if not draws_band(floor):
        return f"{label} noise floor {text}: no finite value to shade."
    return (f"Shaded: {BAND_LABEL}, {label} {text}"
            f"{f' (set by {floor.source})' if floor.source else ''}: a difference inside it is noise.")


def band_limits(floor: NoiseFloor, higher_is_better: bool, identity: float | None,
                axis: tuple[float, float]) -> tuple[float, float] | None:
    """(low, high) in data units of the band to shade on an axis whose current limits are `axis`; None: no band.
    Lower is better: identity (0 if the registry gives none) up to the floor. Higher is better: the floor up to
    identity, or to the axis top when identity lies above it (PSNR's 100 dB cap would flatten every point)."""
    if not draws_band(floor):
        return None
    v = float(floor.value)  # type: ignore[arg-type]
    if higher_is_better:
        top = axis[1] if identity is None else min(identity, axis[1])
        return (v, max(top, v))
    return (0.0 if identity is None else identity, v)


def metric_identity(key: str) -> tuple[bool | None, float | None]:
    """(higher_is_better, identity value) of a registered metric; (None, None) for one the registry lacks."""
    from evalkit.metrics.registry import list_metrics

    spec = next((s for s in list_metrics() if s.name == key), None)
    if spec is None:
        return None, None
    lo, hi = spec.value_range
    return spec.higher_is_better, (hi if spec.higher_is_better else lo)


def load_noise_floors(root: Path, reference: str) -> tuple[dict[str, NoiseFloor], str | None]:
    """(metric key -> NoiseFloor from root/calibration.json, a note for the page or None); ({}, None) when the run
    has no calibration (the report is then exactly what it was before calibrations existed). A calibration of
    another reference backend is not this run's floor: it is left out, and the note says so. A file of another
    shape, or a floor check would refuse, is a one-line EvalkitError (evalkit/floors.py)."""
    path = RunDir(root).calibration
    if not path.exists():
        return {}, None
    cal, floors = read_floors(path)  # the one reader check shares: a file check refuses is not drawn either
    cal_ref = cal.get("reference_backend")
    if cal_ref is not None and cal_ref != reference:
        return {}, (f"{path}: calibrated reference {cal_ref!r}, but this run's reference is {reference!r}; "
                    "its noise floor is not shown (rerun `evalkit calibrate`)")
    return floors, None

"""The reference's noise floor (RUN_DIR/calibration.json, written by `evalkit calibrate`) as the report shows it.

The calibrate stage owns the numbers; this module only reads them (the run directory is the contract, no stage
imports another). Direction and identity value come from the metric registry, never from the metric's name:
for a lower-is-better metric the band runs from identity (LPIPS 0) up to the floor, for a higher-is-better one
from the floor up to identity (SSIM 1, PSNR's cap), drawn to the axis edge so a 100 dB cap does not squash the plot.
Pure Python: no numpy, no matplotlib.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from evalkit.errors import EvalkitError
from evalkit.io import read_json
from evalkit.record_types import CALIBRATION_SCHEMA, CalibrationFile
from evalkit.records import check_record
from evalkit.rundir import RunDir

BAND_LABEL = "reference noise floor (calibration)"
IDENTICAL_NOTE = "reference: byte-identical under every perturbation"


@dataclass(frozen=True)
class NoiseFloor:
    """One paired metric's floor. `status` "ok" or the calibrate stage's word for why not (`reason`)."""

    metric: str
    status: str
    reason: str = ""
    value: float | None = None
    identical: bool = False
    display: str = ""
    source: str = ""  # the perturbation that set the floor

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def draws_band(self) -> bool:
        """A band only for a measured, non-zero noise: an identical floor has nothing to shade."""
        return self.ok and not self.identical and self.value is not None and math.isfinite(self.value)

    def table_text(self) -> str:
        """What the quality table's noise-floor row shows for this metric."""
        if not self.ok:
            return f"not measured: {self.reason or self.status}"
        return self.display or "—"

    def caption(self, label: str, shown: str | None = None) -> str:
        """One sentence for a figure caption: the floor, the byte-identical note, or why there is none. `shown` is
        the floor as the quality table prints it (its column's digits); calibrate's `display` otherwise."""
        text = shown or self.display or "—"
        if not self.ok:
            return f"No {label} noise floor: {self.reason or self.status}."
        if self.identical:
            return f"{label} noise floor: {IDENTICAL_NOTE} (no band)."
        if not self.draws_band:
            return f"{label} noise floor {text}: no finite value to shade."
        return (f"Shaded: {BAND_LABEL}, {label} {text}"
                f"{f' (set by {self.source})' if self.source else ''}: a difference inside it is noise.")


def band_limits(floor: NoiseFloor, higher_is_better: bool, identity: float | None,
                axis: tuple[float, float]) -> tuple[float, float] | None:
    """(low, high) in data units of the band to shade on an axis whose current limits are `axis`; None: no band.
    Lower is better: identity (0 if the registry gives none) up to the floor. Higher is better: the floor up to
    identity, or to the axis top when identity lies above it (PSNR's 100 dB cap would flatten every point)."""
    if not floor.draws_band:
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
    shape is a one-line EvalkitError."""
    path = RunDir(root).calibration
    if not path.exists():
        return {}, None
    cal = read_json(path)
    if not isinstance(cal, dict) or cal.get("schema") != CALIBRATION_SCHEMA:
        found = cal.get("schema") if isinstance(cal, dict) else type(cal).__name__
        raise EvalkitError(f"{path}: not a calibration of schema {CALIBRATION_SCHEMA!r} (found {found!r}); "
                           "rerun `evalkit calibrate` or remove the file")
    check_record(cal, CalibrationFile, path)  # the one schema every reader of calibration.json checks
    cal_ref = cal.get("reference_backend")
    if cal_ref is not None and cal_ref != reference:
        return {}, (f"{path}: calibrated reference {cal_ref!r}, but this run's reference is {reference!r}; "
                    "its noise floor is not shown (rerun `evalkit calibrate`)")
    metrics = cal.get("metrics")
    if not isinstance(metrics, dict):
        raise EvalkitError(f"{path}: field 'metrics' must be an object")
    out = {}
    for key, entry in metrics.items():
        floor = entry.get("floor") if isinstance(entry, dict) else None
        if not isinstance(floor, dict):
            raise EvalkitError(f"{path}: metrics.{key}.floor must be an object")
        status = str(floor.get("status") or "skipped")
        value = floor.get("value")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise EvalkitError(f"{path}: metrics.{key}.floor.value must be a number or null, found {value!r}")
        out[str(key)] = NoiseFloor(
            metric=str(key), status=status, reason=str(floor.get("reason") or ""),
            value=None if value is None else float(value), identical=floor.get("identical") is True,
            display=str(floor.get("display") or ""), source=str(floor.get("from") or ""))
    return out, None

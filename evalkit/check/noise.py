"""The noise floor in check: read calibration.json, resolve `{ noise = k }` bounds, put values in floor units.

calibration.json is written by `evalkit calibrate` (evalkit/calibrate/floor.py defines the floor). Per metric it
states the floor, the value of identical images (`identity`) and the `scale` a multiple applies on:
- linear (LPIPS, SSIM): a value's distance from identity, in units of the floor's distance from identity;
  `{ noise = k }` is identity + k * (floor - identity): LPIPS k * floor, SSIM 1 - k * (1 - floor).
- db (PSNR): k times the floor's MSE, i.e. 10*log10(k) dB below the floor.
A floor at identity (the reference reproduced exactly) makes every relative bound demand identical images.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.check.thresholds import Bound
from evalkit.errors import EvalkitError
from evalkit.io import read_json

CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class Floor:
    metric: str
    higher_is_better: bool
    identity: float
    scale: str  # "linear" | "db"
    value: float | None  # None: identical on a dB metric (PSNR), never a number
    identical: bool
    display: str
    source: str | None = None  # the perturbation whose noise end is the floor
    judged: tuple[str, ...] = ()  # every perturbation the floor was taken over

    def units(self, v: float) -> float:
        """`v` as a multiple of the floor's degradation (0: identical images, 1: as far off as the noise)."""
        if self.identical:
            return 0.0 if self._at_identity(v) else math.inf
        if self.scale == "db":
            return 10 ** ((self.value - v) / 10)  # type: ignore[operator]
        return (v - self.identity) / (self.value - self.identity)  # type: ignore[operator]

    def limit(self, k: float) -> float:
        """The value `{ noise = k }` stands for."""
        if self.identical:
            return self.identity
        if self.scale == "db":
            return self.value - 10 * math.log10(k)  # type: ignore[operator]
        return self.identity + k * (self.value - self.identity)  # type: ignore[operator]

    def _at_identity(self, v: float) -> bool:
        return v >= self.identity if self.higher_is_better else v <= self.identity


def calibration_path(run_root: Path, given: str | Path | None) -> Path:
    return Path(given) if given else run_root / CALIBRATION_FILE


def load_floors(path: Path) -> dict[str, Floor | str]:
    """metric -> Floor, or the reason the calibration has none. EvalkitError for a file that is not one."""
    try:
        data = read_json(path)
    except (ValueError, OSError) as e:
        raise EvalkitError(f"{path}: cannot read the calibration ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise EvalkitError(f"{path}: not a calibration (no 'metrics' table); rerun `evalkit calibrate`")
    out: dict[str, Floor | str] = {}
    for name, m in data["metrics"].items():
        f = (m or {}).get("floor") or {}
        if f.get("status") != "ok":
            out[name] = f.get("reason") or "no floor"
            continue
        out[name] = Floor(name, bool(m["higher_is_better"]), float(m["identity"]), m.get("scale", "linear"),
                          f.get("value"), bool(f.get("identical")), str(f.get("display")), f.get("from"),
                          tuple(f.get("perturbations_judged") or ()))
    return out


def resolve_bound(bound: Bound, floors: dict[str, Floor | str] | None, cal: Path) -> Bound:
    """A relative bound with its limit filled in from the floor; exit 2 (EvalkitError) naming the bound's
    file:line when there is no calibration or no floor for its metric."""
    if not bound.is_relative:
        return bound
    spelled = f"{bound.key} = {{ noise = {bound.noise:g} }}"
    if floors is None:
        raise EvalkitError(f"{bound.where}: {spelled} is relative to the noise floor, but there is no calibration "
                           f"({cal} not found); run `evalkit calibrate RUN_DIR` or pass --calibration FILE")
    floor = floors.get(bound.quantity)
    if not isinstance(floor, Floor):
        why = floor if isinstance(floor, str) else "the calibration has no such metric"
        raise EvalkitError(f"{bound.where}: {spelled}: {cal} has no floor for {bound.quantity} ({why})")
    return dataclasses.replace(bound, limit=floor.limit(bound.noise))  # type: ignore[arg-type]


def floor_cells(bound: Bound, value: float | None, floors: dict[str, Floor | str] | None) -> tuple[tuple[str, str], str]:
    """(floor cell, margin cell) and a note. Margin: the bound minus the value, in floor units (> 0 passes)."""
    floor = (floors or {}).get(bound.quantity) if bound.is_metric else None
    if not isinstance(floor, Floor):
        return ("—", "—"), ""
    if value is None or math.isnan(value):
        return (floor.display, "—"), ""
    if floor.identical:
        note = (f"{bound.quantity}: the floor is identical images (the reference reproduced exactly under every "
                f"perturbation), so no margin in floor units exists")
        return (floor.display, "—"), note
    k = bound.noise if bound.is_relative else floor.units(bound.limit)
    r = floor.units(value)
    return (floor.display, f"{k - r:+.2f}×"), f"{bound.quantity} is {r:.2f}× the noise floor; bound {k:.2f}×"


def check_calibration_matches(data_path: Path, manifest: dict[str, Any]) -> list[str]:
    """Warnings when a calibration was made for other settings than this run's (e.g. a cached one)."""
    try:
        cal = read_json(data_path)
    except (ValueError, OSError):
        return []
    warnings = []
    gen, cgen = manifest.get("generation") or {}, cal.get("generation") or {}
    for k in ("height", "width", "num_inference_steps", "guidance_scale"):
        if cgen.get(k) != gen.get(k):
            warnings.append(f"{data_path}: calibrated at {k}={cgen.get(k)!r}, this run has {gen.get(k)!r}")
    model = (manifest.get("model") or {}).get("spec")
    if cal.get("model") != model:
        warnings.append(f"{data_path}: calibrated on model {cal.get('model')!r}, this run is {model!r}")
    return warnings

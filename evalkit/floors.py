"""The reference's noise floor as calibration.json states it: the one reader check and report share.

calibrate writes the file (evalkit/calibrate/floor.py defines the floor; its record type is
evalkit.record_types.CalibrationFile). Per metric it states the floor, the value of identical images (`identity`),
the metric's direction and the `scale` a multiple applies on:
- linear (LPIPS, SSIM): a value's distance from identity, in units of the floor's distance from identity;
  `{ noise = k }` is identity + k * (floor - identity): LPIPS k * floor, SSIM 1 - k * (1 - floor).
- db (PSNR): k times the floor's MSE, i.e. 10*log10(k) dB below the floor.
A floor at identity (the reference reproduced exactly) makes every relative bound demand identical images.

Anything that is not a calibration evalkit wrote (a wrong type, a NaN, a floor on the wrong side of identity) is a
one-line EvalkitError naming the file and the field, whichever stage reads it. Light: stdlib only.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError
from evalkit.record_types import CALIBRATION_SCHEMA, CalibrationFile

SCALES = ("linear", "db")


@dataclass(frozen=True)
class NoiseFloor:
    """One paired metric's floor. `status` is "ok", or calibrate's word for why there is none (`reason`); the
    other fields are set for an ok floor only."""

    metric: str
    status: str
    reason: str = ""
    higher_is_better: bool = False
    identity: float = 0.0
    scale: str = "linear"
    value: float | None = None  # None: identical on a dB metric (PSNR), never a number
    identical: bool = False
    display: str = ""
    source: str | None = None  # the perturbation whose noise end is the floor
    judged: tuple[str, ...] = ()  # every perturbation the floor was taken over

    @property
    def ok(self) -> bool:
        return self.status == "ok"

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


def read_floors(path: str | os.PathLike[str]) -> tuple[CalibrationFile, dict[str, NoiseFloor]]:
    """(the calibration record, metric -> NoiseFloor) from `path`, checked down to every floor."""
    from evalkit.io import read_json
    from evalkit.records import check_record

    path = Path(path)
    if path.is_dir():
        raise EvalkitError(f"{path}: is a directory, not a calibration")
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise EvalkitError(f"{path}: not a calibration (no 'metrics' table); rerun `evalkit calibrate`")
    check_record(data, CalibrationFile, path)  # the record type's shape, one-line errors naming the field
    if data.get("schema") != CALIBRATION_SCHEMA:
        raise EvalkitError(f"{path}: not a calibration of schema {CALIBRATION_SCHEMA!r} (found "
                           f"{data.get('schema')!r}); rerun `evalkit calibrate` or remove the file")
    return data, {str(name): _floor(path, str(name), m) for name, m in data["metrics"].items()}


def _floor(path: Path, name: str, m: Any) -> NoiseFloor:
    where = f"metrics.{name}"
    _want(path, where, m, dict)
    f = m.get("floor")
    _want(path, f"{where}.floor", f, dict)
    status = _want(path, f"{where}.floor.status", f.get("status"), str)
    if status != "ok":
        reason = f.get("reason")
        return NoiseFloor(name, status, reason if isinstance(reason, str) and reason else "no floor")
    hib = _want(path, f"{where}.higher_is_better", m.get("higher_is_better"), bool)
    identity = _want(path, f"{where}.identity", m.get("identity"), float)
    scale = m.get("scale", "linear")
    if scale not in SCALES:
        raise EvalkitError(f"{path}: {where}.scale must be \"linear\" or \"db\", found {scale!r}")
    identical = _want(path, f"{where}.floor.identical", f.get("identical"), bool)
    value = f.get("value")
    if value is None and not (identical and scale == "db"):
        raise EvalkitError(f"{path}: {where}.floor.value is null, which only an identical dB floor may be")
    if value is not None:
        value = _want(path, f"{where}.floor.value", value, float)
        # A floor on the good side of identity, or at identity while not identical, has no distance to scale.
        worse = value < identity if hib else value > identity
        if not identical and not worse:
            raise EvalkitError(f"{path}: {where}.floor.value {value:g} is not on the bad side of identity "
                               f"{identity:g} ({'higher' if hib else 'lower'} is better), yet identical is false")
    judged = f.get("perturbations_judged") or []
    if not isinstance(judged, list) or not all(isinstance(p, str) for p in judged):
        raise EvalkitError(f"{path}: {where}.floor.perturbations_judged must be a list of names")
    display, source = f.get("display"), f.get("from")
    return NoiseFloor(name, status, "", hib, identity, scale, value, identical,
                      display if isinstance(display, str) and display else
                      f"{value:g}" if value is not None else "identical",
                      source if isinstance(source, str) else None, tuple(judged))


def _want(path: Path, where: str, x: Any, typ: type) -> Any:
    """`x` if it is a `typ` (float: any finite number), else a one-line EvalkitError naming the file and field."""
    if typ is float:
        ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    else:
        ok = isinstance(x, typ)
    if not ok:
        kind = {dict: "a JSON object", str: "a string", bool: "true or false", float: "a number"}[typ]
        raise EvalkitError(f"{path}: {where} must be {kind}, found {'null' if x is None else type(x).__name__}"
                           + (f" {x!r}"[:40] if isinstance(x, (str, int, float)) else ""))
    return float(x) if typ is float else x

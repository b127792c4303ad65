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
from evalkit.check.inputs import is_number, read_json_checked
from evalkit.record_types import CalibrationFile
from evalkit.records import check_record
from evalkit.rundir import RunDir



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
    return Path(given) if given else RunDir(run_root).calibration


def load_floors(path: Path) -> dict[str, Floor | str]:
    """metric -> Floor, or the reason the calibration has none. EvalkitError (exit 2) naming the file and the field
    for anything that is not a calibration evalkit wrote: a wrong type, a NaN, a floor on the wrong side."""
    data = read_json_checked(path, "a calibration")
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise EvalkitError(f"{path}: not a calibration (no 'metrics' table); rerun `evalkit calibrate`")
    check_record(data, CalibrationFile, path)  # the one schema (evalkit/record_types.py); the floors are checked below
    out: dict[str, Floor | str] = {}
    for name, m in data["metrics"].items():
        where = f"metrics.{name}"
        _want(path, where, m, dict)
        f = m.get("floor")
        _want(path, f"{where}.floor", f, dict)
        status = _want(path, f"{where}.floor.status", f.get("status"), str)
        if status != "ok":
            reason = f.get("reason")
            out[name] = reason if isinstance(reason, str) and reason else "no floor"
            continue
        hib = _want(path, f"{where}.higher_is_better", m.get("higher_is_better"), bool)
        identity = _want(path, f"{where}.identity", m.get("identity"), float)
        scale = m.get("scale", "linear")
        if scale not in ("linear", "db"):
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
        display = f.get("display")
        judged = f.get("perturbations_judged") or []
        if not isinstance(judged, list) or not all(isinstance(p, str) for p in judged):
            raise EvalkitError(f"{path}: {where}.floor.perturbations_judged must be a list of names")
        source = f.get("from")
        out[name] = Floor(name, hib, identity, scale, value, identical,
                          display if isinstance(display, str) else f"{value:g}" if value is not None else "identical",
                          source if isinstance(source, str) else None, tuple(judged))
    return out


def _want(path: Path, where: str, x: Any, typ: type) -> Any:
    """`x` if it is a `typ` (float: any number), else a one-line EvalkitError naming the file and the field."""
    ok = is_number(x) if typ is float else isinstance(x, typ) and not (typ is int and isinstance(x, bool))
    if not ok:
        kind = {dict: "a JSON object", str: "a string", bool: "true or false", float: "a number"}[typ]
        raise EvalkitError(f"{path}: {where} must be {kind}, found {'null' if x is None else type(x).__name__}"
                           + (f" {x!r}"[:40] if isinstance(x, (str, int, float)) else ""))
    return float(x) if typ is float else x


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


# Generation settings that do not change the reference's images (warm-up runs are discarded).
_NOT_IMAGES = ("warmup_runs",)


def calibration_differences(path: Path, manifest: dict[str, Any], run_root: Path) -> list[str]:
    """Every setting in which the calibration at `path` differs from the run whose manifest is `manifest`, one line
    each: model, device, each generation setting (height, width, steps, guidance, sequence length, dtype, seeds,
    batch size, ...) and the prompts. When the calibration sits in its own run directory (a baseline's
    calibration.json next to its manifest.json, as the CI job in docs/release-gate.md keeps it), that manifest adds
    the device's name and every prompt's text and seed."""
    cal = read_json_checked(path, "a calibration")
    if not isinstance(cal, dict):
        raise EvalkitError(f"{path}: not a calibration (a JSON object is expected)")
    check_record(cal, CalibrationFile, path)
    diffs: list[str] = []
    model = (manifest.get("model") or {}).get("spec")
    if cal.get("model") != model:
        diffs.append(f"model {cal.get('model')!r} (this run: {model!r})")
    run_device = (manifest.get("config") or {}).get("device") or (manifest.get("device") or {}).get("type") or "cpu"
    if cal.get("device") != run_device:
        diffs.append(f"device {cal.get('device')!r} (this run: {run_device!r})")
    gen = manifest.get("generation") or {}
    cgen = cal.get("generation")
    if not isinstance(cgen, dict):
        raise EvalkitError(f"{path}: generation must be a JSON object, found {type(cgen).__name__}")
    for k in sorted(set(gen) | set(cgen)):
        if k not in _NOT_IMAGES and cgen.get(k) != gen.get(k):
            diffs.append(f"generation.{k} {cgen.get(k)!r} (this run: {gen.get(k)!r})")
    ids = [p.get("id") for p in manifest.get("prompts") or []]
    cal_ids = _calibrated_prompts(cal)
    if cal_ids is not None and set(cal_ids) != set(ids):
        only_c = sorted(set(cal_ids) - set(ids))
        only_r = sorted(set(ids) - set(cal_ids))
        parts = ([f"{len(only_c)} only in the calibration ({_few(only_c)})"] if only_c else []) + \
                ([f"{len(only_r)} only in this run ({_few(only_r)})"] if only_r else [])
        diffs.append(f"prompts ({len(cal_ids)} vs {len(ids)}: {'; '.join(parts)})")
    elif is_number(cal.get("n_prompts")) and cal["n_prompts"] != len(ids):
        diffs.append(f"number of prompts {cal['n_prompts']} (this run: {len(ids)})")
    if path.parent.resolve() != run_root.resolve():  # a calibration of another run: its manifest says more
        diffs += _own_run_differences(path, cal, manifest)
    return diffs


def _calibrated_prompts(cal: dict[str, Any]) -> list[str] | None:
    """The prompt ids the calibration scored (the per-prompt keys of its perturbations), or None if it has none."""
    ids: set[str] = set()
    for m in (cal.get("metrics") or {}).values():
        for e in ((m or {}).get("perturbations") or {}).values() if isinstance(m, dict) else ():
            if isinstance(e, dict) and isinstance(e.get("per_prompt"), dict):
                ids.update(e["per_prompt"])
    return sorted(ids) if ids else None


def _own_run_differences(path: Path, cal: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """Device name and per-prompt text and seed, from the manifest of the run the calibration was made for, when
    it sits next to the calibration (same run_id)."""
    own = path.parent / "manifest.json"
    if not own.is_file():
        return []
    try:
        other = read_json_checked(own, "a manifest")
    except EvalkitError:
        return []
    if not isinstance(other, dict) or other.get("run_id") != cal.get("run_id"):
        return []
    diffs = []
    name, run_name = (other.get("device") or {}).get("name"), (manifest.get("device") or {}).get("name")
    if name != run_name:
        diffs.append(f"device.name {name!r} (this run: {run_name!r})")
    theirs = {p.get("id"): p for p in other.get("prompts") or [] if isinstance(p, dict)}
    mine = {p.get("id"): p for p in manifest.get("prompts") or [] if isinstance(p, dict)}
    for key in ("text", "seed"):
        differ = [i for i in mine if i in theirs and theirs[i].get(key) != mine[i].get(key)]
        if differ:
            diffs.append(f"prompt {key}s for {len(differ)} prompt(s) ({_few(differ)})")
    return diffs


def _few(ids: list[str], k: int = 3) -> str:
    return ", ".join(ids[:k]) + (f", +{len(ids) - k} more" if len(ids) > k else "")

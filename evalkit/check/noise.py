"""The noise floor in check: resolve `{ noise = k }` bounds against calibration.json, put values in floor units,
and name every setting in which a calibration differs from the run it gates.

evalkit/floors.py reads and checks calibration.json (the reader check and report share) and says what a floor and
its multiples are.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from evalkit.check.thresholds import Bound
from evalkit.errors import EvalkitError
from evalkit.floors import NoiseFloor, read_floors
from evalkit.check.inputs import is_number, read_json_checked
from evalkit.record_types import CalibrationFile
from evalkit.records import check_record
from evalkit.rundir import RunDir


def calibration_path(run_root: Path, given: str | Path | None) -> Path:
    return Path(given) if given else RunDir(run_root).calibration


def load_floors(path: Path) -> dict[str, NoiseFloor | str]:
    """metric -> NoiseFloor, or the reason the calibration has none. EvalkitError (exit 2) naming the file and the
    field for anything that is not a calibration evalkit wrote: a wrong type, a NaN, a floor on the wrong side."""
    read_json_checked(path, "a calibration")  # a NaN anywhere, a directory, a file nested too deeply: named
    _, floors = read_floors(path)
    return {name: f if f.ok else f.reason for name, f in floors.items()}


def resolve_bound(bound: Bound, floors: dict[str, NoiseFloor | str] | None, cal: Path) -> Bound:
    """A relative bound with its limit filled in from the floor; exit 2 (EvalkitError) naming the bound's
    file:line when there is no calibration or no floor for its metric."""
    if not bound.is_relative:
        return bound
    spelled = f"{bound.key} = {{ noise = {bound.noise:g} }}"
    if floors is None:
        raise EvalkitError(f"{bound.where}: {spelled} is relative to the noise floor, but there is no calibration "
                           f"({cal} not found); run `evalkit calibrate RUN_DIR` or pass --calibration FILE")
    floor = floors.get(bound.quantity)
    if not isinstance(floor, NoiseFloor):
        why = floor if isinstance(floor, str) else "the calibration has no such metric"
        raise EvalkitError(f"{bound.where}: {spelled}: {cal} has no floor for {bound.quantity} ({why})")
    return dataclasses.replace(bound, limit=floor.limit(bound.noise))  # type: ignore[arg-type]


def floor_cells(bound: Bound, value: float | None, floors: dict[str, NoiseFloor | str] | None) -> tuple[tuple[str, str], str]:
    """(floor cell, margin cell) and a note. Margin: the bound minus the value, in floor units (> 0 passes)."""
    floor = (floors or {}).get(bound.quantity) if bound.is_metric else None
    if not isinstance(floor, NoiseFloor):
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

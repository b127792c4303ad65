"""`evalkit check`: judge one run's summary against a thresholds file.

Every bound becomes one CaseResult. A bound that cannot be judged fails and says why (a skipped metric,
a failed backend, an unscored run): a release gate that passes on missing data is worse than none.
The one exception is `allow_unmeasured = true` for resources the run could not measure (CUDA memory
on a CPU run), which then shows as skipped with the run's reason.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.check import power
from evalkit.check.noise import Floor, calibration_path, check_calibration_matches, floor_cells, load_floors, resolve_bound
from evalkit.check.results import CaseResult, Report
from evalkit.check.thresholds import KNOWN_METRICS, RESOURCES, Bound, Rules, Thresholds, load_thresholds
from evalkit.errors import EvalkitError
from evalkit.io import read_json
from evalkit.rundir import REFERENCE_BACKEND, RunDir, open_run

CHECK_COLUMNS = ("value", "bound", "result")
# With a calibration: the noise floor and the margin to the bound in floor units (docs/release-gate.md).
CHECK_COLUMNS_NOISE = ("value", "bound", "floor", "margin", "result")


@dataclass(frozen=True)
class Measured:
    """A value read from the run, or why there is none (`unmeasured` is true for a null-with-reason resource)."""

    value: float | None
    label: str = ""  # which statistic: "mean", "ci_high", ...
    why_missing: str = ""
    unmeasured: bool = False  # excusable by allow_unmeasured
    note: str = ""
    sd: float | None = None  # per-prompt standard deviation (ddof=1), for sample-size guidance
    n: int | None = None


def load_run_for_check(run_dir: str | Path) -> tuple[RunDir, dict[str, Any], dict[str, Any]]:
    """Open a run and its summary.json; exit 2 (EvalkitError) when the files a check needs are missing."""
    try:
        rd, manifest = open_run(run_dir)
    except AttributeError:  # open_run reads fields off a manifest that is not an object
        raise EvalkitError(f"{Path(run_dir) / 'manifest.json'}: manifest must be a JSON object") from None
    _shape(rd.manifest, "manifest", manifest, {"backends": list, "prompts": list, "model": dict, "device": dict,
                                                "generation": dict, "versions": dict})
    if not rd.summary.exists():
        raise EvalkitError(f"{rd.summary}: not found; the run has no summary yet (run `evalkit score {rd.root}` "
                           f"or rebuild it with evalkit.rundir.write_summary)")
    summary = read_json(rd.summary)
    if not isinstance(summary, dict):
        raise EvalkitError(f"{rd.summary}: must be a JSON object, found {type(summary).__name__}; "
                           f"rebuild it with evalkit.rundir.write_summary")
    if not isinstance(summary.get("backends"), dict):
        raise EvalkitError(f"{rd.summary}: no 'backends' table; rebuild it with evalkit.rundir.write_summary")
    for name, entry in summary["backends"].items():
        where = f"backends.{name}"
        _shape(rd.summary, where, entry, {"metrics": dict, "memory": dict, "latency": dict, "image_flags": dict,
                                          "status": str})
        for metric, m in (entry.get("metrics") or {}).items():
            _shape(rd.summary, f"{where}.metrics.{metric}", m, {})
    return rd, manifest, summary


def _shape(path: Path, where: str, obj: Any, fields: dict[str, type]) -> None:
    """A one-line error naming the file and the field when a record has the wrong shape (never a traceback)."""
    if not isinstance(obj, dict):
        raise EvalkitError(f"{path}: {where} must be a JSON object, found {type(obj).__name__}")
    for key, typ in fields.items():
        if obj.get(key) is not None and not isinstance(obj[key], typ):
            raise EvalkitError(f"{path}: {where}.{key} must be a JSON {'object' if typ is dict else typ.__name__}, "
                               f"found {type(obj[key]).__name__}")


def run_metric_names(summary: dict[str, Any]) -> tuple[set[str], dict[str, bool]]:
    """Metric names present in the run, and their higher_is_better where the run states it."""
    names: set[str] = set()
    direction: dict[str, bool] = {}
    for entry in summary["backends"].values():
        for name, m in (entry.get("metrics") or {}).items():
            names.add(name)
            if isinstance(m, dict) and isinstance(m.get("higher_is_better"), bool):
                direction[name] = m["higher_is_better"]
    return names, direction


def check_run(run_dir: str | Path, thresholds_path: str | Path, use_ci: bool = False,
              calibration: str | Path | None = None) -> Report:
    """Judge `run_dir` against `thresholds_path`. Raises EvalkitError when the check cannot run.

    `calibration`: a calibration.json (default RUN_DIR/calibration.json when it exists); needed by
    `{ noise = k }` bounds, and adds the floor and margin columns when present."""
    rd, manifest, summary = load_run_for_check(run_dir)
    backends = list(manifest.get("backends") or summary["backends"].keys())
    reference = summary.get("reference_backend") or manifest.get("reference_backend") or REFERENCE_BACKEND
    metric_names, direction = run_metric_names(summary)
    th = load_thresholds(thresholds_path, backends, metric_names, direction)

    rules = [r for b in backends if (r := th.rules_for(b, reference)) is not None]
    cal = calibration_path(rd.root, calibration)
    if calibration is not None and not cal.is_file():
        raise EvalkitError(f"--calibration {cal}: file not found (write one with `evalkit calibrate RUN_DIR`)")
    floors = load_floors(cal) if cal.is_file() else None
    rules = [dataclasses.replace(r, bounds=tuple(resolve_bound(b, floors, cal) for b in r.bounds)) for r in rules]
    if not rules:
        raise EvalkitError(f"{th.path}: no bound applies to any backend of this run (backends: {', '.join(backends)}; "
                           f"[default] skips the reference {reference!r})")
    wants_metrics = any(b.is_metric for r in rules for b in r.bounds)
    if wants_metrics and not rd.metrics_dir.is_dir():
        raise EvalkitError(f"{rd.root}: the run has not been scored (no metrics/), but {th.path} bounds quality "
                           f"metrics; run `evalkit score {rd.root}` first")

    report = Report("check", f"evalkit check: {manifest.get('run_id') or rd.root.name}",
                    CHECK_COLUMNS_NOISE if floors is not None else CHECK_COLUMNS)
    _context(report, rd, manifest, summary, th, use_ci)
    report.warnings.extend(th.warnings)
    if floors is not None:
        report.context.append(("noise floor", f"{cal} ({_floor_summary(floors)})"))
        report.properties["calibration"] = str(cal)
        report.warnings.extend(check_calibration_matches(cal, manifest))
    model = manifest.get("model") or {}
    if model.get("random_weights") or model.get("quality_meaningful") is False:
        report.warnings.append(f"model {model.get('spec')!r} has random weights: its images carry no quality "
                               f"information, so quality bounds cannot pass ({model.get('note') or 'see manifest.model'})")

    for r in rules:
        entry = summary["backends"].get(r.backend)
        report.cases.extend(_judge_backend(r, entry, summary, reference, rd, use_ci, floors, report))
    return report


def _floor_summary(floors: dict[str, Floor | str]) -> str:
    """Each floor and where it comes from: a floor over fewer perturbations than expected is visible at once
    (`evalkit calibrate --perturbations P` writes the floor over P alone)."""
    ok = [f for f in floors.values() if isinstance(f, Floor)]
    judged = sorted({p for f in ok for p in f.judged})
    over = f"over {', '.join(judged)}: " if judged else ""
    return over + ", ".join(f"{f.metric} {f.display}" + (f" ({f.source})" if f.source and not f.identical else "")
                            for f in ok)


def _sample_size(report: Report, backend: str, bound: Bound, m: Measured) -> None:
    """Sample-size guidance for one judged metric bound: a JUnit property always, a warning when n cannot
    resolve the bound (the gate's verdict is then a coin the prompts flipped)."""
    g = power.guidance(m.sd, m.n, m.value - bound.limit) if m.value is not None else None
    if g is None:
        return
    prefix = f"sample_size.{backend}.{bound.key}"
    report.properties.update({f"{prefix}.n": str(g.n), f"{prefix}.detectable_difference": f"{g.detectable:.6g}",
                              f"{prefix}.prompts_needed": "never (gap 0)" if g.needed is None else str(g.needed),
                              f"{prefix}.resolvable": str(g.resolvable).lower()})
    report.properties.setdefault("sample_size.assumptions", power.STATED)
    if not g.resolvable:
        report.warnings.append(f"{backend} {bound.key}: " + g.text(f"its bound {_fmt(bound.limit)} from the observed "
                                                                      f"{_fmt(m.value)}"))


def _context(report: Report, rd: RunDir, manifest: dict, summary: dict, th: Thresholds, use_ci: bool) -> None:
    device = manifest.get("device") or {}
    gen = manifest.get("generation") or {}
    model = manifest.get("model") or {}
    report.context += [
        ("run", str(rd.root)),
        ("model", f"{model.get('spec')} ({model.get('kind')})"),
        ("device", f"{device.get('type')} {device.get('name') or ''}".strip()),
        ("images", f"{summary.get('n_prompts')} prompts, {gen.get('width')}x{gen.get('height')}, "
                   f"{gen.get('num_inference_steps')} steps"),
        ("thresholds", str(th.path)),
        ("judged on", "the CI bound (ci_high for _max, ci_low for _min)" if use_ci else "the mean (point estimate)"),
    ]
    report.properties.update({"run_id": str(manifest.get("run_id")), "thresholds": str(th.path),
                              "use_ci": str(use_ci).lower(), "reference_backend": str(summary.get("reference_backend"))})


def _judge_backend(rules: Rules, entry: dict[str, Any] | None, summary: dict[str, Any], reference: str,
                   rd: RunDir, use_ci: bool, floors: dict[str, Floor | str] | None = None,
                   report: Report | None = None) -> list[CaseResult]:
    b = rules.backend
    out: list[CaseResult] = []
    if floors is not None:
        out = _NoiseCells(floors)  # type: ignore[assignment]
    if rules.ignored_in:
        msg = f"not gated: ignore = true in [{rules.ignored_in}]"
        out.append(CaseResult(b, "ignore", "skipped", ("—", "—", "skipped"), msg))
        return out
    status = (entry or {}).get("status", "missing")
    reason = (entry or {}).get("reason") or ("not in summary.json" if entry is None else "no reason recorded")
    ok = status == "ok"
    if rules.require_status_ok:
        if ok:
            out.append(CaseResult(b, "require_status_ok", "pass", ("ok", "ok", "pass")))
        else:
            msg = f"generation status is {status!r}: {reason}"
            out.append(CaseResult(b, "require_status_ok", "fail", (status, "ok", "FAIL"), msg, _log_hint(rd, b)))
    for bound in rules.bounds:
        bound_text = f"{bound.symbol()} {_fmt(bound.limit)}" + (f" ({bound.noise:g}× floor)" if bound.is_relative else "")
        if isinstance(out, _NoiseCells):
            out.bound = bound
        if not ok:
            # Every bound of a failed backend fails too: its numbers do not exist, and the gate must not pass.
            msg = f"cannot judge {bound.quantity}: backend {status}: {reason}"
            out.append(CaseResult(b, bound.key, "fail", ("—", bound_text, "FAIL"), msg, _log_hint(rd, b)))
            continue
        m = _measure_metric(bound, b, entry, rd, use_ci) if bound.is_metric else _measure_resource(bound, entry, summary, reference)
        if m.value is None:
            if m.unmeasured and rules.allow_unmeasured:
                msg = f"{m.why_missing}; allowed by allow_unmeasured = true"
                out.append(CaseResult(b, bound.key, "skipped", ("not measured", bound_text, "skipped"), msg))
            else:
                hint = " (set allow_unmeasured = true to accept this)" if m.unmeasured else ""
                msg = f"{m.why_missing}{hint}"
                out.append(CaseResult(b, bound.key, "fail", ("—", bound_text, "FAIL"), msg))
            continue
        if isinstance(out, _NoiseCells):
            out.value = m.value
        if report is not None and bound.is_metric:
            _sample_size(report, b, bound, m)
        passed = _within(m.value, bound)
        value_text = _fmt(m.value) + (f" ({m.label})" if m.label else "")
        if passed:
            out.append(CaseResult(b, bound.key, "pass", (value_text, bound_text, "pass"), "", m.note))
        else:
            verb = "above the maximum" if bound.kind == "max" else "below the minimum"
            msg = (f"{bound.quantity} {m.label + ' ' if m.label else ''}{_fmt(m.value)} is {verb} "
                   f"{_fmt(bound.limit)} ({bound.key}, [{_table_label(bound.section)}])")
            detail = "\n".join(x for x in [msg, m.note] if x)
            out.append(CaseResult(b, bound.key, "fail", (value_text, bound_text, "FAIL"), msg, detail))
    return out


class _NoiseCells(list):
    """The cases of one backend, with the floor and margin cells put in before the result as each is added."""

    def __init__(self, floors: dict[str, Floor | str]) -> None:
        super().__init__()
        self.floors, self.bound, self.value = floors, None, None

    def append(self, case: CaseResult) -> None:  # type: ignore[override]
        cells, note = (("—", "—"), "") if self.bound is None else floor_cells(self.bound, self.value, self.floors)
        detail = "\n".join(x for x in (case.detail, note) if x)
        super().append(dataclasses.replace(case, cells=case.cells[:2] + cells + case.cells[2:], detail=detail))
        self.bound, self.value = None, None


def _within(value: float, bound: Bound) -> bool:
    if math.isnan(value):
        return False  # a NaN metric is a broken backend, never a pass
    return value <= bound.limit if bound.kind == "max" else value >= bound.limit


def _measure_metric(bound: Bound, backend: str, entry: dict[str, Any], rd: RunDir, use_ci: bool) -> Measured:
    metrics = entry.get("metrics") or {}
    name = bound.quantity
    m = metrics.get(name)
    if m is None:
        if not metrics:
            return Measured(None, why_missing=f"{name} not scored: the run has no metrics for {backend} "
                                              f"(no {rd.relative(rd.metrics_record(backend))}; run `evalkit score`)")
        return Measured(None, why_missing=f"{name} not scored for this backend (scored: {', '.join(sorted(metrics))})")
    st = m.get("status", "ok")
    if st != "ok":
        return Measured(None, why_missing=f"{name} was {st} in the run: {m.get('reason') or 'no reason recorded'}")
    point_key = "mean" if m.get("mean") is not None else "value"
    point = m.get(point_key)
    if not isinstance(point, (int, float)) or isinstance(point, bool):
        return Measured(None, why_missing=f"{name} has no value in the run ({point_key} is {point!r})")
    n = m.get("n")
    note = f"n={n}" if n is not None else ""
    sd = _num(m.get("std"))
    n_int = n if isinstance(n, int) and not isinstance(n, bool) else None
    if not use_ci:
        return Measured(float(point), point_key, note=note, sd=sd, n=n_int)
    ci_key = "ci_high" if bound.kind == "max" else "ci_low"
    ci = m.get(ci_key)
    if isinstance(ci, (int, float)) and not isinstance(ci, bool):
        return Measured(float(ci), ci_key, note=f"{note}, {point_key}={_fmt(point)}".lstrip(", "), sd=sd, n=n_int)
    # FID/KID are one number over the whole set; there is no CI to judge, so say the point value is used.
    return Measured(float(point), f"{point_key}; no CI", note=f"{name} has no {ci_key}; judged on its {point_key}")


def _dig(entry: dict[str, Any] | None, path: tuple[str, ...]) -> Any:
    cur: Any = entry
    for k in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(k)
    return cur


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _measure_resource(bound: Bound, entry: dict[str, Any], summary: dict[str, Any], reference: str) -> Measured:
    res = RESOURCES[bound.quantity]
    if res.name == "latency_ratio_to_bf16":
        mine = _num(_dig(entry, ("latency", "median_s")))
        ref_entry = summary["backends"].get(reference)
        ref = _num(_dig(ref_entry, ("latency", "median_s")))
        if mine is None:
            return Measured(None, why_missing="not measured (latency.median_s is null)", unmeasured=True)
        if ref is None or ref <= 0:
            why = (f"reference {reference!r} {ref_entry.get('status')}: {ref_entry.get('reason')}"
                   if ref_entry and ref_entry.get("status") != "ok" else f"reference {reference!r} has no latency")
            return Measured(None, why_missing=f"no latency ratio: {why}")
        return Measured(mine / ref, note=f"{_fmt(mine)} s / {reference} {_fmt(ref)} s")
    if res.name == "flagged_images":
        flags = entry.get("image_flags") or {}
        return Measured(float(sum(v for v in flags.values() if isinstance(v, int))),
                        note=", ".join(f"{k}: {v}" for k, v in sorted(flags.items())))
    raw = _dig(entry, res.path)
    value = _num(raw)
    if value is None:
        why = _dig(entry, res.reason_path) if res.reason_path else None
        if why is None and res.path[0] == "memory":
            why = f"device {_dig(entry, ('memory', 'device')) or 'unknown'}"
        field = ".".join(res.path)
        return Measured(None, why_missing=f"not measured ({field} is null: {why or 'no reason recorded'})",
                        unmeasured=True)
    return Measured(value)


def _log_hint(rd: RunDir, backend: str) -> str:
    log = rd.log(backend)
    return f"worker log: {log}" if log.exists() else ""


def _table_label(section: str) -> str:
    return "default" if section == "default" else 'backends."' + section.split(".", 1)[1] + '"'


def _fmt(x: float) -> str:
    """Four significant digits: enough to see why 0.2501 > 0.25, short enough for a PR comment."""
    if x is None:
        return "—"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return f"{x:.4g}"


__all__ = ["check_run", "load_run_for_check", "run_metric_names", "KNOWN_METRICS", "CHECK_COLUMNS"]

"""`evalkit check`: judge one run's summary against a thresholds file.

Every bound becomes one CaseResult whose outcome is a value (evalkit.check.results). A bound that cannot be judged
fails and says why (a skipped metric, a failed backend, an unscored run): a release gate that passes on missing
data is worse than none. The exceptions are what the thresholds file allows by name: `allow_unmeasured = true` for
resources the run could not measure (CUDA memory on a CPU run), `allow_skipped_backend = true` for a backend generate
skipped as unable to run here; both then show as skipped with the run's reason.

Nothing leaves the verdict silently: a backend no bound covers, a thresholds section for a backend the run lacks
and a prompt missing from a generation record are each stated in every output, and fail with --require-coverage
or --require-backends. Before judging, every input is validated (exit 2 on any malformed file) and every image the
judged metrics rest on is checked against its generation record (evalkit.check.inputs).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from evalkit.check import power
from evalkit.check.inputs import RunInputs, few, load_run, verify_images
from evalkit.check.measure import Measured, fmt, measure_metric, measure_resource, within
from evalkit.check.noise import calibration_differences, calibration_path, floor_cells, load_floors, resolve_bound
from evalkit.check.options import CheckOptions
from evalkit.check.results import BackendInfo, CaseResult, Outcome, Report
from evalkit.check.thresholds import KNOWN_METRICS, Bound, Rules, Thresholds, load_thresholds
from evalkit.errors import EvalkitError
from evalkit.floors import NoiseFloor
from evalkit.rundir import RunDir

CHECK_COLUMNS = ("value", "bound", "result")
# With a calibration: the noise floor and the margin to the bound in floor units (docs/release-gate.md).
CHECK_COLUMNS_NOISE = ("value", "bound", "floor", "margin", "result")


def load_run_for_check(run_dir: str | Path) -> tuple[RunDir, dict[str, Any], dict[str, Any]]:
    """Open a run and its summary.json; exit 2 (EvalkitError) when the files a check needs are missing or malformed."""
    run = load_run(run_dir)
    return run.rd, run.manifest, run.summary


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


def judge_check(opts: CheckOptions) -> Report:
    """`check_run` with the options of `evalkit check` / `evalkit.check` (the one place they meet it)."""
    return check_run(opts.run_dir, opts.thresholds, use_ci=opts.use_ci, calibration=opts.calibration,
                     require_coverage=opts.require_coverage, require_backends=opts.require_backends,
                     allow_calibration_mismatch=opts.allow_calibration_mismatch, verify=opts.verify)


def check_run(run_dir: str | Path, thresholds_path: str | Path, use_ci: bool = False,
              calibration: str | Path | None = None, *, require_coverage: bool = False,
              require_backends: bool = False, allow_calibration_mismatch: bool = False,
              verify: bool = False) -> Report:
    """Judge `run_dir` against `thresholds_path`. Raises EvalkitError (exit 2) when the check cannot run.

    `calibration`: a calibration.json (default RUN_DIR/calibration.json when it exists); needed by
    `{ noise = k }` bounds, and adds the floor and margin columns when present. One made under other settings
    than the run is refused, every differing setting named, unless `allow_calibration_mismatch`.
    `require_coverage`: a non-reference backend no bound covers, or a judged backend missing prompts, fails.
    `require_backends`: a thresholds section for a backend the run lacks fails. `verify`: hash every image."""
    run = load_run(run_dir)
    rd, manifest, summary = run.rd, run.manifest, run.summary
    metric_names, direction = run_metric_names(summary)
    th = load_thresholds(thresholds_path, run.backends, metric_names, direction)
    cal = calibration_path(rd.root, calibration)
    rules, floors, mismatch = _resolved_rules(run, th, cal, calibration is not None, allow_calibration_mismatch)
    judged_metrics = [b for b, r in rules.items() if any(x.is_metric for x in r.bounds) and not r.ignored_in]
    if judged_metrics and not rd.metrics_dir.is_dir():
        raise EvalkitError(f"{rd.root}: the run has not been scored (no metrics/), but {th.path} bounds quality "
                           f"metrics; run `evalkit score {rd.root}` first")
    # The metrics describe the files scored; an image replaced since then makes them describe nothing (exit 2).
    n_verified = verify_images(run, judged_metrics, full=verify) if judged_metrics else 0

    report = Report("check", f"evalkit check: {manifest.get('run_id') or rd.root.name}",
                    CHECK_COLUMNS_NOISE if floors is not None else CHECK_COLUMNS)
    _context(report, rd, manifest, summary, th, use_ci)
    if judged_metrics:
        how = "every file hashed" if verify else "stat fingerprint, else hash"
        report.context.append(("images verified", f"{n_verified} against their generation records ({how})"))
    report.warnings.extend(th.warnings)
    if floors is not None:
        report.context.append(("noise floor", f"{cal} ({_floor_summary(floors)})"))
        report.properties["calibration"] = str(cal)
        if mismatch:
            report.warnings.append(f"{cal}: calibrated under other settings (--allow-calibration-mismatch): "
                                   + "; ".join(mismatch))
    model = manifest.get("model") or {}
    if model.get("random_weights") or model.get("quality_meaningful") is False:
        report.warnings.append(f"model {model.get('spec')!r} has random weights: its images carry no quality "
                               f"information, so quality bounds cannot pass "
                               f"({model.get('note') or 'see manifest.model'})")
    report.backend_info = {b: BackendInfo(b, run.partial_reason(b), tuple(run.missing_prompts(b)))
                           for b in run.backends}

    _judge_cases(report, run, th, rules, floors, use_ci=use_ci, require_coverage=require_coverage,
                 require_backends=require_backends)
    width = len(report.columns) - 1  # every case fills every data column, so no renderer shifts a column
    report.cases = [c if len(c.cells) == width else dataclasses.replace(c, cells=(c.cells + ("—",) * width)[:width])
                    for c in report.cases]
    return report


def _resolved_rules(run: RunInputs, th: Thresholds, cal: Path, cal_given: bool,
                    allow_mismatch: bool) -> tuple[dict[str, Rules], dict[str, NoiseFloor | str] | None, list[str]]:
    """(each backend's rules with its noise-relative bounds resolved against the calibration at `cal`, the noise
    floors or None without a calibration, how the calibration's settings differ from the run's).

    Refused (exit 2) before anything is judged: a calibration asked for (`cal_given`) that is not there, a file no
    bound of which applies to the run, and a calibration made under other settings unless `allow_mismatch`."""
    rd, backends, reference = run.rd, run.backends, run.reference
    rules = {b: r for b in backends if (r := th.rules_for(b, reference)) is not None}
    if cal_given and not cal.is_file():
        raise EvalkitError(f"--calibration {cal}: file not found (write one with `evalkit calibrate RUN_DIR`)")
    floors = load_floors(cal) if cal.is_file() else None
    rules = {b: dataclasses.replace(r, bounds=tuple(resolve_bound(x, floors, cal) for x in r.bounds))
             for b, r in rules.items()}
    if not rules:
        raise EvalkitError(f"{th.path}: no bound applies to any backend of this run (backends: {', '.join(backends)}; "
                           f"[default] skips the reference {reference!r})")
    mismatch = calibration_differences(cal, run.manifest, rd.root) if floors is not None else []
    if mismatch and not allow_mismatch:
        raise EvalkitError(f"{cal}: the calibration was made under other settings than this run, so its noise floor "
                           f"says nothing about it: {'; '.join(mismatch)}. Calibrate this run (`evalkit calibrate "
                           f"{rd.root}`), or pass --allow-calibration-mismatch to use it anyway")
    return rules, floors, mismatch


def _judge_cases(report: Report, run: RunInputs, th: Thresholds, rules: dict[str, Rules],
                 floors: dict[str, NoiseFloor | str] | None, *, use_ci: bool, require_coverage: bool,
                 require_backends: bool) -> None:
    """Every case, backend by backend in the run's order (broken images, then its bounds, or why none applies),
    then what the gate could not judge: prompts missing from a record, sections for backends the run lacks."""
    summary, backends, reference = run.summary, run.backends, run.reference
    for b in backends:
        broken = _broken_case(b, summary["backends"].get(b), run, th, rules.get(b))
        if broken is not None:
            report.cases.append(broken)
        if b in rules:
            entry = summary["backends"].get(b)
            report.cases.extend(_judge_backend(rules[b], entry, summary, reference, run, use_ci, floors, report))
        elif b != reference:
            report.cases.append(_uncovered(b, th, require_coverage))
    _missing_prompts(report, run, rules, require_coverage)
    for name, where in th.absent.items():
        report.cases.append(_absent(name, where, backends, require_backends))
    # Also as warnings: the only lines `-q` prints, so a CI log shows what the gate did not judge.
    uncovered = [c.backend for c in report.cases if c.name == "coverage"]
    if uncovered:
        report.warnings.append(f"no bound covers {len(uncovered)} backend(s) of this run, so they are not judged: "
                               f"{', '.join(uncovered)}"
                               + ("" if require_coverage else " (--require-coverage fails them)"))
    if th.absent:
        report.warnings.append(f"{th.path.name} bounds backend(s) this run does not have, not judged: "
                               f"{', '.join(th.absent)}"
                               + ("" if require_backends else " (--require-backends fails them)"))


def _broken_case(backend: str, entry: dict[str, Any] | None, run: RunInputs, th: Thresholds,
                 rules: Rules | None) -> CaseResult | None:
    """Broken images (evalkit.tripwires) fail a backend whatever its other bounds, reference included; `broken_max`
    relaxes it. None: nothing to judge (not generated, `ignore = true`, or nothing broken and no broken_max that
    applies to it: a clean run's outputs gain no testcase)."""
    from evalkit import tripwires

    if entry is None or entry.get("status") != "ok" or (rules is not None and rules.ignored_in):
        return None
    listed = entry.get("broken") if "broken" in entry else tripwires.recorded_broken(run.generation(backend), None)
    listed = [e for e in listed or [] if isinstance(e, dict)]
    n = tripwires.count_broken(listed, int(entry.get("n_images") or 0)) if listed else 0
    bound = th.broken_bound(backend)
    if n == 0 and (bound is None or (bound.section == "default" and backend == run.reference)):
        return None  # nothing broken and no broken_max bounds it: no testcase (every other output stays as it was)
    limit = bound.limit if bound is not None else 0.0
    where = f"broken_max, [{_table_label(bound.section)}]" if bound is not None else "no broken_max: limit 0"
    cells = (str(n), f"≤ {fmt(limit)}")
    if n <= limit:
        note = f"{n} broken image(s) allowed by {where}: {tripwires.describe(listed)}" if n else ""
        return CaseResult(backend, "broken", Outcome.PASS, cells, "", note)
    msg = f"{n} broken image(s) ({where}): {tripwires.describe(listed)}"
    return CaseResult(backend, "broken", Outcome.FAIL, cells, msg, "\n".join(
        [msg] + [f"{e.get('file') or backend}: {e.get('tripwire')}: {tripwires.all_reasons(e)}" for e in listed]))


def _uncovered(backend: str, th: Thresholds, required: bool) -> CaseResult:
    """A non-reference backend no bound of the file covers: said in every output; a failure when required."""
    msg = (f"no bound in {th.path.name} applies to {backend} ([default] has no bound and it has no "
           f"[backends.\"{backend}\"] section): it is not judged")
    cells = ("—", "—")
    if required:
        return CaseResult(backend, "coverage", Outcome.FAIL, cells, msg + " (--require-coverage)")
    return CaseResult(backend, "coverage", Outcome.SKIPPED, cells, msg + "; --require-coverage makes this a failure")


def _absent(backend: str, where: str, backends: list[str], required: bool) -> CaseResult:
    msg = f"{where}: [backends.\"{backend}\"] bounds a backend this run does not have (the run has: {', '.join(backends)})"
    if required:
        return CaseResult(backend, "in_run", Outcome.FAIL, ("absent", "in run"), msg + " (--require-backends)")
    return CaseResult(backend, "in_run", Outcome.SKIPPED, ("absent", "in run"),
                      msg + "; not judged (--require-backends makes this a failure)")


def _missing_prompts(report: Report, run: RunInputs, rules: dict[str, Rules], required: bool) -> None:
    """A generated backend whose record lacks prompts of the manifest is judged on fewer prompts: never silently."""
    total = len(run.prompt_ids())
    ref_missing = run.missing_prompts(run.reference)
    for b, r in rules.items():
        info = report.backend_info.get(b)
        if r.ignored_in or info is None or not info.missing_prompts:
            continue
        msg = (f"generation/{b}.json has no image for {len(info.missing_prompts)} of the manifest's {total} prompts "
               f"({few(list(info.missing_prompts))}): its bounds are judged on the rest")
        report.warnings.append(f"{b}: {msg}")
        if required:
            report.cases.append(CaseResult(b, "prompts", Outcome.FAIL, (f"{total - len(info.missing_prompts)}/{total}",
                                                                         f"{total}/{total}"), msg + " (--require-coverage)"))
    if ref_missing and any(any(x.is_metric for x in r.bounds) for r in rules.values()):
        report.warnings.append(f"the reference {run.reference}: generation/{run.reference}.json has no image for "
                               f"{len(ref_missing)} of {total} prompts ({few(ref_missing)}): every quality metric is "
                               f"over the rest")


def _floor_summary(floors: dict[str, NoiseFloor | str]) -> str:
    """Each floor and where it comes from: a floor over fewer perturbations than expected is visible at once
    (`evalkit calibrate --perturbations P` writes the floor over P alone)."""
    ok = [f for f in floors.values() if isinstance(f, NoiseFloor)]
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
        report.warnings.append(f"{backend} {bound.key}: " + g.text(f"its bound {fmt(bound.limit)} from the observed "
                                                                      f"{fmt(m.value)}"))


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
                   run: RunInputs, use_ci: bool, floors: dict[str, NoiseFloor | str] | None = None,
                   report: Report | None = None) -> list[CaseResult]:
    b, rd = rules.backend, run.rd
    out: list[CaseResult] = _NoiseCells(floors) if floors is not None else []
    if rules.ignored_in:
        out.append(CaseResult(b, "ignore", Outcome.SKIPPED, ("—", "—"), f"not gated: ignore = true in [{rules.ignored_in}]"))
        return out
    status = (entry or {}).get("status", "missing")
    reason = (entry or {}).get("reason") or ("not in summary.json" if entry is None else "no reason recorded")
    if status == "skipped" and rules.allow_skipped_backend:
        # Generate could not run it here (the device, a missing library): one visible skipped case, no bound judged.
        out.append(CaseResult(b, "status", Outcome.SKIPPED, ("skipped", "ok"),
                              f"generation skipped: {reason}; allowed by allow_skipped_backend = true"))
        return out
    ok = status == "ok"
    if rules.require_status_ok:
        if ok:
            out.append(CaseResult(b, "require_status_ok", Outcome.PASS, ("ok", "ok")))
        else:
            out.append(CaseResult(b, "require_status_ok", Outcome.FAIL, (status, "ok"),
                                  f"generation status is {status!r}: {reason}", _log_hint(rd, b)))
    n_prompts = len(run.prompt_ids())
    for bound in rules.bounds:
        if bound.quantity == "broken":
            continue  # judged for every backend by _broken_case
        bound_text = f"{bound.symbol()} {fmt(bound.limit)}" + (f" ({bound.noise:g}× floor)" if bound.is_relative else "")
        if isinstance(out, _NoiseCells):
            out.bound = bound
        if not ok:
            # Every bound of a failed backend fails too: its numbers do not exist, and the gate must not pass.
            out.append(CaseResult(b, bound.key, Outcome.FAIL, ("—", bound_text),
                                  f"cannot judge {bound.quantity}: backend {status}: {reason}", _log_hint(rd, b)))
            continue
        m = (measure_metric(bound, b, entry, rd, use_ci, n_prompts) if bound.is_metric
             else measure_resource(bound, b, entry, summary, reference, rd.summary))
        if m.value is None:
            if m.unmeasured and rules.allow_unmeasured:
                out.append(CaseResult(b, bound.key, Outcome.SKIPPED, ("not measured", bound_text),
                                      f"{m.why_missing}; allowed by allow_unmeasured = true"))
            else:
                hint = " (set allow_unmeasured = true to accept this)" if m.unmeasured else ""
                out.append(CaseResult(b, bound.key, Outcome.FAIL, ("—", bound_text), f"{m.why_missing}{hint}"))
            continue
        if isinstance(out, _NoiseCells):
            out.value = m.value
        if report is not None and bound.is_metric:
            _sample_size(report, b, bound, m)
        value_text = fmt(m.value) + (f" ({m.label})" if m.label else "")
        if within(m.value, bound):
            out.append(CaseResult(b, bound.key, Outcome.PASS, (value_text, bound_text), "", m.note))
        else:
            verb = "above the maximum" if bound.kind == "max" else "below the minimum"
            msg = (f"{bound.quantity} {m.label + ' ' if m.label else ''}{fmt(m.value)} is {verb} "
                   f"{fmt(bound.limit)} ({bound.key}, [{_table_label(bound.section)}])")
            out.append(CaseResult(b, bound.key, Outcome.FAIL, (value_text, bound_text), msg,
                                  "\n".join(x for x in [msg, m.note] if x)))
    return out


class _NoiseCells(list):
    """The cases of one backend, with the floor and margin cells put after value and bound as each is added."""

    def __init__(self, floors: dict[str, NoiseFloor | str]) -> None:
        super().__init__()
        self.floors, self.bound, self.value = floors, None, None

    def append(self, case: CaseResult) -> None:  # type: ignore[override]
        cells, note = (("—", "—"), "") if self.bound is None else floor_cells(self.bound, self.value, self.floors)
        detail = "\n".join(x for x in (case.detail, note) if x)
        super().append(dataclasses.replace(case, cells=case.cells[:2] + cells + case.cells[2:], detail=detail))
        self.bound, self.value = None, None


def _log_hint(rd: RunDir, backend: str) -> str:
    log = rd.log(backend)
    return f"worker log: {log}" if log.exists() else ""


def _table_label(section: str) -> str:
    return "default" if section == "default" else 'backends."' + section.split(".", 1)[1] + '"'


__all__ = ["check_run", "load_run_for_check", "run_metric_names", "KNOWN_METRICS", "CHECK_COLUMNS"]

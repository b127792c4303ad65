"""`evalkit compare BASE CANDIDATE`: what changed between two runs, and whether it is more than seed noise.

Quality: per backend and metric, the candidate's per-prompt values minus the base's, paired by prompt id,
with a percentile bootstrap over prompts for the CI of the mean delta (evalkit.check.bootstrap). A change is
significant when the (1 - alpha) CI excludes zero, and a regression when it is significant in the worse direction
(`higher_is_better`). Set-level metrics (FID, KID) have no per-prompt values: their delta is shown, untested.

Resources: ratios of latency and memory, flagged past a tolerance, and only when both runs ran on the same
device (a ratio across different hardware says nothing about the code).

Every case carries a `Finding` (evalkit.check.results); a regression is `Finding.is_regression`, failing with
--fail-on-regression. A backend the candidate lacks is a regression too.

Runs that differ in what was generated (prompts, seeds, resolution, steps, guidance, model), or whose generation
records lack prompts of the manifest, are refused: their deltas would measure the setup, not the change. `--force`
compares anyway and says so everywhere. Both runs' images are checked against their generation records first.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from evalkit.check import power
from evalkit.check.bootstrap import MIN_PROMPTS_FOR_SIGNIFICANCE, BootstrapResult, format_p, paired_bootstrap
from evalkit.check.inputs import RunInputs, few, load_run, number_or_none, verify_images
from evalkit.check.measure import dig, fmt, num
from evalkit.check.options import CompareOptions
from evalkit.check.results import BackendInfo, CaseResult, Finding, Outcome, Report
from evalkit.check.thresholds import known_metrics
from evalkit.errors import EvalkitError
from evalkit.rundir import REFERENCE_BACKEND

COMPARE_COLUMNS = ("base", "candidate", "delta", "CI", "p", "verdict")
_p = format_p  # the name tests and older callers use

# (name, path in the summary's backend entry, is-memory). Memory is deterministic enough for a tolerance;
# latency is noisy, hence its larger default tolerance.
RESOURCE_ROWS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("latency_median_s", ("latency", "median_s"), False),
    ("peak_memory_reserved_gib", ("memory", "peak_reserved_gib"), True),
    ("peak_memory_allocated_gib", ("memory", "peak_allocated_gib"), True),
    ("memory_after_load_reserved_gib", ("memory", "after_load_reserved_gib"), True),
    ("memory_after_load_allocated_gib", ("memory", "after_load_allocated_gib"), True),
    ("load_peak_memory_reserved_gib", ("memory", "load_peak_reserved_gib"), True),
)

# Generation settings whose difference changes the images themselves.
GENERATION_KEYS = ("height", "width", "num_inference_steps", "guidance_scale", "max_sequence_length",
                   "base_seed", "generator_device", "dtype")
MODEL_KEYS = ("spec", "kind", "random_weights")

__all__ = ["compare_runs", "comparability", "paired_bootstrap", "BootstrapResult", "MIN_PROMPTS_FOR_SIGNIFICANCE",
           "COMPARE_COLUMNS"]


def comparability(base_m: dict[str, Any], cand_m: dict[str, Any]) -> list[str]:
    """Every difference that makes two runs' images not comparable, one readable line each."""
    diffs: list[str] = []
    bp = {p["id"]: p for p in base_m.get("prompts", [])}
    cp = {p["id"]: p for p in cand_m.get("prompts", [])}
    only_b, only_c = [i for i in bp if i not in cp], [i for i in cp if i not in bp]
    if only_b or only_c:
        parts = []
        if only_b:
            parts.append(f"{len(only_b)} only in base ({few(only_b)})")
        if only_c:
            parts.append(f"{len(only_c)} only in candidate ({few(only_c)})")
        diffs.append(f"prompts differ ({len(bp)} vs {len(cp)}): " + "; ".join(parts))
    # Same id with other text cannot happen through evalkit (the id holds the text's hash), but a hand-edited
    # manifest can; check the text itself rather than trust the id.
    text_diff = [i for i in bp if i in cp and bp[i].get("text") != cp[i].get("text")]
    if text_diff:
        diffs.append(f"prompt texts differ for {len(text_diff)} prompt(s) ({few(text_diff)})")
    seed_diff = [i for i in bp if i in cp and bp[i].get("seed") != cp[i].get("seed")]
    if seed_diff:
        i = seed_diff[0]
        diffs.append(f"seeds differ for {len(seed_diff)} prompt(s) (e.g. {i}: {bp[i].get('seed')} vs {cp[i].get('seed')})")
    bg, cg = base_m.get("generation") or {}, cand_m.get("generation") or {}
    if (bg.get("height"), bg.get("width")) != (cg.get("height"), cg.get("width")):
        diffs.append(f"resolution differs ({bg.get('width')}x{bg.get('height')} vs {cg.get('width')}x{cg.get('height')})")
    for key in GENERATION_KEYS:
        if key in ("height", "width"):
            continue
        if bg.get(key) != cg.get(key):
            diffs.append(f"generation.{key} differs ({bg.get(key)!r} vs {cg.get(key)!r})")
    bmod, cmod = base_m.get("model") or {}, cand_m.get("model") or {}
    for key in MODEL_KEYS:
        if bmod.get(key) != cmod.get(key):
            diffs.append(f"model.{key} differs ({bmod.get(key)!r} vs {cmod.get(key)!r})")
    bref = base_m.get("reference_backend", REFERENCE_BACKEND)
    cref = cand_m.get("reference_backend", REFERENCE_BACKEND)
    if bref != cref:
        diffs.append(f"reference backend differs ({bref!r} vs {cref!r})")
    return diffs


def missing_prompt_differences(base: RunInputs, cand: RunInputs, backends: list[str]) -> list[str]:
    """A generated backend (or the reference) whose record lacks prompts of its manifest, in either run: its
    paired n would silently shrink, so it is a mismatch like differing prompts."""
    diffs = []
    for side, run in (("base", base), ("candidate", cand)):
        for b in dict.fromkeys([run.reference, *backends]):
            missing = run.missing_prompts(b)
            if missing:
                diffs.append(f"{side} generation/{b}.json has no image for {len(missing)} of its "
                             f"{len(run.prompt_ids())} prompts ({few(missing)})")
    return diffs


def _device_label(m: dict[str, Any]) -> str:
    d = m.get("device") or {}
    return f"{d.get('type')} {d.get('name') or ''}".strip()


def judge_compare(opts: CompareOptions) -> Report:
    """`compare_runs` with the options of `evalkit compare` / `evalkit.compare` (the one place they meet it)."""
    opts.validate()
    return compare_runs(opts.base_run, opts.candidate_run, alpha=opts.alpha, n_bootstrap=opts.n_bootstrap,
                        force=opts.force, fail_on_regression=opts.fail_on_regression,
                        memory_tolerance=opts.memory_tolerance, latency_tolerance=opts.latency_tolerance,
                        verify=opts.verify)


def compare_runs(base_dir: str | Path, cand_dir: str | Path, *, alpha: float = 0.05, n_bootstrap: int = 10000,
                 force: bool = False, fail_on_regression: bool = False, memory_tolerance: float = 0.05,
                 latency_tolerance: float = 0.10, verify: bool = False) -> Report:
    """Compare two runs. Raises EvalkitError (exit 2) when they are not comparable and `force` is false, or when an
    image either run's metrics rest on is not the file its generation record describes (`verify`: hash every one)."""
    base, cand, order, diffs = _comparable_runs(base_dir, cand_dir, force=force, verify=verify)
    bman, cman = base.manifest, cand.manifest
    bb, cb = base.summary["backends"], cand.summary["backends"]
    same_device = _device_label(bman) == _device_label(cman)
    report = _compare_report(base, cand, diffs, same_device, alpha=alpha, n_bootstrap=n_bootstrap,
                             fail_on_regression=fail_on_regression, memory_tolerance=memory_tolerance,
                             latency_tolerance=latency_tolerance)

    flag = Outcome.FAIL if fail_on_regression else Outcome.PASS
    only_base = [b for b in (bman.get("backends") or list(bb)) if b not in cb]
    only_cand = [b for b in (cman.get("backends") or list(cb)) if b not in bb]
    if only_cand:
        report.notes.append(f"backends only in candidate (not compared): {', '.join(only_cand)}")
    unmeasured: set[str] = set()
    unresolved: dict[str, list[tuple[str, Any]]] = {}  # metric -> [(backend, power.Guidance)]
    for b in order:
        be, ce = bb[b], cb[b]
        status = _status_case(b, be, ce, flag)
        if status is not None:
            report.cases.append(status)
            continue
        report.cases.extend(_compare_metrics(b, base, cand, be, ce, alpha, n_bootstrap, flag, unresolved,
                                             report.properties))
        report.cases.extend(_compare_resources(b, be, ce, same_device, memory_tolerance, latency_tolerance, flag,
                                               unmeasured, (base.rd.summary, cand.rd.summary)))
    for b in only_base:
        # A backend the release had and the candidate dropped is a regression: it can no longer be shipped as tested.
        report.cases.append(CaseResult(b, "in_candidate", flag, (str(bb[b].get("status")), "absent", "", "", ""),
                                       f"{b} is in the base run but not in the candidate", finding=Finding.MISSING))
    _closing_notes(report, unresolved, unmeasured)
    return report


def _comparable_runs(base_dir: str | Path, cand_dir: str | Path, *, force: bool,
                     verify: bool) -> tuple[RunInputs, RunInputs, list[str], list[str]]:
    """(base, candidate, the backends both have in the candidate's order, every reason the runs are not comparable).

    Refused here, before any delta is computed: runs that differ in what was generated (unless `force`), runs that
    share no backend, and images the per-prompt values rest on that are no longer the files their records describe."""
    base, cand = load_run(base_dir), load_run(cand_dir)
    bb, cb = base.summary["backends"], cand.summary["backends"]
    order = [b for b in (cand.manifest.get("backends") or list(cb)) if b in bb]
    both_ok = [b for b in order if bb[b].get("status") == "ok" and cb[b].get("status") == "ok"]
    diffs = comparability(base.manifest, cand.manifest) + missing_prompt_differences(base, cand, both_ok)
    if diffs and not force:
        raise EvalkitError(f"runs are not comparable: {'; '.join(diffs)}. Their deltas would measure the setup, "
                           f"not the change; rerun with the same settings, or pass --force to compare anyway")
    if not order:
        raise EvalkitError(f"the runs share no backend (base: {', '.join(bb)}; candidate: {', '.join(cb)})")
    scored = [b for b in both_ok if b != base.reference]
    # the per-prompt values describe the files scored: a replaced one is exit 2
    for run in (base, cand) if scored else ():
        verify_images(run, scored, full=verify)
    return base, cand, order, diffs


def _compare_report(base: RunInputs, cand: RunInputs, diffs: list[str], same_device: bool, *, alpha: float,
                    n_bootstrap: int, fail_on_regression: bool, memory_tolerance: float,
                    latency_tolerance: float) -> Report:
    """The report before any case: what was compared and how (context, JUnit properties), and the warnings that
    qualify every delta in it (a forced comparison, different devices)."""
    bman, cman = base.manifest, cand.manifest
    report = Report("compare", f"evalkit compare: {bman.get('run_id')} → {cman.get('run_id')}", COMPARE_COLUMNS)
    if diffs:
        report.warnings.append("FORCED comparison (--force): the runs are not comparable: " + "; ".join(diffs))
    if not same_device:
        report.warnings.append(f"devices differ ({_device_label(bman)} vs {_device_label(cman)}): latency and memory "
                               f"ratios are shown but not flagged")
    report.context += [
        ("base", f"{base.rd.root} ({bman.get('run_id')})"),
        ("candidate", f"{cand.rd.root} ({cman.get('run_id')})"),
        ("model", f"{(cman.get('model') or {}).get('spec')}"),
        ("device", _device_label(cman) if same_device else f"{_device_label(bman)} vs {_device_label(cman)}"),
        ("test", f"paired bootstrap over prompts, {n_bootstrap} resamples, {100 * (1 - alpha):g}% CI; "
                 f"significant when the CI excludes 0 and at least {MIN_PROMPTS_FOR_SIGNIFICANCE} prompts are shared; "
                 f"p is never shown below 1/{n_bootstrap}"),
        ("tolerances", f"memory +{100 * memory_tolerance:g}%, latency +{100 * latency_tolerance:g}%"),
        ("gate", "--fail-on-regression: a significant regression fails" if fail_on_regression
                 else "report only (pass --fail-on-regression to fail on a regression)"),
    ]
    changed = _version_changes(bman, cman)
    if changed:
        report.context.append(("versions changed", changed))
    report.properties.update({"base_run": str(bman.get("run_id")), "candidate_run": str(cman.get("run_id")),
                              "forced": str(bool(diffs)).lower(), "alpha": f"{alpha:g}",
                              "n_bootstrap": str(n_bootstrap)})
    report.backend_info = _backend_info(base, cand)
    return report


def _status_case(b: str, be: dict, ce: dict, flag: Outcome) -> CaseResult | None:
    """The one case of a backend whose generation is not ok in both runs, whose numbers cannot be compared: a
    regression when only the candidate's failed, fixed when only the base's did, else not compared. None when both
    are ok (its metrics and resources are compared instead)."""
    bst, cst = be.get("status"), ce.get("status")
    if bst == "ok" and cst != "ok":
        msg = f"generation {cst} in the candidate (ok in base): {ce.get('reason')}"
        return CaseResult(b, "status", flag, ("ok", str(cst), "", "", ""), msg, finding=Finding.REGRESSION)
    if bst != "ok" or cst != "ok":
        why = f"base {bst}: {be.get('reason')}" if bst != "ok" else ""
        why += ("; " if why else "") + (f"candidate {cst}: {ce.get('reason')}" if cst != "ok" else "")
        fixed = cst == "ok"
        return CaseResult(b, "status", Outcome.PASS if fixed else Outcome.SKIPPED, (str(bst), str(cst), "", "", ""),
                          why, finding=Finding.FIXED if fixed else Finding.NOT_COMPARED)
    return None


def _closing_notes(report: Report, unresolved: dict[str, list[tuple[str, Any]]], unmeasured: set[str]) -> None:
    """The notes that sum up the cases once all are in (too few prompts, differences the prompts cannot resolve,
    resources neither run measured), and the regression count: said once, not in every case."""
    if any(c.finding is Finding.TOO_FEW_PROMPTS for c in report.cases):
        report.notes.append(f"quality deltas over fewer than {MIN_PROMPTS_FOR_SIGNIFICANCE} shared prompts are shown "
                            f"but never called significant (a bootstrap over so few prompts overclaims)")
    for name, items in unresolved.items():
        worst = max((g.needed or 0) for _b, g in items)
        who = ", ".join(f"{b} (n={g.n}, detectable {fmt(g.detectable)}, gap {fmt(g.gap)})" for b, g in items[:4])
        more = f", +{len(items) - 4} more" if len(items) > 4 else ""
        report.notes.append(f"sample size: the shared prompts CANNOT resolve the observed {name} difference for "
                            f"{who}{more}; up to {worst or 'infinitely many'} prompts needed ({power.STATED})")
    if unresolved:
        report.properties["sample_size.assumptions"] = power.STATED
    if unmeasured:
        report.notes.append(f"not measured in either run, so not compared: {', '.join(sorted(unmeasured))}")
    report.notes.append("Quality deltas compare each backend's distance from its own run's reference; if the "
                        "reference itself changed (e.g. a diffusers upgrade), compare the reference images too.")
    report.properties["regressions"] = str(report.flagged)


def _backend_info(base: RunInputs, cand: RunInputs) -> dict[str, BackendInfo]:
    """† for a backend partial in either run, saying which: a candidate that quantizes less is a change to see."""
    out: dict[str, BackendInfo] = {}
    for b in dict.fromkeys([*cand.backends, *base.backends]):
        pb = base.partial_reason(b) if b in base.backends else None
        pc = cand.partial_reason(b) if b in cand.backends else None
        if pb is None and pc is None:
            reason = None
        elif pb == pc:
            reason = pc
        else:
            reason = "; ".join(f"{side}: {r or 'fully quantized'}" for side, r in (("base", pb), ("candidate", pc)))
        out[b] = BackendInfo(b, reason)
    return out


def _version_changes(bman: dict[str, Any], cman: dict[str, Any]) -> str:
    bv, cv = bman.get("versions") or {}, cman.get("versions") or {}
    keys = sorted(set(bv) | set(cv))
    return ", ".join(f"{k} {bv.get(k)} → {cv.get(k)}" for k in keys if bv.get(k) != cv.get(k))


def _compare_metrics(b: str, base: RunInputs, cand: RunInputs, be: dict, ce: dict, alpha: float, n_bootstrap: int,
                     flag: Outcome, unresolved: dict[str, list[tuple[str, Any]]] | None = None,
                     properties: dict[str, str] | None = None) -> list[CaseResult]:
    out: list[CaseResult] = []
    bmet, cmet = be.get("metrics") or {}, ce.get("metrics") or {}
    bfull, cfull = base.metrics(b), cand.metrics(b)
    for name in list(cmet) + [n for n in bmet if n not in cmet]:
        bm, cm = bmet.get(name), cmet.get(name)
        if bm is None or cm is None:
            side = "base" if bm is None else "candidate"
            out.append(CaseResult(b, name, Outcome.SKIPPED, ("—", "—", "", "", ""), f"{name} not scored in the {side} run",
                                  finding=Finding.NOT_COMPARED))
            continue
        if bm.get("status", "ok") != "ok" or cm.get("status", "ok") != "ok":
            why = "; ".join(f"{s}: {m.get('status')} ({m.get('reason')})" for s, m in (("base", bm), ("candidate", cm))
                            if m.get("status", "ok") != "ok")
            out.append(CaseResult(b, name, Outcome.SKIPPED, ("—", "—", "", "", ""), f"{name} {why}",
                                  finding=Finding.NOT_COMPARED))
            continue
        hib = cm.get("higher_is_better", bm.get("higher_is_better", known_metrics().get(name)))
        bpp = (bfull.get(name) or {}).get("per_prompt") or {}
        cpp = (cfull.get(name) or {}).get("per_prompt") or {}
        common = [i for i in cpp if i in bpp and bpp[i] is not None and cpp[i] is not None]
        if len(common) >= 2:
            out.append(_paired_case(b, name, bpp, cpp, common, hib, alpha, n_bootstrap, flag, unresolved, properties))
            continue
        # Set-level metrics (FID, KID) or runs with no shared prompt: the delta is real but untested.
        bv = num(bm.get("mean", bm.get("value")))
        cv = num(cm.get("mean", cm.get("value")))
        if bv is None or cv is None:
            out.append(CaseResult(b, name, Outcome.SKIPPED, (fmt(bv), fmt(cv), "", "", ""),
                                  f"{name} has no value in one of the runs", finding=Finding.NOT_COMPARED))
            continue
        why = "set-level metric, no per-prompt values" if not bpp and not cpp else f"only {len(common)} shared prompt(s)"
        out.append(CaseResult(b, name, Outcome.SKIPPED, (fmt(bv), fmt(cv), _signed(cv - bv), "", ""),
                              f"{name}: delta {_signed(cv - bv)} not tested ({why})", finding=Finding.NOT_TESTED))
    return out


def _paired_case(b: str, name: str, bpp: dict, cpp: dict, common: list[str], hib: bool | None, alpha: float,
                 n_bootstrap: int, flag: Outcome, unresolved: dict[str, list[tuple[str, Any]]] | None,
                 properties: dict[str, str] | None) -> CaseResult:
    r = paired_bootstrap([bpp[i] for i in common], [cpp[i] for i in common], n_bootstrap, alpha)
    finding = _finding(r, hib)
    cells = (fmt(r.base_mean), fmt(r.cand_mean), _signed(r.delta), f"[{_signed(r.ci_low)}, {_signed(r.ci_high)}]",
             format_p(r.p_value, n_bootstrap))
    msg = (f"{name} {'rose' if r.delta > 0 else 'fell'} by {fmt(abs(r.delta))} "
           f"({fmt(r.base_mean)} → {fmt(r.cand_mean)}; {100 * (1 - alpha):g}% CI of the delta "
           f"[{_signed(r.ci_low)}, {_signed(r.ci_high)}], p {format_p(r.p_value, n_bootstrap)}, n={r.n} prompts; "
           f"{'higher' if hib else 'lower'} is better)")
    # Prompts one run scored and the other did not: said, never a silently smaller n.
    unpaired = sorted((set(bpp) | set(cpp)) - set(common))
    if unpaired:
        msg += f"; {len(unpaired)} prompt(s) without a value in both runs left out ({few(unpaired)})"
    # Sample size: the spread of the per-prompt differences says what these prompts can detect.
    g = power.guidance(statistics.stdev(cpp[i] - bpp[i] for i in common), len(common), r.delta)
    if g is not None:
        msg += "; " + g.text("this difference")
        if properties is not None:
            prefix = f"sample_size.{b}.{name}"
            properties.update({f"{prefix}.n": str(g.n), f"{prefix}.detectable_difference": f"{g.detectable:.6g}",
                               f"{prefix}.prompts_needed": "never (difference 0)" if g.needed is None
                               else str(g.needed), f"{prefix}.resolvable": str(g.resolvable).lower()})
        # A zero difference has nothing to resolve; its detectable difference is still in the properties.
        if g.gap > 0 and not g.resolvable and unresolved is not None:
            unresolved.setdefault(name, []).append((b, g))
    worse = finding.is_regression
    return CaseResult(b, name, flag if worse else Outcome.PASS, cells, msg if worse else "", msg, finding=finding,
                      n=r.n, min_n=MIN_PROMPTS_FOR_SIGNIFICANCE)


def _finding(r: BootstrapResult, hib: bool | None) -> Finding:
    if not r.enough_prompts:
        return Finding.TOO_FEW_PROMPTS
    if not r.significant:
        return Finding.NO_CHANGE if r.delta == 0 else Finding.NOT_SIGNIFICANT
    if hib is None:
        return Finding.DIRECTION_UNKNOWN
    worse = (r.delta < 0) if hib else (r.delta > 0)
    return Finding.REGRESSION if worse else Finding.IMPROVED


def _compare_resources(b: str, be: dict, ce: dict, same_device: bool, mem_tol: float, lat_tol: float, flag: Outcome,
                       unmeasured: set[str], summaries: tuple[Path, Path]) -> list[CaseResult]:
    out: list[CaseResult] = []
    for name, path, is_mem in RESOURCE_ROWS:
        # A string where a number belongs is a malformed summary (exit 2), never "not measured".
        where = f"backends.{b}.{'.'.join(path)}"
        bv, cv = number_or_none(summaries[0], where, dig(be, path)), number_or_none(summaries[1], where, dig(ce, path))
        if bv is None and cv is None:
            unmeasured.add(name)
            continue
        if bv is None or cv is None or bv <= 0:
            side = "base" if bv is None else "candidate"
            out.append(CaseResult(b, name, Outcome.SKIPPED, (fmt(bv), fmt(cv), "", "", ""),
                                  f"{name} not measured in the {side} run", finding=Finding.NOT_COMPARED))
            continue
        ratio = cv / bv
        tol = mem_tol if is_mem else lat_tol
        worse = same_device and ratio > 1 + tol
        finding = (Finding.OTHER_DEVICE if not same_device else Finding.REGRESSION if worse
                   else Finding.IMPROVED if ratio < 1 - tol else Finding.WITHIN_TOLERANCE)
        msg = f"{name} ×{ratio:.3f} ({fmt(bv)} → {fmt(cv)}; tolerance +{100 * tol:g}%)"
        out.append(CaseResult(b, name, flag if worse else Outcome.PASS, (fmt(bv), fmt(cv), f"×{ratio:.3f}", "", ""),
                              msg if worse else "", msg, finding=finding))
    bf = sum((be.get("image_flags") or {}).values())
    cf = sum((ce.get("image_flags") or {}).values())
    if bf or cf:
        worse = cf > bf
        msg = f"images flagged nan/all_black: {bf} → {cf} ({ce.get('image_flags')})"
        out.append(CaseResult(b, "flagged_images", flag if worse else Outcome.PASS, (str(bf), str(cf), f"{cf - bf:+d}", "", ""),
                              msg if worse else "", msg,
                              finding=Finding.REGRESSION if worse else Finding.WITHIN_TOLERANCE))
    from evalkit.tripwires import count_broken, describe

    bb, cb = be.get("broken") or [], ce.get("broken") or []
    nb, nc = (count_broken(x, int(e.get("n_images") or 0)) if x else 0 for x, e in ((bb, be), (cb, ce)))
    if nb or nc:  # broken output (evalkit.tripwires): more of it in the candidate is a regression
        worse = nc > nb
        msg = f"broken images: {nb} → {nc}" + (f" ({describe(cb, 3)})" if cb else "")
        out.append(CaseResult(b, "broken", flag if worse else Outcome.PASS, (str(nb), str(nc), f"{nc - nb:+d}", "", ""),
                              msg if worse else "", msg,
                              finding=Finding.REGRESSION if worse else Finding.WITHIN_TOLERANCE))
    return out


def _signed(x: float | None) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "—"
    return f"{x:+.4g}"

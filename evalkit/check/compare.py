"""`evalkit compare BASE CANDIDATE`: what changed between two runs, and whether it is more than seed noise.

Quality: per backend and metric, the candidate's per-prompt values minus the base's, paired by prompt id,
with a percentile bootstrap over prompts for the CI of the mean delta. A change is significant when the
(1 - alpha) CI excludes zero, and a regression when it is significant in the worse direction
(`higher_is_better`). Set-level metrics (FID, KID) have no per-prompt values: their delta is shown, untested.

Resources: ratios of latency and memory, flagged past a tolerance, and only when both runs ran on the same
device (a ratio across different hardware says nothing about the code).

Runs that differ in what was generated (prompts, seeds, resolution, steps, guidance, model) are refused:
their deltas would measure the setup, not the change. `--force` compares anyway and says so everywhere.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.check import power
from evalkit.check.gate import _dig, _fmt, _num, _shape, load_run_for_check
from evalkit.check.results import CaseResult, Report
from evalkit.check.thresholds import _known_metrics
from evalkit.errors import EvalkitError
from evalkit.io import read_json
from evalkit.rundir import REFERENCE_BACKEND, RunDir

COMPARE_COLUMNS = ("base", "candidate", "delta", "CI", "p", "verdict")

# Below this many shared prompts no change is called significant: a bootstrap over 5 prompts has 126 distinct
# resamples and a CI that excludes 0 whenever all deltas share a sign, which seed noise does often.
MIN_PROMPTS_FOR_SIGNIFICANCE = 10

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


@dataclass(frozen=True)
class BootstrapResult:
    n: int
    base_mean: float
    cand_mean: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float  # two-sided bootstrap p: 2 * min(P(mean* <= 0), P(mean* >= 0)), within [1/B, 1]
    n_bootstrap: int

    @property
    def p_at_resolution(self) -> bool:
        """p is at the bootstrap's floor 1/B: the true p is at most this, not this."""
        return self.p_value <= 1.0 / self.n_bootstrap

    @property
    def enough_prompts(self) -> bool:
        return self.n >= MIN_PROMPTS_FOR_SIGNIFICANCE

    @property
    def significant(self) -> bool:
        return self.enough_prompts and (self.ci_low > 0 or self.ci_high < 0)


def paired_bootstrap(base: list[float], cand: list[float], n_bootstrap: int = 10000, alpha: float = 0.05,
                     seed: int = 0) -> BootstrapResult:
    """Percentile bootstrap of the mean paired difference cand - base, resampling prompts with replacement.

    Seeded, so the same two runs always give the same CI and p (a CI gate must not flicker).
    """
    import numpy as np

    b = np.asarray(base, dtype=np.float64)
    c = np.asarray(cand, dtype=np.float64)
    d = c - b
    n = d.size
    if n == 0:
        raise ValueError("no paired values")
    rng = np.random.default_rng(seed)
    means = np.empty(n_bootstrap, dtype=np.float64)
    # Chunked so 5000 prompts x 10000 resamples never holds a 400 MB index array.
    chunk = max(1, min(n_bootstrap, 2_000_000 // max(n, 1)))
    for start in range(0, n_bootstrap, chunk):
        stop = min(start + chunk, n_bootstrap)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = d[idx].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    # An all-zero difference (identical runs) is exactly "no change": p = 1, CI [0, 0].
    p = min(1.0, 2 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    # B resamples cannot resolve a p below 1/B: report that floor ("p < 1/B"), never 0 or a smaller number.
    p = max(p, 1.0 / n_bootstrap)
    return BootstrapResult(n, float(b.mean()), float(c.mean()), float(d.mean()), float(lo), float(hi), p, n_bootstrap)


def comparability(base_m: dict[str, Any], cand_m: dict[str, Any]) -> list[str]:
    """Every difference that makes two runs' images not comparable, one readable line each."""
    diffs: list[str] = []
    bp = {p["id"]: p for p in base_m.get("prompts", [])}
    cp = {p["id"]: p for p in cand_m.get("prompts", [])}
    only_b, only_c = [i for i in bp if i not in cp], [i for i in cp if i not in bp]
    if only_b or only_c:
        parts = []
        if only_b:
            parts.append(f"{len(only_b)} only in base ({_few(only_b)})")
        if only_c:
            parts.append(f"{len(only_c)} only in candidate ({_few(only_c)})")
        diffs.append(f"prompts differ ({len(bp)} vs {len(cp)}): " + "; ".join(parts))
    # Same id with other text cannot happen through evalkit (the id holds the text's hash), but a hand-edited
    # manifest can; check the text itself rather than trust the id.
    text_diff = [i for i in bp if i in cp and bp[i].get("text") != cp[i].get("text")]
    if text_diff:
        diffs.append(f"prompt texts differ for {len(text_diff)} prompt(s) ({_few(text_diff)})")
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


def _few(ids: list[str], k: int = 3) -> str:
    return ", ".join(ids[:k]) + (f", +{len(ids) - k} more" if len(ids) > k else "")


def _device_label(m: dict[str, Any]) -> str:
    d = m.get("device") or {}
    return f"{d.get('type')} {d.get('name') or ''}".strip()


def compare_runs(base_dir: str | Path, cand_dir: str | Path, *, alpha: float = 0.05, n_bootstrap: int = 10000,
                 force: bool = False, fail_on_regression: bool = False, memory_tolerance: float = 0.05,
                 latency_tolerance: float = 0.10) -> Report:
    """Compare two runs. Raises EvalkitError (exit 2) when they are not comparable and `force` is false."""
    brd, bman, bsum = load_run_for_check(base_dir)
    crd, cman, csum = load_run_for_check(cand_dir)
    diffs = comparability(bman, cman)
    if diffs and not force:
        raise EvalkitError(f"runs are not comparable: {'; '.join(diffs)}. Their deltas would measure the setup, "
                           f"not the change; rerun with the same settings, or pass --force to compare anyway")

    report = Report("compare", f"evalkit compare: {bman.get('run_id')} → {cman.get('run_id')}", COMPARE_COLUMNS)
    if diffs:
        report.warnings.append("FORCED comparison (--force): the runs are not comparable: " + "; ".join(diffs))
    same_device = _device_label(bman) == _device_label(cman)
    if not same_device:
        report.warnings.append(f"devices differ ({_device_label(bman)} vs {_device_label(cman)}): latency and memory "
                               f"ratios are shown but not flagged")
    report.context += [
        ("base", f"{brd.root} ({bman.get('run_id')})"),
        ("candidate", f"{crd.root} ({cman.get('run_id')})"),
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

    bb, cb = bsum["backends"], csum["backends"]
    order = [b for b in (cman.get("backends") or list(cb)) if b in bb]
    only_base = [b for b in (bman.get("backends") or list(bb)) if b not in cb]
    only_cand = [b for b in (cman.get("backends") or list(cb)) if b not in bb]
    if only_base:
        report.notes.append(f"backends only in base (not compared): {', '.join(only_base)}")
    if only_cand:
        report.notes.append(f"backends only in candidate (not compared): {', '.join(only_cand)}")
    if not order:
        raise EvalkitError(f"the runs share no backend (base: {', '.join(bb)}; candidate: {', '.join(cb)})")

    flag = "fail" if fail_on_regression else "pass"
    regressions = 0
    unmeasured: set[str] = set()
    unresolved: dict[str, list[tuple[str, Any]]] = {}  # metric -> [(backend, power.Guidance)]
    for b in order:
        be, ce = bb[b], cb[b]
        bst, cst = be.get("status"), ce.get("status")
        if bst == "ok" and cst != "ok":
            regressions += 1
            msg = f"generation {cst} in the candidate (ok in base): {ce.get('reason')}"
            report.cases.append(CaseResult(b, "status", flag, ("ok", str(cst), "", "", "", "⚠ regression"), msg))
            continue
        if bst != "ok" or cst != "ok":
            why = f"base {bst}: {be.get('reason')}" if bst != "ok" else ""
            why += ("; " if why else "") + (f"candidate {cst}: {ce.get('reason')}" if cst != "ok" else "")
            verdict = "fixed" if cst == "ok" else "not compared"
            report.cases.append(CaseResult(b, "status", "pass" if cst == "ok" else "skipped",
                                           (str(bst), str(cst), "", "", "", verdict), why))
            continue
        cases = _compare_metrics(b, brd, crd, be, ce, alpha, n_bootstrap, flag, unresolved, report.properties)
        cases += _compare_resources(b, be, ce, same_device, memory_tolerance, latency_tolerance, flag, unmeasured)
        regressions += sum("regression" in c.cells[-1] for c in cases)
        report.cases.extend(cases)
    few = sorted({c.cells[-1] for c in report.cases if c.cells[-1].startswith("too few prompts")})
    if few:
        report.notes.append(f"quality deltas over fewer than {MIN_PROMPTS_FOR_SIGNIFICANCE} shared prompts are shown "
                            f"but never called significant (a bootstrap over so few prompts overclaims)")
    for name, items in unresolved.items():
        worst = max((g.needed or 0) for _b, g in items)
        who = ", ".join(f"{b} (n={g.n}, detectable {_fmt(g.detectable)}, gap {_fmt(g.gap)})" for b, g in items[:4])
        more = f", +{len(items) - 4} more" if len(items) > 4 else ""
        report.notes.append(f"sample size: the shared prompts CANNOT resolve the observed {name} difference for "
                            f"{who}{more}; up to {worst or 'infinitely many'} prompts needed ({power.STATED})")
    if unresolved:
        report.properties["sample_size.assumptions"] = power.STATED
    if unmeasured:
        report.notes.append(f"not measured in either run, so not compared: {', '.join(sorted(unmeasured))}")
    report.notes.append("Quality deltas compare each backend's distance from its own run's reference; if the "
                        "reference itself changed (e.g. a diffusers upgrade), compare the reference images too.")
    report.properties["regressions"] = str(regressions)
    report.flagged = regressions
    report.summary_line = (f"{regressions} significant regression(s)" if regressions else "no significant regression") \
        + ("" if fail_on_regression or not regressions else " (not failing: --fail-on-regression not set)")
    return report


def _version_changes(bman: dict[str, Any], cman: dict[str, Any]) -> str:
    bv, cv = bman.get("versions") or {}, cman.get("versions") or {}
    keys = sorted(set(bv) | set(cv))
    return ", ".join(f"{k} {bv.get(k)} → {cv.get(k)}" for k in keys if bv.get(k) != cv.get(k))


def _per_prompt(rd: RunDir, backend: str) -> dict[str, Any]:
    path = rd.metrics_record(backend)
    if not path.exists():
        return {}
    rec = read_json(path)
    _shape(path, "metrics record", rec, {"metrics": dict})
    metrics = rec.get("metrics") or {}
    for name, m in metrics.items():
        _shape(path, f"metrics.{name}", m, {"per_prompt": dict})
    return metrics


def _compare_metrics(b: str, brd: RunDir, crd: RunDir, be: dict, ce: dict, alpha: float, n_bootstrap: int,
                     flag: str, unresolved: dict[str, list[tuple[str, Any]]] | None = None,
                     properties: dict[str, str] | None = None) -> list[CaseResult]:
    out: list[CaseResult] = []
    bmet, cmet = be.get("metrics") or {}, ce.get("metrics") or {}
    bfull, cfull = _per_prompt(brd, b), _per_prompt(crd, b)
    for name in list(cmet) + [n for n in bmet if n not in cmet]:
        bm, cm = bmet.get(name), cmet.get(name)
        if bm is None or cm is None:
            side = "base" if bm is None else "candidate"
            out.append(CaseResult(b, name, "skipped", ("—", "—", "", "", "", "not compared"),
                                  f"{name} not scored in the {side} run"))
            continue
        if bm.get("status", "ok") != "ok" or cm.get("status", "ok") != "ok":
            why = "; ".join(f"{s}: {m.get('status')} ({m.get('reason')})" for s, m in (("base", bm), ("candidate", cm))
                            if m.get("status", "ok") != "ok")
            out.append(CaseResult(b, name, "skipped", ("—", "—", "", "", "", "not compared"), f"{name} {why}"))
            continue
        hib = cm.get("higher_is_better", bm.get("higher_is_better", _known_metrics().get(name)))
        bpp = (bfull.get(name) or {}).get("per_prompt") or {}
        cpp = (cfull.get(name) or {}).get("per_prompt") or {}
        common = [i for i in cpp if i in bpp and _num(bpp[i]) is not None and _num(cpp[i]) is not None]
        if len(common) >= 2:
            r = paired_bootstrap([bpp[i] for i in common], [cpp[i] for i in common], n_bootstrap, alpha)
            verdict, worse = _verdict(r.delta, r.significant, hib)
            if not r.enough_prompts:
                verdict = f"too few prompts (n={r.n} < {MIN_PROMPTS_FOR_SIGNIFICANCE})"
            cells = (_fmt(r.base_mean), _fmt(r.cand_mean), _signed(r.delta), f"[{_signed(r.ci_low)}, {_signed(r.ci_high)}]",
                     _p(r.p_value, n_bootstrap), verdict)
            msg = (f"{name} {'rose' if r.delta > 0 else 'fell'} by {_fmt(abs(r.delta))} "
                   f"({_fmt(r.base_mean)} → {_fmt(r.cand_mean)}; {100 * (1 - alpha):g}% CI of the delta "
                   f"[{_signed(r.ci_low)}, {_signed(r.ci_high)}], p {_p(r.p_value, n_bootstrap)}, n={r.n} prompts; "
                   f"{'higher' if hib else 'lower'} is better)")
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
            out.append(CaseResult(b, name, flag if worse else "pass", cells, msg if worse else "", msg))
            continue
        # Set-level metrics (FID, KID) or runs with no shared prompt: the delta is real but untested.
        bv = _num(bm.get("mean", bm.get("value")))
        cv = _num(cm.get("mean", cm.get("value")))
        if bv is None or cv is None:
            out.append(CaseResult(b, name, "skipped", (_fmt(bv), _fmt(cv), "", "", "", "not compared"),
                                  f"{name} has no value in one of the runs"))
            continue
        why = "set-level metric, no per-prompt values" if not bpp and not cpp else f"only {len(common)} shared prompt(s)"
        out.append(CaseResult(b, name, "skipped", (_fmt(bv), _fmt(cv), _signed(cv - bv), "", "", "not tested"),
                              f"{name}: delta {_signed(cv - bv)} not tested ({why})"))
    return out


def _verdict(delta: float, significant: bool, hib: bool | None) -> tuple[str, bool]:
    if not significant:
        return ("no change" if delta == 0 else "n.s."), False
    if hib is None:
        return "changed (direction unknown)", False
    worse = (delta < 0) if hib else (delta > 0)
    return ("⚠ regression", True) if worse else ("improved", False)


def _compare_resources(b: str, be: dict, ce: dict, same_device: bool, mem_tol: float, lat_tol: float, flag: str,
                       unmeasured: set[str]) -> list[CaseResult]:
    out: list[CaseResult] = []
    for name, path, is_mem in RESOURCE_ROWS:
        bv, cv = _num(_dig(be, path)), _num(_dig(ce, path))
        if bv is None and cv is None:
            unmeasured.add(name)
            continue
        if bv is None or cv is None or bv <= 0:
            side = "base" if bv is None else "candidate"
            out.append(CaseResult(b, name, "skipped", (_fmt(bv), _fmt(cv), "", "", "", "not compared"),
                                  f"{name} not measured in the {side} run"))
            continue
        ratio = cv / bv
        tol = mem_tol if is_mem else lat_tol
        worse = same_device and ratio > 1 + tol
        verdict = "⚠ regression" if worse else ("improved" if same_device and ratio < 1 - tol else "ok"
                                                if same_device else "other device")
        msg = f"{name} ×{ratio:.3f} ({_fmt(bv)} → {_fmt(cv)}; tolerance +{100 * tol:g}%)"
        out.append(CaseResult(b, name, flag if worse else "pass",
                              (_fmt(bv), _fmt(cv), f"×{ratio:.3f}", "", "", verdict), msg if worse else "", msg))
    bf = sum((be.get("image_flags") or {}).values())
    cf = sum((ce.get("image_flags") or {}).values())
    if bf or cf:
        worse = cf > bf
        msg = f"images flagged nan/all_black: {bf} → {cf} ({ce.get('image_flags')})"
        out.append(CaseResult(b, "flagged_images", flag if worse else "pass",
                              (str(bf), str(cf), f"{cf - bf:+d}", "", "", "⚠ regression" if worse else "ok"),
                              msg if worse else "", msg))
    return out


def _signed(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:+.4g}"


def _p(p: float, n_bootstrap: int) -> str:
    # A bootstrap cannot resolve p below 1/B; say so ("< 1/B") rather than print 0 or the floor as if measured.
    return f"< 1/{n_bootstrap}" if p <= 1.0 / n_bootstrap else f"{p:.3g}"

"""The noise floor: from each perturbation's paired metric records to one floor per metric. Pure data, no I/O.

Definition (docs/release-gate.md states it for users):
- Each perturbation gives, per paired metric, per-prompt values of the regenerated reference against the run's
  reference, their mean and the 95% percentile-bootstrap CI of the mean (evalkit.score.stats, through the
  metric stage's compare_images).
- The *noise end* of a perturbation is the CI end on the metric's bad side: ci_high for a lower-is-better metric
  (LPIPS), ci_low for a higher-is-better one (SSIM, PSNR). With fewer than 2 prompts there is no CI: the mean.
- The metric's **noise floor** is the worst noise end over the perturbations (the largest ci_high, or the
  smallest ci_low).
- `identity` is the value of identical images (LPIPS 0, SSIM 1, PSNR the cap, i.e. infinite). A floor equal to
  it is "identical": every perturbation reproduced the reference bit for bit as far as the metric can see. PSNR's
  identity is shown as "identical", never as its cap.
- Relative bounds scale the floor's distance from identity (`scale` "linear"), or, for a dB metric, its MSE
  (`scale` "db": k times the noise's MSE is 10*log10(k) dB below the floor).
"""

from __future__ import annotations

import math
from typing import Any

from evalkit.record_types import CALIBRATION_SCHEMA as SCHEMA  # noqa: F401 (re-exported: calibrate and tests)


def metric_facts(name: str) -> dict[str, Any]:
    """Direction, identity value and scale of a paired metric, read from the metric registry."""
    from evalkit.metrics.registry import get_spec

    spec = get_spec(name)
    lo, hi = spec.value_range
    # Identical images sit at the good end of the metric's range (LPIPS 0, SSIM 1, PSNR its 100 dB cap).
    identity = hi if spec.higher_is_better else lo
    return {"label": spec.label, "unit": spec.unit, "digits": spec.digits, "higher_is_better": spec.higher_is_better,
            "identity": identity, "scale": "db" if spec.unit == "dB" else "linear"}


def noise_end(rec: dict[str, Any], higher_is_better: bool) -> tuple[float | None, str]:
    """(value, which statistic) of a metric record's CI end on its bad side; the mean when there is no CI."""
    key = "ci_low" if higher_is_better else "ci_high"
    v = rec.get(key)
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v), key
    m = rec.get("mean")
    return (float(m), "mean (fewer than 2 prompts: no CI)") if isinstance(m, (int, float)) else (None, "none")


def perturbation_entry(rec: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    """One metric under one perturbation, as calibration.json holds it."""
    if rec.get("status") != "ok":
        return {"status": rec.get("status", "skipped"), "reason": rec.get("reason") or "not computed"}
    identity = facts["identity"]
    per_prompt = rec.get("per_prompt") or {}
    end, which = noise_end(rec, facts["higher_is_better"])
    identical = bool(per_prompt) and all(v == identity for v in per_prompt.values())
    shown = {pid: ("identical" if facts["scale"] == "db" and v == identity else v) for pid, v in per_prompt.items()}
    return {"status": "ok", "per_prompt": shown, "mean": None if identical and facts["scale"] == "db" else rec.get("mean"),
            "ci_low": rec.get("ci_low"), "ci_high": rec.get("ci_high"), "ci_level": rec.get("ci_level"),
            "ci_method": rec.get("ci_method"), "n": rec.get("n"), "noise_end": end, "noise_end_statistic": which,
            "identical": identical, "n_identical": sum(v == identity for v in per_prompt.values())}


def metric_floor(entries: dict[str, dict[str, Any]], facts: dict[str, Any]) -> dict[str, Any]:
    """The floor of one metric over its perturbations' entries (perturbation_entry)."""
    ok = {p: e for p, e in entries.items() if e.get("status") == "ok" and e.get("noise_end") is not None}
    if not ok:
        why: dict[str, list[str]] = {}
        for p, e in entries.items():
            why.setdefault(str(e.get("reason")), []).append(p)
        reasons = "; ".join(f"{r} ({', '.join(ps)})" for r, ps in why.items()) or "no perturbation ran"
        return {"status": "skipped", "reason": reasons}
    pick = min if facts["higher_is_better"] else max
    source = pick(ok, key=lambda p: ok[p]["noise_end"])
    value = ok[source]["noise_end"]
    identical = all(e["identical"] for e in ok.values())
    return {"status": "ok", "value": None if identical and facts["scale"] == "db" else value,
            "identical": identical, "from": source,
            "display": "identical" if identical and facts["scale"] == "db" else _fmt(value, facts["digits"]),
            "distance_from_identity": 0.0 if identical else abs(value - facts["identity"]),
            "perturbations_judged": sorted(ok)}


def _fmt(v: float, digits: int) -> str:
    if v == 0:
        return "0"
    text = f"{v:.{digits}f}"
    # A floor that rounds to zero at the metric's usual digits is not zero: show its significant digits.
    return text if float(text) != 0 else f"{v:.3g}"

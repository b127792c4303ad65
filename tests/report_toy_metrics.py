"""Test-only metrics, one of each kind, registered from outside evalkit: the report and the gate must show and
judge them from their registry entries alone (issue #12: no metric name in report/check code)."""

from __future__ import annotations

from typing import Any

from evalkit.metrics import registry
from evalkit.metrics.registry import MetricSpec

TOY_SPECS = [
    MetricSpec("toy_paired", "paired", False, "report_toy_metrics:ToyMetric", label="Toy paired distance", unit="tu",
               digits=3),
    MetricSpec("toy_prompt", "prompt", True, "report_toy_metrics:ToyMetric", reference="text", label="Toy alignment",
               digits=1),
    MetricSpec("toy_set", "set", False, "report_toy_metrics:ToyMetric", label="Toy set distance", digits=2,
               extractor="toy_features"),
]


class ToyMetric:  # the factory the specs name; the report and the gate never call it
    def __init__(self, **_: Any) -> None:
        pass


def register() -> None:
    # A set metric names the feature extractor it shares; registration refuses one that is not registered.
    registry.register_extractor(registry.ExtractorSpec("toy_features", "report_toy_metrics:ToyMetric"))
    for spec in TOY_SPECS:
        registry.register_metric(spec)


def unregister() -> None:
    for spec in TOY_SPECS:
        registry.unregister_metric(spec.name)
    registry.unregister_extractor("toy_features")


def toy_records(ids: list[str], level: float) -> dict[str, dict[str, Any]]:
    """Metric records as the score stage writes them: paired/prompt with per-prompt values and a CI, set with a value."""
    n = len(ids)
    paired = {i: round(0.1 + level * (1 + 0.1 * k), 4) for k, i in enumerate(ids)}
    prompt = {i: round(30.0 - 5 * level + 0.2 * k, 3) for k, i in enumerate(ids)}

    def rec(per: dict[str, float], hib: bool) -> dict[str, Any]:
        mean = sum(per.values()) / n
        return {"status": "ok", "mean": mean, "ci_low": mean - 0.01, "ci_high": mean + 0.01, "n": n,
                "higher_is_better": hib, "per_prompt": per}

    return {"toy_paired": rec(paired, False), "toy_prompt": rec(prompt, True),
            "toy_set": {"status": "ok", "value": 1.0 + 10 * level, "n": n, "n_reference": n, "higher_is_better": False}}

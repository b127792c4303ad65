"""The metrics: one module per metric, and the registry that declares each one's kind, direction and weights.

Registry and API: evalkit/metrics/registry.py (`list_metrics()`, `create_metric(name, **opts)`).
Adding a metric = one module (e.g. evalkit/metrics/<name>.py), one `MetricSpec` entry at the bottom of
registry.py, and one parity test against a reference implementation (tests/test_metrics_<name>.py).
Weights (offline, SHA-256 pinned): evalkit/weights/. Running them on a run directory: evalkit/score/.
Conventions (window sizes, data ranges, caps, CIs): docs/metrics.md.
"""

"""Score stage: quality metrics of each backend's images against the bf16 reference images.

Registry and API: evalkit/metrics/registry.py (`list_metrics()`, `create_metric(name, **opts)`).
Adding a metric = one module (e.g. evalkit/metrics/<name>.py), one `MetricSpec` entry at the bottom of
registry.py, and one parity test against a reference implementation (tests/test_metrics_<name>.py).
Weights (offline, SHA-256 pinned): evalkit/metrics/weights.py. Running it on a run directory: stage.py.
Conventions (window sizes, data ranges, caps, CIs): docs/metrics.md.

This package's __init__ stays import-light: decode worker processes import evalkit.metrics.images only.
"""

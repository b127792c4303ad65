"""Confidence intervals for per-image metric means.

Percentile bootstrap: resample the n per-image values with replacement `n_resamples` times (default
2000) with numpy's PCG64 seeded by `seed` (default 0), take the mean of each resample, and report the
2.5th and 97.5th percentiles (linear interpolation) as the 95% interval. Seeded, so a rerun on the same
values gives the same interval. With n < 2 there is no spread to resample: the interval is null with a reason.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
CI_LEVEL = 0.95


def bootstrap_ci(values: Sequence[float] | np.ndarray, n_resamples: int = DEFAULT_RESAMPLES,
                 seed: int = DEFAULT_SEED, level: float = CI_LEVEL) -> tuple[float | None, float | None]:
    """(low, high) of the percentile-bootstrap interval of the mean, or (None, None) when n < 2."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2 or n_resamples < 1:
        return None, None
    rng = np.random.default_rng(seed)
    # Chunked so 2000 x n indices never need more than ~64 MB, whatever n is.
    means = np.empty(n_resamples)
    step = max(1, (8 << 20) // x.size)
    for s in range(0, n_resamples, step):
        k = min(step, n_resamples - s)
        idx = rng.integers(0, x.size, size=(k, x.size))
        means[s:s + k] = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def summarize(values: Sequence[float] | np.ndarray, n_resamples: int = DEFAULT_RESAMPLES,
              seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """mean, ci_low, ci_high, n, std and the CI method, ready for a metrics record (JSON-safe: no NaN/inf)."""
    x = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("per-image values must be finite (cap or drop them before summarising)")
    lo, hi = bootstrap_ci(x, n_resamples, seed)
    out: dict[str, Any] = {
        "mean": float(x.mean()) if x.size else None,
        "std": float(x.std(ddof=1)) if x.size > 1 else None,
        "ci_low": lo, "ci_high": hi, "ci_level": CI_LEVEL,
        "ci_method": f"percentile bootstrap of the mean, {n_resamples} resamples, seed {seed}",
        "n": int(x.size),
    }
    if lo is None:
        out["ci_reason"] = "fewer than 2 values: no interval"
    return out

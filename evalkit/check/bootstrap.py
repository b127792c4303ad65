"""The paired bootstrap `evalkit compare` tests a quality change with: seeded, so the same two runs always give the
same CI and p, and never claiming a p below what B resamples resolve."""

from __future__ import annotations

from dataclasses import dataclass

# Below this many shared prompts no change is called significant: a bootstrap over 5 prompts has 126 distinct
# resamples and a CI that excludes 0 whenever all deltas share a sign, which seed noise does often.
MIN_PROMPTS_FOR_SIGNIFICANCE = 10


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


def format_p(p: float, n_bootstrap: int) -> str:
    # A bootstrap cannot resolve p below 1/B; say so ("< 1/B") rather than print 0 or the floor as if measured.
    return f"< 1/{n_bootstrap}" if p <= 1.0 / n_bootstrap else f"{p:.3g}"

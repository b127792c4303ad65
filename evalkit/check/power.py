"""Sample-size guidance: what difference a gate's n prompts can detect, and how many prompts a gap needs.

Normal approximation to a two-sided paired test on the per-prompt values (for check: the values against the
bound; for compare: the per-prompt differences between two runs), at alpha = 0.05 and power 0.8:

    smallest detectable difference  d = (z_{1-alpha/2} + z_{power}) * sd / sqrt(n)      (= 2.80 sd / sqrt(n))
    prompts needed for a gap g      n = ceil(((z_{1-alpha/2} + z_{power}) * sd / g)^2)

sd is the sample standard deviation (ddof=1) of the per-prompt values. Below ~30 prompts the t distribution
makes the real figures somewhat worse; that is stated wherever these are shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

ALPHA = 0.05
POWER = 0.8
STATED = f"alpha {ALPHA:g} two-sided, power {POWER:g}, normal approximation"


def z_sum(alpha: float = ALPHA, power: float = POWER) -> float:
    nd = NormalDist()
    return nd.inv_cdf(1 - alpha / 2) + nd.inv_cdf(power)


def detectable_difference(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true difference n paired values of spread sd detect with the given power."""
    return z_sum(alpha, power) * sd / math.sqrt(n)


def prompts_needed(sd: float, gap: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Prompts needed to detect `gap`; None when gap is 0 (no n can), 1 when sd is 0 (any one prompt shows it)."""
    gap = abs(gap)
    if gap == 0:
        return None
    if sd == 0:
        return 1
    return max(1, math.ceil((z_sum(alpha, power) * sd / gap) ** 2))


@dataclass(frozen=True)
class Guidance:
    """Sample-size figures for one judged value."""

    n: int
    sd: float
    detectable: float  # smallest difference detectable at n
    gap: float  # |observed - target| (the bound in check, 0 in compare)
    needed: int | None  # prompts needed to detect the gap; None: no n can (gap 0)

    @property
    def resolvable(self) -> bool:
        return self.needed is not None and self.n >= self.needed

    def text(self, what: str, digits: str = ".3g") -> str:
        need = "no number of prompts can (the gap is 0)" if self.needed is None else f"{self.needed} prompts needed"
        verdict = "resolves" if self.resolvable else "CANNOT resolve"
        return (f"n={self.n} {verdict} {what}: smallest detectable difference {self.detectable:{digits}}, "
                f"gap {self.gap:{digits}}, {need} ({STATED})")


def guidance(sd: float | None, n: int | None, gap: float) -> Guidance | None:
    """Guidance for n values of spread sd and an observed gap; None when n < 2 or sd is unknown."""
    if sd is None or n is None or n < 2 or not math.isfinite(sd):
        return None
    return Guidance(n, sd, detectable_difference(sd, n), abs(gap), prompts_needed(sd, gap))

"""How the report writes numbers: one format per table column, so a column never mixes 988.2 ms with 1.04 s, or
9.32e-05 with 0.000126, and a reader compares digits that line up. Pure Python.

The rules:
  * a column's decimals give its smallest non-zero value `sig` significant digits (3 unless said), and never fewer
    decimals than the metric registry's digits: every value of the column then has at least that many;
  * seconds: milliseconds when every value of the column is under a second, else seconds, the unit once in the
    header;
  * a "best" value is bold only when the digits shown make the reason visible: its interval, rounded as printed,
    must be clear of every other's (`separating_decimals` adds digits until it is, or says it cannot).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

MAX_DECIMALS = 8  # past this a difference is not one a reader should be asked to see


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def fmt_num(v: Any, digits: int = 3) -> str:
    """One number alone (a card, a caption): `digits` decimals, or 3 significant digits when that would hide it."""
    if v is None or not is_number(v):
        return "—"
    if not math.isfinite(v):
        return "∞" if v > 0 else ("−∞" if v < 0 else "NaN")
    if v != 0 and abs(v) < 10 ** -(digits - 1):
        # Near-identical images give LPIPS ~1e-5: fixed decimals would print 0.000 and hide the ranking.
        return f"{v:.3g}"
    return f"{v:.{digits}f}"


def fmt_seconds(v: Any) -> str:
    """One duration alone: milliseconds below one second, seconds above (a table column uses SecondsColumn)."""
    if not is_number(v):
        return "—"
    if abs(v) < 1:
        return f"{v * 1000:.1f} ms"
    if abs(v) < 100:
        return f"{v:.2f} s"
    return f"{v:.0f} s"


def decimals_for(values: Iterable[Any], sig: int = 3, at_least: int = 0, cap: int = MAX_DECIMALS) -> int:
    """Decimals that give the smallest non-zero finite |value| `sig` significant digits, at least `at_least`."""
    small = [abs(float(v)) for v in values if is_number(v) and math.isfinite(v) and v != 0]
    if not small:
        return max(at_least, 0)
    need = sig - 1 - math.floor(math.log10(min(small)))
    return min(max(need, at_least, 0), max(cap, at_least))


def fmt_fixed(v: Any, decimals: int) -> str:
    """`v` with exactly `decimals` decimals (a column's format); — for no value, ∞ and NaN spelled out."""
    if not is_number(v):
        return "—"
    if not math.isfinite(v):
        return "∞" if v > 0 else ("−∞" if v < 0 else "NaN")
    return f"{v:.{decimals}f}"


class SecondsColumn:
    """One unit and one number of decimals for a column of durations in seconds (None entries are ignored)."""

    def __init__(self, values: Iterable[Any], sig: int = 3) -> None:
        vals = [float(v) for v in values if is_number(v) and math.isfinite(v)]
        self.unit = "ms" if vals and max(abs(v) for v in vals) < 1 else "s"
        self.factor = 1000.0 if self.unit == "ms" else 1.0
        # Three significant digits for the smallest, but no more than a tenth of a millisecond: timer noise.
        self.decimals = min(decimals_for([v * self.factor for v in vals], sig), 1 if self.unit == "ms" else 4)

    def __call__(self, v: Any) -> str:
        """The number alone (the header carries the unit)."""
        return fmt_fixed(v * self.factor, self.decimals) if is_number(v) else "—"

    def with_unit(self, v: Any) -> str:
        return f"{self(v)} {self.unit}" if is_number(v) else "—"


def _rounded(interval: tuple[float, float], decimals: int) -> tuple[float, float]:
    return round(interval[0], decimals), round(interval[1], decimals)


def separating_decimals(best: tuple[float, float], others: list[tuple[float, float]], higher_is_better: bool,
                        start: int, cap: int = MAX_DECIMALS) -> int | None:
    """The fewest decimals (from `start`) at which `best`'s interval, rounded as printed, is clear of every interval
    in `others` on its good side: e.g. SSIM [0.99973, 0.99977] against [0.99969, 0.99971] needs 5, where 4 prints
    both as [0.9997, 0.9997] and a bold one would rest on digits the reader cannot see. None: not within `cap`."""
    for d in range(start, max(cap, start) + 1):
        lo, hi = _rounded(best, d)
        clear = all((lo > _rounded(o, d)[1]) if higher_is_better else (hi < _rounded(o, d)[0]) for o in others)
        if clear:
            return d
    return None


def intervals_clear(best: tuple[float, float], others: list[tuple[float, float]]) -> bool:
    """True when `best` shares no point with any interval of `others` (touching ends overlap)."""
    return all(o[1] < best[0] or o[0] > best[1] for o in others)

"""Memory and latency measurement, with the convention written down once (it goes into every manifest).

CUDA numbers come from torch's caching allocator of the worker process (one process per backend, so peaks are
clean). On CPU there is no such number: the CUDA fields are null with a reason, and the process's peak RSS is
reported under its own name.
"""

from __future__ import annotations

import resource
import statistics
import sys
from typing import Any

GIB = 2**30

MEMORY_CONVENTION: dict[str, Any] = {
    "unit": "GiB (2^30 bytes)",
    "source": "torch.cuda memory statistics of the worker process that loaded this backend (one process per backend)",
    "after_load_allocated_gib": "torch.cuda.memory_allocated() once the pipeline is loaded and placed (steady state)",
    "after_load_reserved_gib": "torch.cuda.memory_reserved() at the same point",
    "load_peak_allocated_gib": "torch.cuda.max_memory_allocated() over loading (quantize-on-load transients included); "
                               "this is what the seed blog printed as 'memory after loading' for max_memory_reserved",
    "load_peak_reserved_gib": "torch.cuda.max_memory_reserved() over loading",
    "peak_allocated_gib": "torch.cuda.max_memory_allocated() over warm-up and generation (peak stats reset after loading)",
    "peak_reserved_gib": "torch.cuda.max_memory_reserved() over warm-up and generation",
    "cpu_peak_rss_gib": "peak resident set size of the worker process (getrusage ru_maxrss); host RAM, not GPU memory",
    "charts": "charts state which of these they plot; the default is peak_reserved_gib (what decides whether a card fits)",
}


def cuda_reset_peak() -> None:
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()


def cuda_snapshot() -> dict[str, float]:
    import torch

    torch.cuda.synchronize()
    return {
        "allocated_gib": torch.cuda.memory_allocated() / GIB,
        "reserved_gib": torch.cuda.memory_reserved() / GIB,
        "max_allocated_gib": torch.cuda.max_memory_allocated() / GIB,
        "max_reserved_gib": torch.cuda.max_memory_reserved() / GIB,
    }


def peak_rss_gib() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return (r if sys.platform == "darwin" else r * 1024) / GIB


def current_rss_gib() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / GIB
    except (OSError, ValueError):
        return None


def latency_stats(samples: list[float], warmup_runs: int) -> dict[str, Any]:
    """Median and spread of per-image latency (warm-up runs are never in `samples`, which are in generation order).
    `first_vs_median`: the first measured image over the median, how far the warm-up left it from steady state."""
    if not samples:
        return {"warmup_runs": warmup_runs, "n": 0, "median_s": None, "reason": "no image generated"}
    s = sorted(samples)

    def q(p: float) -> float:
        # Linear interpolation between closest ranks (numpy's default), without needing numpy here.
        k = (len(s) - 1) * p
        lo, hi = int(k), min(int(k) + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (k - lo)

    return {
        "warmup_runs": warmup_runs,
        "n": len(s),
        "median_s": statistics.median(s),
        "mean_s": statistics.fmean(s),
        "std_s": statistics.stdev(s) if len(s) > 1 else 0.0,
        "min_s": s[0],
        "max_s": s[-1],
        "p10_s": q(0.1),
        "p90_s": q(0.9),
        "iqr_s": q(0.75) - q(0.25),
        "first_s": samples[0],
        "first_vs_median": samples[0] / statistics.median(s) if statistics.median(s) > 0 else None,
    }

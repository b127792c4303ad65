"""Peak memory a paired metric adds to score one large pair, per pixel, on the CPU: the figure each metric that
cannot work in bands declares (WORKING_BYTES_PER_PIXEL) so that score refuses a pair that would not fit, in one
line, instead of being killed. One fresh process per (metric, size); the peak RSS growth during compute() over the
process's RSS just before it, divided by the pair's pixels (h*w).

    .venv/bin/python benchmarks/metric_memory.py --sizes 1024 2048 --metrics lpips_alex lpips_vgg ms_ssim ssim psnr
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

def child(name: str, n: int) -> dict:
    import numpy as np

    from evalkit.metrics.color import DeltaE2000Metric
    from evalkit.metrics.lpips import LPIPSMetric
    from evalkit.metrics.psnr import PSNRMetric
    from evalkit.metrics.ssim import MSSSIMMetric, SSIMMetric

    make = {"lpips_alex": lambda: LPIPSMetric("alex"), "lpips_vgg": lambda: LPIPSMetric("vgg"),
            "ms_ssim": lambda: MSSSIMMetric(), "ssim": lambda: SSIMMetric(), "psnr": lambda: PSNRMetric(),
            "delta_e2000": lambda: DeltaE2000Metric()}[name]
    metric = make()
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (1, n, n, 3), dtype=np.uint8)
    b = np.clip(a.astype(np.int16) + rng.integers(-9, 10, a.shape, dtype=np.int16), 0, 255).astype(np.uint8)
    metric.compute(a[:, :192, :192], b[:, :192, :192])  # first-call allocations (thread pools, kernels) before the base
    base = _rss_kib()
    metric.compute(a, b)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"metric": name, "side": n, "base_kib": base, "peak_kib": peak,
            "bytes_per_pixel": (peak - base) * 1024 / (n * n)}


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--metrics", nargs="+", default=["lpips_alex", "lpips_vgg", "ms_ssim", "ssim", "psnr",
                                                     "delta_e2000"])
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]))))
        return 0
    rows = []
    for m in a.metrics:
        for n in a.sizes:
            out = subprocess.run([sys.executable, __file__, "--child", m, str(n)], capture_output=True, text=True)
            if out.returncode:
                print(f"{m} {n}: failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{m:12s} {n:5d}²  +{(row['peak_kib'] - row['base_kib']) / 2**20:6.2f} GiB  "
                  f"{row['bytes_per_pixel']:7.1f} B/px", flush=True)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Wall time of the README's main command on the embedded tiny model: `evalkit run prompts/styles.txt --model tiny`.

    python benchmarks/bench_tiny_run.py [--repeats 2]

Runs the real CLI in a subprocess into a fresh output directory each time, first with an empty evalkit cache
(the tiny model and metric weights are prepared on first use), then with the cache warm. Install time is
excluded. Prints a Markdown table; the target (issue 2) is <= 60 s on the 2-core CPU machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_run(cache: Path, out: Path) -> tuple[float, str]:
    env = dict(os.environ, EVALKIT_CACHE=str(cache), HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "evalkit", "run", "prompts/styles.txt", "--model", "tiny", "--out", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"evalkit run failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return wall, r.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2, help="warm-cache repeats")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        wall, last = one_run(cache, Path(tmp) / "run-cold")
        rows.append(("cold cache (tiny model + metric weights prepared)", wall))
        for i in range(a.repeats):
            wall, last = one_run(cache, Path(tmp) / f"run-warm-{i}")
            rows.append((f"warm cache, repeat {i + 1}", wall))
    print("# `evalkit run prompts/styles.txt --model tiny` wall time\n")
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average before: {os.getloadavg()[0]:.2f}\n")
    print("| case | wall s | target |\n|---|---|---|")
    for name, wall in rows:
        print(f"| {name} | {wall:.1f} | <= 60 |")
    print(f"\nlast line printed: `{last}`")


if __name__ == "__main__":
    main()

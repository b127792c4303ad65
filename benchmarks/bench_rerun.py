"""Wall time of an unchanged rerun of the README's main command, side by side for two source trees (issue #16.4).

    python benchmarks/bench_rerun.py --run RUN_DIR --tree OLD=/path/to/main --tree NEW=. [--rounds 5]

RUN_DIR must hold a finished `evalkit run prompts/styles.txt --model tiny --out RUN_DIR`. Each tree gets its own
copy of it (a rerun by one tree must not warm or rewrite the other's), is rerun once to settle (the first rerun by
a tree that stores input keys writes them), then the trees are timed in alternation, round by round, so that load
from other processes on a shared machine falls on both alike. Prints a Markdown table: median and min per tree,
and the ratio of medians.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rerun(tree: Path, run: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "evalkit", "run", "prompts/styles.txt", "--model", "tiny", "--out", str(run)],
                       cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{tree}: evalkit run failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, type=Path, help="a finished run of the README's tiny command")
    ap.add_argument("--tree", action="append", required=True, metavar="NAME=PATH", help="a source tree to time")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    trees = {k: Path(v).resolve() for k, v in (t.split("=", 1) for t in a.tree)}
    times: dict[str, list[float]] = {k: [] for k in trees}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for name, tree in trees.items():
            # --out is part of a run's recorded options: every copy lives at the same path, swapped in per rerun.
            runs[name] = Path(tmp) / name
            shutil.copytree(a.run, runs[name], symlinks=True)
        live = a.run.with_name(a.run.name + ".bench-original")
        a.run.rename(live)
        try:
            for name, tree in trees.items():
                runs[name].rename(a.run)
                try:
                    rerun(tree, a.run)  # settle: a tree that keys its inputs writes the keys now
                finally:
                    a.run.rename(runs[name])
            for _ in range(a.rounds):
                for name, tree in trees.items():
                    runs[name].rename(a.run)
                    try:
                        times[name].append(rerun(tree, a.run))
                    finally:
                        a.run.rename(runs[name])
        finally:
            live.rename(a.run)
    print(f"Unchanged rerun of `evalkit run prompts/styles.txt --model tiny` ({platform.node()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {a.rounds} alternating rounds)\n")
    print("| tree | median s | min s | all s |\n|---|---:|---:|---:|")
    for name, ts in times.items():
        print(f"| {name} ({trees[name]}) | {statistics.median(ts):.2f} | {min(ts):.2f} | "
              f"{', '.join(f'{t:.2f}' for t in ts)} |")
    if len(times) == 2:
        (n1, t1), (n2, t2) = times.items()
        print(f"\nratio {n1}/{n2} of medians: {statistics.median(t1) / statistics.median(t2):.1f}x")


if __name__ == "__main__":
    main()

"""Wall time of the README's main command on the embedded tiny model: `evalkit run prompts/styles.txt --model tiny`.

    python benchmarks/bench_tiny_run.py [--repeats 2]
    python benchmarks/bench_tiny_run.py --tree OLD=/path/to/old/checkout --tree NEW=. [--rounds 3] [--no-cold]
    python benchmarks/bench_tiny_run.py --env ONEDNN_MAX_CPU_ISA=AVX2 ...   # as a CPU without native bf16

`--env NAME=VALUE` (repeatable) is set for every run. `ONEDNN_MAX_CPU_ISA=AVX2` makes this AVX-512 machine's torch
decide as an AVX2-only CPU does: oneDNN then reports no bf16 support, so torch takes the same generic bf16 loops
(benchmarks/results/tiny-run-avx2-2026-12-05.md). The header names the CPU and the capability torch sees under
those variables.

Runs the real CLI in a subprocess into a fresh output directory each time, first with an empty evalkit cache
(the tiny model and metric weights are prepared on first use), then with the cache warm. Install time is
excluded. With --tree, each named source tree is timed in alternation, round by round, on one shared warm cache,
so that load from other processes on a shared machine falls on every tree alike.

Each run's output lines are timestamped as they arrive (PYTHONUNBUFFERED), which splits the wall time into stages:
start-up and planning (up to generate's header line), generation (up to `Results:`), score (up to `Metrics:`),
report (up to `Report:`), and exit. Prints Markdown tables; the target (issue #24) is <= 60 s warm on a 2-core
AVX2-only CPU machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 60.0
# (stage, the first output line that ends it); a stage that printed nothing is folded into the next one.
STAGE_ENDS = [("start-up", re.compile(r"^evalkit generate ")), ("generate", re.compile(r"^Results: ")),
              ("score", re.compile(r"^Metrics: ")), ("report", re.compile(r"^Report: "))]
FIGURES_LINE = re.compile(r"^report: (\d+) figures .* in ([0-9.]+) s")


EXTRA_ENV: dict[str, str] = {}  # --env
EXTRA_ARGS: list[str] = []  # --args: appended to the README's command (e.g. a subset of backends)


def cpu_description() -> str:
    """The CPU's model name, and the capability and bf16 support torch reports under this run's variables."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    probe = ("import torch; print(torch.backends.cpu.get_cpu_capability(), "
             "bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))")
    out = subprocess.run([sys.executable, "-c", probe], env=dict(os.environ, **EXTRA_ENV), capture_output=True,
                         text=True).stdout.split()
    seen = f"torch capability {out[0]}, oneDNN bf16 {'yes' if out[1] == 'True' else 'no'}" if len(out) == 2 else "?"
    extra = " ".join(f"{k}={v}" for k, v in EXTRA_ENV.items())
    return f"{model}, {seen}" + (f" (under {extra})" if extra else "")


def one_run(tree: Path, cache: Path, out: Path, tree_env: dict[str, str] | None = None) -> dict[str, float]:
    """Run the README's command from `tree` (its own code first on PYTHONPATH); wall, stage and figure seconds."""
    env = dict(os.environ, EVALKIT_CACHE=str(cache), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(tree), **EXTRA_ENV, **(tree_env or {}))
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.Popen([sys.executable, "-m", "evalkit", "run", "prompts/styles.txt", "--model", "tiny",
                          "--out", str(out), *EXTRA_ARGS], cwd=tree, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert p.stdout is not None
    marks: dict[str, float] = {}
    tail: list[str] = []
    figures = float("nan")
    for line in p.stdout:
        now = time.perf_counter() - t0
        tail = (tail + [line])[-60:]
        for stage, pattern in STAGE_ENDS:
            if stage not in marks and pattern.match(line):
                marks[stage] = now
        m = FIGURES_LINE.match(line)
        if m:
            figures = float(m.group(2))
    rc = p.wait()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        raise SystemExit(f"{tree}: evalkit run failed ({rc}):\n{''.join(tail)[-3000:]}")
    # CPU seconds of the whole process tree (workers are reaped by their forkserver, it by the stage): on a shared,
    # loaded machine far steadier than wall time, which other processes' load stretches.
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    row = {"wall": wall, "figures": figures, "cpu": cpu}
    before = 0.0
    for stage, _ in STAGE_ENDS:
        if stage in marks:
            row[stage] = marks[stage] - before
            before = marks[stage]
    row["exit"] = wall - before
    return row


def _fmt(v: float | None) -> str:
    return "-" if v is None or v != v else f"{v:.1f}"


def _table(rows: list[tuple[str, dict[str, float]]]) -> str:
    cols = [s for s, _ in STAGE_ENDS] + ["exit"]
    out = ["| case | wall s | CPU s | " + " | ".join(cols) + " | of which figures |",
           "|---|---:|---:|" + "---:|" * len(cols) + "---:|"]
    for name, r in rows:
        out.append(f"| {name} | {r['wall']:.1f} | {_fmt(r.get('cpu'))} | " + " | ".join(_fmt(r.get(c)) for c in cols)
                   + f" | {_fmt(r.get('figures'))} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2, help="warm-cache repeats (without --tree)")
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                    help="a source tree to time (repeat to compare trees in alternating rounds)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating warm rounds per tree (with --tree)")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-cache run (with --tree: the cache is "
                    "warmed by an untimed run of the first tree)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="an evalkit cache a tiny run has already filled: no cold or warming run at all")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="an environment variable for every run (repeat), e.g. ONEDNN_MAX_CPU_ISA=AVX2")
    ap.add_argument("--args", default="", help="extra arguments for `evalkit run`, e.g. '--backends bf16,gguf-q8_0' "
                    "(then it is no longer the README's command: the table says so)")
    ap.add_argument("--tree-env", action="append", default=[], metavar="NAME=VAR=VALUE",
                    help="an environment variable for the runs of tree NAME only (repeat): time one tree natively "
                         "and as a CPU without native bf16 in alternation, e.g. --tree native=. --tree avx2=. "
                         "--tree-env avx2=ONEDNN_MAX_CPU_ISA=AVX2")
    a = ap.parse_args()
    tree_envs: dict[str, dict[str, str]] = {}
    for item in a.tree_env:
        name, var, value = item.split("=", 2)
        tree_envs.setdefault(name, {})[var] = value
    EXTRA_ENV.update(dict(e.split("=", 1) for e in a.env))
    EXTRA_ARGS.extend(a.args.split())
    trees = {k: Path(v).resolve() for k, v in (t.split("=", 1) for t in a.tree)} or {"this tree": REPO}
    load_before = os.getloadavg()[0]
    rows: list[tuple[str, dict[str, float]]] = []
    per_tree: dict[str, list[float]] = {k: [] for k in trees}
    per_tree_cpu: dict[str, list[float]] = {k: [] for k in trees}
    with tempfile.TemporaryDirectory() as tmp:
        cache = a.cache.resolve() if a.cache else Path(tmp) / "cache"
        if a.cache is None:
            cold = one_run(next(iter(trees.values())), cache, Path(tmp) / "run-cold")
            if not a.no_cold:
                rows.append(("cold cache (tiny model + metric weights prepared)", cold))
        rounds = a.rounds if a.tree else a.repeats
        for i in range(rounds):
            for name, tree in trees.items():
                r = one_run(tree, cache, Path(tmp) / f"run-{i}-{len(rows)}", tree_envs.get(name))
                per_tree[name].append(r["wall"])
                per_tree_cpu[name].append(r["cpu"])
                rows.append((f"warm, {name}, round {i + 1}" if a.tree else f"warm cache, repeat {i + 1}", r))
                print(f"{rows[-1][0]}: wall {r['wall']:.1f} s, CPU {r['cpu']:.1f} s, load {os.getloadavg()[0]:.2f}",
                      file=sys.stderr, flush=True)  # kept if a later run is stopped
    print(f"# `evalkit run prompts/styles.txt --model tiny{' ' + a.args if a.args else ''}` wall time\n")
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_description()}, "
          f"{os.cpu_count()} cores, load average before: {load_before:.2f}, after: {os.getloadavg()[0]:.2f}\n")
    for name, extra in tree_envs.items():
        print(f"- {name} runs under {' '.join(f'{k}={v}' for k, v in extra.items())}\n")
    print(_table(rows))
    print(f"\nwarm medians (target <= {TARGET_S:.0f} s on a quiet 2-core AVX2-only machine):")
    for name, ts in per_tree.items():
        cpus = per_tree_cpu[name]
        print(f"- {name} ({trees[name]}): median {statistics.median(ts):.1f} s, min {min(ts):.1f} s over {len(ts)}; "
              f"CPU median {statistics.median(cpus):.1f} s")
    if len(per_tree) == 2:
        (n1, t1), (n2, t2) = per_tree.items()
        c1, c2 = per_tree_cpu[n1], per_tree_cpu[n2]
        print(f"- ratio {n2}/{n1} of medians: wall {statistics.median(t2) / statistics.median(t1):.3f}, "
              f"CPU {statistics.median(c2) / statistics.median(c1):.3f}")


if __name__ == "__main__":
    main()

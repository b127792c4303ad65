"""`--gpus`/`--jobs`: the generate stage started as ranks on this machine (torchrun underneath, evalkit.dist).

Used by the CLI, the Python API and calibration's sub-runs; imports nothing heavy.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import evalkit.dist as dist
from evalkit.generate.options import GenerateOptions


def local_ranks_wanted(opts: GenerateOptions) -> int:
    """How many ranks `--gpus`/`--jobs` ask for on this machine; 1 inside a launched world (the launcher decided)."""
    if dist.launched() or dist.world().distributed:
        return 1
    return len(opts.gpus) if opts.gpus else max(1, opts.jobs)


def launch_ranks(argv: list[str], opts: GenerateOptions, n: int) -> int:
    """Run `evalkit <argv>` as n ranks (torchrun --standalone) on this machine; returns torchrun's exit code. CPU
    ranks share the cores (OMP_NUM_THREADS per rank; each rank's workers get the same share, ranks.worker_threads)."""
    threads = None if opts.gpus else max(1, (os.cpu_count() or 1) // n)
    print(f"evalkit: starting {n} ranks on this machine (torchrun --standalone"
          f"{', GPUs ' + ','.join(opts.gpus) if opts.gpus else ''})", file=sys.stderr, flush=True)
    return dist.launch_local(argv, n, gpus=opts.gpus or None, threads_per_rank=threads)


def generate_argv(opts: GenerateOptions) -> list[str]:
    """The `evalkit generate` command line asking for `opts` (what the ranks run)."""
    return ["generate", *opts.to_argv()]


def launched_run_dir(opts: GenerateOptions) -> Path | None:
    """The run directory the ranks wrote: --out, else the newest auto-named one for these prompts and model."""
    from evalkit.generate.uptodate import run_dir_candidates

    found = [p for p in run_dir_candidates(opts) if (p / "manifest.json").is_file()]
    return max(found, key=lambda p: (p / "manifest.json").stat().st_mtime_ns).resolve() if found else None

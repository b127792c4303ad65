"""The generate stage: write the manifest, then run one worker process per backend and collect their records.

Resumable: the run directory name is derived from the run's settings, so rerunning the same command finds the
same directory; finished backends are skipped and unfinished ones continue from their last written image.

Its parts: evalkit/generate/options.py (the options), prepare.py (validation and the manifest, on rank 0),
ranks.py (plan, work and merge across ranks), launch.py (--gpus/--jobs start ranks), console.py (its tables).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path
from typing import Any

from evalkit.families.base import ModelFamily
from evalkit.families.registry import family_of_spec, resolve_model
from evalkit.generate import ranks
from evalkit.generate.console import print_generation_table
from evalkit.generate.options import GenerateOptions
# Re-exported: the stage's public names from before prepare.py held them (tests, benchmarks, users' scripts).
from evalkit.generate.prepare import (IDENTITY_KEYS, detect_device, load_config, package_versions,  # noqa: F401
                                      prepare_run, token_counts, versioned_packages)
from evalkit.generate.spawn import start_forkserver, stop_forkserver, worker_mode
from evalkit.records import read_summary
from evalkit.rundir import RunDir

__all__ = ["GenerateOptions", "print_unchanged", "run_generate"]


def run_generate(opts: GenerateOptions, console: Any = None) -> Path:
    """Run the generate stage on this rank; returns the run directory. A world of one is rank 0 of 1: it plans,
    runs its units and merges, as rank 0 of N does (evalkit/generate/ranks.py). Rank 0 holds the run directory's
    lock throughout, and the forkserver is stopped at the end however the stage ends (a failed validation leaves
    no process behind)."""
    from rich.console import Console

    # Logs and CI capture stderr: give tables room instead of rich's 80-column default off a terminal.
    console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 140)
    starters: list[threading.Thread] = []

    def start_early() -> None:
        if worker_mode() == "forkserver" and not starters:
            # Importing torch/diffusers into the forkserver takes seconds; do it while the manifest is being prepared.
            fam = family_of_spec(opts.model)  # None for a directory: its family's modules load per worker
            starters.append(threading.Thread(target=start_forkserver, args=(fam.key if fam else None,
                                                                             _tokenizers_to_preload(opts, fam)),
                                             daemon=True))
            starters[0].start()

    finished = False
    root: Path | None = None
    try:
        with contextlib.ExitStack() as lock, ranks.sigterm_as_interrupt():
            rd, manifest, schedule = ranks.plan_and_share(opts, lock, console, start_early)
            root = rd.root
            from evalkit.logs import attach_run_log

            attach_run_log(root, "generate")
            ranks.run_and_merge(opts, rd, manifest, schedule, console)
            finished = True
            return rd.root
    finally:
        for t in starters:
            t.join()
        # After an error the forkserver may still be importing libraries it will never use: kill it, don't wait.
        stop_forkserver(kill=not finished)
        _keep_forkserver_log(root)


def _tokenizers_to_preload(opts: GenerateOptions, fam: ModelFamily | None) -> tuple[str, tuple[str, ...]] | None:
    """(pipeline directory, tokenizer components) when the model is already on disk (a tiny or random build made
    by an earlier run, a cached hub snapshot); None when it is not yet (each worker then loads its own)."""
    if fam is None:
        return None
    try:
        path = resolve_model(opts.model, build=False).path
    except Exception:  # noqa: BLE001 - not here yet, or not resolvable: planning says so properly
        return None
    if not (Path(path) / "model_index.json").is_file():
        return None
    return path, tuple(t.subfolder for t in fam.tokenizers)


def _keep_forkserver_log(root: Path | None) -> None:
    """What the forkserver's imports printed goes into logs/generate.log (deleted when no run directory exists)."""
    from evalkit.generate.spawn import forkserver_log
    from evalkit.logs import PENDING_LOG_ENV, move_pending_log

    pending = forkserver_log()
    if pending is None:
        return
    os.environ.pop(PENDING_LOG_ENV, None)
    if root is None:
        pending.unlink(missing_ok=True)
        return
    try:
        move_pending_log(pending, root / "logs" / "generate.log", "third-party output of the worker forkserver's imports")
    except OSError:
        pass  # a log that cannot be written must not fail a finished stage


def print_unchanged(root: Path, console: Any = None) -> None:
    """What an unchanged rerun shows: one line, then the generation table read back from summary.json."""
    from rich.console import Console

    console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 140)
    console.print(f"[bold]evalkit generate[/]: nothing to do in {root}: every backend's images are in place and "
                  "unchanged since they were recorded")
    print_generation_table(console, read_summary(RunDir(root).summary))

"""A worker's start-up: from the stage asking for the process to the start of the load clock, in the record's
`startup` (docs/run-directory.md), so that the fixed cost every work unit pays again is measured, not guessed (#25
item 7; on 2 H200s on 2026-11-29 it was 10-13 s a unit, benchmarks/results/scale-h200x2-2026-11-29.md).

Phases: `spawn_s` (the fork from the forkserver, or a fresh interpreter's start-up and imports), `setup_s` (the
manifest, plugins, numerics), `cuda_context_s` (the CUDA context; None on a CPU), `imports_s` (the family's pipeline
module and the backend's library, when the forkserver had not imported them: `preloaded`), `tokenizers_s`; `total_s`
is all of it. A library's one-time prepare step (a kernel build) is not start-up: it has its own record, `prepare`.

Also here: how a forked worker finds out that its forkserver initialized CUDA (PoisonedFork).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

# Set by the stage on each worker's environment: time.time() when it asked for the process.
SPAWNED_AT_ENV = "EVALKIT_SPAWNED_AT"

_entered: dict[str, Any] = {}


class PoisonedFork(Exception):
    """This forked worker cannot use CUDA: its forkserver created a CUDA context before forking."""


def entered(mode: str) -> None:
    """Called first thing in a worker process; `mode` is "forkserver" or "subprocess"."""
    _entered.update(mode=mode, at=time.time(), perf=time.perf_counter())


def forked() -> bool:
    return _entered.get("mode") == "forkserver"


def begin(family_modules: tuple[str, ...]) -> dict[str, Any]:
    """The record's `startup` so far: how the worker was started, whether the forkserver had already imported the
    family's modules (its pipeline and text encoders: ModelFamily.preload_modules), and the seconds from the stage's
    request to the worker's first line."""
    asked = os.environ.get(SPAWNED_AT_ENV)
    try:
        spawned_at = float(asked) if asked else None
    except ValueError:
        spawned_at = None
    at = _entered.get("at")
    return {"worker_mode": _entered.get("mode", "in-process"),
            "preloaded": bool(family_modules) and all(m in sys.modules for m in family_modules),
            "spawn_s": None if spawned_at is None or at is None else round(max(0.0, at - spawned_at), 3),
            "setup_s": None, "cuda_context_s": None, "imports_s": None, "tokenizers_s": None, "total_s": None}


def since_entry() -> float | None:
    """Seconds since `entered` (None when it was not called: a worker run in the stage's own process, in tests)."""
    perf = _entered.get("perf")
    return None if perf is None else time.perf_counter() - perf


def finish(startup: dict[str, Any]) -> dict[str, Any]:
    """Fill `total_s` once the load clock is about to start: from the stage's request when known, else from the
    worker's first line."""
    since = since_entry()
    if since is not None:
        startup["total_s"] = round(since + (startup.get("spawn_s") or 0.0), 3)
    return startup


def cuda_capability(torch: Any) -> tuple[int, int]:
    """The GPU's compute capability; creating the CUDA context, which is timed as start-up. In a forked worker a
    CUDA that its forkserver initialized fails here ("initialization error" when a library called the driver
    directly, "forked subprocess" when torch did): raised as PoisonedFork so the stage reruns the unit elsewhere."""
    try:
        return tuple(torch.cuda.get_device_capability())
    except RuntimeError as e:
        text = str(e)
        if forked() and ("forked subprocess" in text or "initialization error" in text):
            raise PoisonedFork(text.splitlines()[0] if text else "CUDA unusable in this fork") from e
        raise

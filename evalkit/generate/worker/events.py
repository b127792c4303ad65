"""Where a worker's progress events go: JSON lines on stdout (subprocess mode, read by the stage), or the
multiprocessing pipe of a process forked from the forkserver (evalkit.generate.worker.run.forked_main connects it).

A module of its own so that every part of the worker (the load in run.py, the image loop in images.py) reports
through the one channel the process was given.
"""

from __future__ import annotations

import json
from typing import Any

# Where progress events go: stdout JSON lines (subprocess mode) or a multiprocessing pipe (forkserver mode).
_event_conn: Any = None


def connect(conn: Any) -> None:
    """Send this process's events through `conn` (a forked worker's pipe to the stage) instead of stdout."""
    global _event_conn
    _event_conn = conn


def emit(event: str, **data: Any) -> None:
    msg = {"event": event, **data}
    if _event_conn is not None:
        try:
            _event_conn.send(msg)
        except (BrokenPipeError, OSError):
            pass
        return
    print(json.dumps(msg), flush=True)

"""Child processes that end with the process that started them: a killed stage or launcher leaves no worker or rank
running on, holding a GPU or the run directory's lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any, Mapping, Sequence

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(expected_parent: int | None = None, sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send this process `sig` when its parent dies. Returns whether it was set (False off Linux). With
    `expected_parent`, a parent that died before the request (this process was re-parented) ends this one now."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if expected_parent is not None and os.getppid() != expected_parent:  # too late: the signal will never come
        os.kill(os.getpid(), sig)
    return True


def call_tied(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """`subprocess.call(cmd)`, but the child dies with this process (PR_SET_PDEATHSIG), and a SIGTERM or Ctrl-C to
    this process is passed on to the child and waited for, so torchrun can stop its ranks and they release the run
    directory's lock."""
    parent = os.getpid()
    proc = subprocess.Popen(list(cmd), env=dict(env) if env is not None else None,
                            preexec_fn=lambda: die_with_parent(parent))  # noqa: PLW1509 - only prctl, fork-safe
    previous: dict[int, Any] = {}

    def forward(signum: int, _frame: Any) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, forward)
        except ValueError:  # not the main thread: the death signal still ties the child to us
            pass
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

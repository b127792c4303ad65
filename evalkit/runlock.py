"""Who owns a run directory, and who is writing to it now.

- `check_ownership(root)`: evalkit writes only into a new or empty directory or one that holds an evalkit run
  (manifest.json); anything else is the user's and is refused with one line, before a byte is written.
- `acquire(root, stage=...)`: a lock file in the run directory, held while a stage writes there. It is created with
  O_CREAT|O_EXCL (atomic on local filesystems and NFSv3+, unlike flock, which some network filesystems ignore) and
  holds the holder's pid, host, stage and start time as JSON. A second process refuses, naming the holder. A lock
  whose pid is dead on this host is stale and is taken over; a lock held from another host cannot be checked from
  here, so it is refused with how to break it (`--break-lock`) or wait for it (`--lock-timeout SECONDS`).

Every stage that writes into a run directory takes the lock (generate here; score and report at the lead's merge).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from evalkit.errors import EvalkitError
from evalkit.timeutil import utc_now

LOCK_NAME = ".evalkit.lock"
MANIFEST_NAME = "manifest.json"
# Files evalkit itself may leave in a directory before its manifest exists: still "empty" for ownership.
_OWN_FILES = {LOCK_NAME, ".evalkit-write-test"}
# A lock file with no readable content is a creator killed between create and write; older than this, it is stale.
UNREADABLE_LOCK_GRACE_S = 30.0
POLL_S = 0.5


class RunLockError(EvalkitError):
    """The run directory is locked by another process (or is not evalkit's)."""


@dataclass(frozen=True)
class LockHolder:
    pid: int
    host: str
    stage: str
    started_utc: str
    token: str
    pid_start: str | None = None  # the process's start time (/proc), so a reused pid is not taken for the holder

    def describe(self) -> str:
        return f"{self.stage} stage, pid {self.pid} on host {self.host}, since {self.started_utc}"


def check_ownership(root: str | os.PathLike[str]) -> None:
    """Refuse a directory evalkit does not own: existing, not empty, and without a manifest.json."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise EvalkitError(f"{root}: exists and is not a directory; choose another --out")
    if not root.is_dir() or (root / MANIFEST_NAME).exists():
        return
    others = sorted(p.name for p in root.iterdir() if p.name not in _OWN_FILES)
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise EvalkitError(f"{root}: not an evalkit run directory (no {MANIFEST_NAME}) and not empty ({shown}); "
                           "evalkit writes only into a new or empty directory or an existing run: choose another --out")


def _pid_start(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _read(path: Path) -> LockHolder | None:
    """The holder a lock file names, or None when it cannot be read or is not a lock evalkit wrote (a mangled file
    is judged like one still being written: stale after UNREADABLE_LOCK_GRACE_S)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        holder = LockHolder(**{k: data[k] for k in ("pid", "host", "stage", "started_utc", "token")},
                            pid_start=data.get("pid_start"))
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    if not (isinstance(holder.pid, int) and not isinstance(holder.pid, bool) and holder.pid > 0
            and all(isinstance(v, str) for v in (holder.host, holder.stage, holder.started_utc, holder.token))
            and (holder.pid_start is None or isinstance(holder.pid_start, str))):
        return None
    return holder


def _is_stale(holder: LockHolder | None, path: Path) -> bool:
    if holder is None:
        try:
            return time.time() - path.stat().st_mtime > UNREADABLE_LOCK_GRACE_S
        except FileNotFoundError:
            return True
    if holder.host != socket.gethostname():
        return False  # cannot see another host's processes
    if not _pid_alive(holder.pid):
        return True
    return holder.pid_start is not None and _pid_start(holder.pid) not in (None, holder.pid_start)


def _take_away(path: Path, judged: LockHolder | None) -> None:
    """Remove the lock file judged stale (or broken on request), without removing a newer one that replaced it
    meanwhile: rename it aside (atomic, only one process wins), then check it is the one judged."""
    aside = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.removed")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    now = _read(aside)
    if judged is not None and (now is None or now.token != judged.token):
        # Another process took the lock between our look and our rename: put its lock back.
        with contextlib.suppress(OSError):
            os.link(aside, path)
    aside.unlink(missing_ok=True)


def _try_create(path: Path, holder: LockHolder) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(holder.__dict__, f)
        f.flush()
        os.fsync(f.fileno())
    return True


@contextlib.contextmanager
def acquire(run_dir: str | os.PathLike[str], stage: str, break_lock: bool = False,
            timeout_s: float = 0.0) -> Iterator[LockHolder]:
    """Hold the run directory's lock for `stage` while the block runs. Waits up to `timeout_s` for another holder;
    `break_lock` removes any lock first (the user's call, when they know the holder is gone)."""
    root = Path(run_dir)
    path = root / LOCK_NAME
    me = LockHolder(pid=os.getpid(), host=socket.gethostname(), stage=stage,
                    started_utc=utc_now(), token=uuid.uuid4().hex,
                    pid_start=_pid_start(os.getpid()))
    root.mkdir(parents=True, exist_ok=True)
    if break_lock and path.exists():
        _take_away(path, None)
    deadline = time.monotonic() + max(0.0, timeout_s)
    while not _try_create(path, me):
        holder = _read(path)
        if _is_stale(holder, path):
            _take_away(path, holder)
            continue
        if time.monotonic() >= deadline:
            raise RunLockError(_refusal(root, holder, timeout_s))
        time.sleep(POLL_S)
    try:
        yield me
    finally:
        held = _read(path)
        if held is not None and held.token == me.token:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _refusal(root: Path, holder: LockHolder | None, timeout_s: float) -> str:
    who = holder.describe() if holder else "a process whose lock file is still being written"
    waited = f" (waited {timeout_s:g} s)" if timeout_s > 0 else ""
    where = "" if holder is None or holder.host == socket.gethostname() else " on another host, which evalkit cannot check"
    return (f"{root}: in use by the {who}{where}{waited}; wait for it with --lock-timeout SECONDS, or, if that "
            f"process is gone, rerun with --break-lock (lock file {root / LOCK_NAME})")


def holder_of(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The current lock holder's fields, or None (for `evalkit` status messages and tests)."""
    h = _read(Path(run_dir) / LOCK_NAME)
    return None if h is None else dict(h.__dict__)


"""Atomic file writes and content hashes. A killed run never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from evalkit.errors import EvalkitError, WriteError


def _read_umask() -> int:
    # The only portable read of the umask is to set it and set it back: done once, at import, before any stage starts
    # threads (setting it later could give another thread's new file mode 0666).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a torn one.

    A full disk or an unwritable path raises WriteError (an EvalkitError and an OSError) naming `path` in one line,
    and leaves neither a temp file nor a torn `path` behind.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # pid in the name says whose it is; mkstemp's random part and O_EXCL make it unique across processes and
        # threads, even on a shared file system where two hosts may have the same pid.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked (signals, some file systems)
                view = view[os.write(fd, view):]
            # mkstemp creates 0600; a report, summary or table is the user's file and gets the umask's mode.
            os.fchmod(fd, 0o666 & ~UMASK)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        if isinstance(e, WriteError):
            raise
        raise WriteError(path, e) from None
    finally:
        if tmp is not None:  # failed or interrupted before the rename: the target is untouched
            try:
                os.unlink(tmp)
            except OSError:
                pass


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_json(obj: Any, sort_keys: bool = True) -> str:
    return json.dumps(obj, indent=2, sort_keys=sort_keys, ensure_ascii=False, allow_nan=False, default=_json_default) + "\n"


def _json_default(o: Any) -> Any:
    # numpy scalars and paths show up in records; everything else is a bug worth seeing.
    if hasattr(o, "item") and callable(o.item):
        return o.item()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_write_json(path: str | os.PathLike[str], obj: Any, sort_keys: bool = True) -> None:
    """Keys are sorted (stable diffs) unless the order carries meaning, as in summary.json's backend order."""
    atomic_write_text(path, to_json(obj, sort_keys=sort_keys))


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read JSON, naming the file (and line) when it is not valid."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvalkitError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise EvalkitError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise EvalkitError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    except RecursionError:
        raise EvalkitError(f"{path}: invalid JSON (nested too deeply to be a file evalkit wrote)") from None


def append_jsonl(path: str | os.PathLike[str], obj: Any) -> None:
    """Append one JSON line and fsync it. A torn last line (killed mid-write, disk full) is skipped by read_jsonl.

    A torn line has no newline, so the next append starts a new line first; otherwise the torn line would swallow
    the good one after it. Write failures raise WriteError naming the file.
    """
    path = Path(path)
    line = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=_json_default) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: an append must never go through a symbolic link to a file outside the run directory
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        with os.fdopen(fd, "a+b") as f:
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = "\n" + line
            f.write(line.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if isinstance(e, WriteError):
            raise
        raise WriteError(path, e) from None


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML config file, naming the file (and line) when it is missing or not valid."""
    import tomllib

    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalkitError(f"{path}: config file not found") from None
    except UnicodeDecodeError as e:
        raise EvalkitError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise EvalkitError(f"{path}: invalid TOML: {e}") from None


def read_jsonl(path: str | os.PathLike[str]) -> list[Any]:
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a kill
    return out


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def file_lock(target: str | os.PathLike[str]) -> Iterator[None]:
    """Serialise work on `target` across processes (parallel workers or tests building the same cached file)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)

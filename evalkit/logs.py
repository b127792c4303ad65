"""Where third-party chatter goes: the run's log files, not the console (issue #16.3).

torchao, torch._pytree, transformers and bitsandbytes print notices when they are imported or load a model (a
missing CUDA kernel library, a deprecation, "torchvision not installed"). They say nothing about the run and, on a
resumed run, land in the middle of evalkit's progress lines. evalkit's own lines and errors are never redirected.

- The generate stage's forkserver imports those libraries; it sends its stdout/stderr to a pending log file
  (evalkit.generate.quiet_preload), which the stage appends to `logs/generate.log` once the run directory exists.
  Backend workers already write to `logs/<backend>.log`.
- In the evalkit process itself, Python warnings raised by other packages are captured through logging and written
  to `logs/<stage>.log` (buffered until the run directory is known).
- `evalkit -v ...` (EVALKIT_VERBOSE=1, inherited by every process evalkit starts) leaves all of it on the console.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

from evalkit.timeutil import utc_now

VERBOSE_ENV = "EVALKIT_VERBOSE"
# Set for the forkserver: the file its preloaded imports write to until the stage moves it into the run directory.
PENDING_LOG_ENV = "EVALKIT_PENDING_LOG"


def set_verbose(verbose: bool) -> None:
    """Record `-v` in the environment, so processes evalkit starts (forkserver, workers) see it too."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def new_pending_log(stage: str) -> Path:
    """An empty file third-party output can go to before the run directory exists."""
    fd, name = tempfile.mkstemp(prefix=f"evalkit-{stage}-", suffix=".log")
    os.close(fd)
    return Path(name)


def move_pending_log(pending: Path, dest: Path, title: str) -> None:
    """Append what `pending` collected to `dest` under a dated header (nothing when it is empty), then delete it."""
    try:
        text = pending.read_bytes()
    except OSError:
        return
    if text.strip():
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "ab") as f:
            f.write(f"\n=== {utc_now()} {title} ===\n".encode())
            f.write(text)
    pending.unlink(missing_ok=True)


def redirect_process_output(path: str | os.PathLike[str]) -> None:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so C libraries too) to `path`."""
    import sys

    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


class _Buffer(logging.Handler):
    """Keeps records until a run directory is known, then writes them there (and every later one directly)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.path: Path | None = None
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record) + "\n"
        if self.path is None:
            self.lines.append(line)
            return
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError:
            self.lines.append(line)

    def attach(self, path: Path) -> None:
        self.path = path
        if self.lines:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.writelines(self.lines)
            self.lines = []


_HANDLER: _Buffer | None = None


def capture_third_party_warnings() -> None:
    """Route Python warnings from other packages to the run's log (evalkit's own warnings stay on the console).
    Does nothing with -v."""
    global _HANDLER
    if is_verbose() or _HANDLER is not None:
        return
    _HANDLER = _Buffer()
    original = warnings.showwarning
    logging.captureWarnings(True)
    logger = logging.getLogger("py.warnings")
    logger.addHandler(_HANDLER)
    logger.propagate = False
    shown = warnings.showwarning  # logging's replacement: writes to the py.warnings logger

    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if "/evalkit/" in filename.replace(os.sep, "/"):
            return original(message, category, filename, lineno, file, line)
        return shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def attach_run_log(run_root: str | os.PathLike[str], stage: str) -> None:
    """From now on (and for what was buffered) captured warnings go to `<run>/logs/<stage>.log`."""
    if _HANDLER is not None:
        _HANDLER.attach(Path(run_root) / "logs" / f"{stage}.log")

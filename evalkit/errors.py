"""Errors that reach the user as one clear line (the CLI prints them without a traceback)."""

from __future__ import annotations

import errno


class EvalkitError(Exception):
    """A problem with the user's input or environment. The message names what is wrong and how to fix it."""

    exit_code = 2


class MissingWeightsError(EvalkitError):
    """Weights a model or metric needs are not on this machine (evalkit never downloads silently)."""


class WriteError(EvalkitError, OSError):
    """A file could not be written (full disk, read-only or unwritable path). Also an OSError, so code that
    already tolerates a failed write (a read-only cache) keeps doing so; `errno` is the original one."""

    def __init__(self, path: object, err: OSError) -> None:
        reason = err.strerror or type(err).__name__
        hint = {errno.ENOSPC: "free some space and rerun the same command to resume",
                errno.EDQUOT: "free some space (disk quota) and rerun the same command to resume"}.get(err.errno or 0, "")
        OSError.__init__(self, err.errno, f"{path}: cannot write ({reason})" + (f"; {hint}" if hint else ""))
        self.path = path

    def __str__(self) -> str:
        return str(self.strerror)


def suggest(name: str, choices: list[str] | tuple[str, ...], n: int = 3) -> str:
    """' Did you mean: a, b?' for the closest names, or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""

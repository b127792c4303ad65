"""Errors that reach the user as one clear line (the CLI prints them without a traceback)."""

from __future__ import annotations


class EvalkitError(Exception):
    """A problem with the user's input or environment. The message names what is wrong and how to fix it."""

    exit_code = 2


class MissingWeightsError(EvalkitError):
    """Weights a model or metric needs are not on this machine (evalkit never downloads silently)."""


def suggest(name: str, choices: list[str] | tuple[str, ...], n: int = 3) -> str:
    """' Did you mean: a, b?' for the closest names, or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""

"""Plain progress lines for a log: what generate and score print off a terminal, where rich shows nothing until
the end (a cluster job's log, CI).

Each line is one write, flushed: the ranks of a run share one log, and print()'s separate newline would
interleave with another rank's line. A printer prints at most one progress line every `every_s` seconds, plus
always the last one.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


class PlainLines:
    """One printer's stream, clock and pace (see the module docstring)."""

    def __init__(self, every_s: float, stream: TextIO | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.every_s = every_s
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock or time.monotonic
        self.last = -float("inf")  # when the last paced line was printed

    def due(self, last: bool = False) -> bool:
        """Whether a paced line may be printed now (and, if so, count it as printed): `every_s` have passed since
        the last one, or this is the `last` line."""
        now = self.clock()
        if not last and now - self.last < self.every_s:
            return False
        self.last = now
        return True

    def write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

"""What a rank shows while its units run: rich bars on a terminal, plain lines off one (cluster logs, CI).

Off a terminal rich prints nothing until the end (environment.md, 2026-11-28), so each rank prints plain lines
instead: phase lines (loading, loaded in X s, warm-up, done/failed with the reason) and a line per finished image,
at most one every PLAIN_EVERY_S per rank plus always a unit's last:

    [rank 1/4 w4-r1] bf16 3/8 images (this unit) 0.11 img/s ETA 45 s

Rank 0 also prints a study-wide line at most every STUDY_EVERY_S, counted from every rank's shard files on the
shared filesystem (`StudyProgress`).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable, TextIO

from evalkit.dist import World
from evalkit.io import read_json, read_jsonl
from evalkit.rundir import RunDir

PLAIN_EVERY_S = 10.0
STUDY_EVERY_S = 30.0


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA ?"
    if seconds < 120:
        return f"ETA {seconds:.0f} s"
    if seconds < 7200:
        return f"ETA {seconds / 60:.0f} min"
    return f"ETA {seconds / 3600:.1f} h"


class PlainUnitProgress:
    """Plain lines for one unit of this rank (see the module docstring). `on_event` takes the worker's events."""

    def __init__(self, world: World, backend: str, total: int, stream: TextIO | None = None,
                 every_s: float = PLAIN_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.prefix = f"[rank {world.rank}/{world.world_size} {world.tag()}] {backend}"
        self.total = total
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.clock = clock
        self.last_line = -float("inf")
        self.first: tuple[float, int] | None = None  # (time, done) when generation started: the rate's origin

    def line(self, text: str) -> None:
        print(f"{self.prefix} {text}", file=self.stream, flush=True)

    def on_event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        if kind == "phase":
            phase = ev.get("phase", "")
            if phase == "loaded" and ev.get("load_time_s") is not None:
                self.line(f"loaded in {ev['load_time_s']:.1f} s")
            else:
                self.line(phase.replace("warmup", "warm-up"))
        elif kind == "progress":
            done, total = int(ev.get("done", 0)), int(ev.get("total", self.total) or self.total)
            now = self.clock()
            if self.first is None:
                self.first = (now, done)
                return  # the count an attempt resumes from, not a finished image
            last = done >= total
            if not last and now - self.last_line < self.every_s:
                return
            self.last_line = now
            made, spent = done - self.first[1], now - self.first[0]
            rate = made / spent if spent > 0 and made > 0 else None
            eta = (total - done) / rate if rate else None
            self.line(f"{done}/{total} images (this unit) "
                      f"{'%.2f img/s' % rate if rate else '? img/s'} {_eta(0.0 if last else eta)}")
        elif kind == "done":
            status = ev.get("status", "")
            self.line("done" if status == "ok" else f"{status}: {ev.get('reason') or 'no reason given'}")


class StudyProgress:
    """Rank 0's study-wide line, from the shard files every rank writes (a background thread; `stop()` ends it)."""

    def __init__(self, rd: RunDir, units: list[tuple[str, str, tuple[str, ...]]], stream: TextIO | None = None,
                 every_s: float = STUDY_EVERY_S) -> None:
        self.rd = rd
        self.units = units  # (backend, tag, prompt ids)
        self.total = sum(len(ids) for _, _, ids in units)
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.stop_event = threading.Event()
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def done(self) -> int:
        n = 0
        for backend, tag, ids in self.units:
            made: set[Any] = {e.get("prompt_id") for e in read_jsonl(self.rd.shard_partial(backend, tag))
                              if isinstance(e, dict)}
            final = self.rd.shard_record(backend, tag)
            if final.exists():
                try:
                    made |= {e.get("prompt_id") for e in read_json(final).get("images") or []}
                except Exception:  # noqa: BLE001 - a file being replaced right now: counted next time
                    pass
            n += len(made & set(ids))
        return n

    def line(self) -> str:
        done = self.done()
        spent = time.monotonic() - self.started
        rate = done / spent if spent > 0 and done else None
        eta = (self.total - done) / rate if rate else None
        return (f"[study] {done}/{self.total} images over all ranks, "
                f"{'%.2f img/s' % rate if rate else '? img/s'} {_eta(eta)}")

    def _loop(self) -> None:
        while not self.stop_event.wait(self.every_s):
            try:
                print(self.line(), file=self.stream, flush=True)
            except Exception:  # noqa: BLE001 - progress must never stop the work
                pass

    def start(self) -> None:
        if self.total:
            self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()

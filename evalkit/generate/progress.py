"""What a rank shows while its units run: rich bars on a terminal, plain lines off one (cluster logs, CI).

Off a terminal rich prints nothing until the end, so each rank prints plain lines (evalkit.plainlines)
instead: phase lines (loading, loaded in X s, warm-up, done/failed with the reason) and a line per finished image,
at most one every PLAIN_EVERY_S per rank plus always a unit's last:

    [rank 1/4 w4-r1] bf16 3/8 images (this unit) 0.11 img/s ETA 45 s

Each line also says where this rank is in its whole share of the study (`RankStudy`): which backend of how many,
images done of all, and an ETA whose seconds an image come from this run's own measured images as soon as there
are any (before that, from `evalkit.generate.plan.seconds_per_image`'s estimate), e.g.

    [rank 0/1 w1-r0] bf16 3/8 images (this unit) 0.11 img/s ETA 45 s | backend 1 of 17, 3/136 images, ETA 2 min ...

On a terminal the same summary is a bar of its own above the backends' bars. Rank 0 of several also prints a
study-wide line at most every STUDY_EVERY_S, counted from every rank's shard files on the shared filesystem
(`StudyProgress`).
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any, Callable, TextIO

from evalkit.dist import World
from evalkit.io import read_jsonl
from evalkit.records import read_generation_record
from evalkit.plainlines import PlainLines
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


class RankStudy:
    """This rank's units seen as one study: which backend of how many, images done of all, and its ETA.

    The ETA is (images left) x (seconds an image) + (units not started) x (fixed seconds a unit: process start,
    load, warm-up). Both start from the plan's estimates and are replaced by this run's measurements as they come:
    seconds an image by the median of the latencies the workers report with each image, the fixed cost by the
    median time from a unit's start to its first image. `on_event` takes the worker's events, `start_unit` is called
    before each unit's worker starts, `finish_unit` after it ends."""

    def __init__(self, units: list[tuple[str, int]], prior_image_s: float, prior_basis: str, prior_fixed_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.units = units  # (backend, images the unit is to make)
        self.total = sum(n for _, n in units)
        self.prior_image_s, self.prior_basis, self.prior_fixed_s = prior_image_s, prior_basis, prior_fixed_s
        self.clock = clock
        self.index = -1
        self.closed = 0  # images of finished units: made, resumed, or lost to a failure
        self.made = 0  # images finished so far (resumed ones included)
        self.unit_done = 0
        self.unit_started: float | None = None
        self.generating = False
        self.latencies: list[float] = []  # seconds an image, measured in this run
        self.fixed: list[float] = []  # seconds from a unit's start to its first image, measured in this run

    def start_unit(self, index: int) -> None:
        self.index = index
        self.unit_done = 0
        self.unit_started = self.clock()
        self.generating = False

    def finish_unit(self) -> None:
        if 0 <= self.index < len(self.units):
            self.closed += self.units[self.index][1]
        self.unit_started = None
        self.generating = False

    def on_event(self, ev: dict[str, Any]) -> None:
        if ev.get("event") != "progress":
            return
        done = int(ev.get("done", 0))
        if not self.generating:  # the first count: what the unit resumes from; its fixed cost ends here
            self.generating = True
            if self.unit_started is not None:
                self.fixed.append(self.clock() - self.unit_started)
        new = max(0, done - self.unit_done)
        self.made += new
        self.unit_done = max(self.unit_done, done)
        latency = ev.get("latency_s")
        if new and isinstance(latency, (int, float)) and latency > 0:
            self.latencies.extend([float(latency)] * new)

    def seconds_per_image(self) -> tuple[float, str]:
        if self.latencies:
            n = len(self.latencies)
            return statistics.median(self.latencies), f"measured, {n} image{'s' if n != 1 else ''} of this run"
        return self.prior_image_s, self.prior_basis

    def fixed_seconds(self) -> float:
        return statistics.median(self.fixed) if self.fixed else self.prior_fixed_s

    def eta(self) -> float:
        per_image, fixed = self.seconds_per_image()[0], self.fixed_seconds()
        current = self.units[self.index][1] if 0 <= self.index < len(self.units) and self.unit_started else 0
        left_images = max(0, self.total - self.closed - (self.unit_done if current else 0))
        not_started = max(0, len(self.units) - self.index - 1)
        waiting = 0.0
        if current and not self.generating and self.unit_started is not None:
            waiting = max(0.0, fixed - (self.clock() - self.unit_started))
        return left_images * per_image + not_started * fixed + waiting

    def backend_position(self) -> str:
        k = min(len(self.units), max(1, self.index + 1))
        return f"backend {k} of {len(self.units)}"

    def short(self) -> str:
        """The summary for a progress bar's narrow column."""
        per_image, _ = self.seconds_per_image()
        return (f"{self.backend_position()} · {_eta(self.eta())} · ~{per_image:.3g} s/image "
                f"({'measured' if self.latencies else 'estimated'})")

    def summary(self) -> str:
        per_image, basis = self.seconds_per_image()
        return (f"{self.backend_position()}, {self.made}/{self.total} images, {_eta(self.eta())} "
                f"(~{per_image:.3g} s an image: {basis})")


class PlainUnitProgress:
    """Plain lines for one unit of this rank (see the module docstring). `on_event` takes the worker's events;
    with `study`, each line ends with where the rank is in its whole share (`RankStudy.summary`)."""

    def __init__(self, world: World, backend: str, total: int, stream: TextIO | None = None,
                 every_s: float | None = None, clock: Callable[[], float] = time.monotonic,
                 study: RankStudy | None = None) -> None:
        self.prefix = f"[rank {world.rank}/{world.world_size} {world.tag()}] {backend}"
        self.total = total
        self.out = PlainLines(PLAIN_EVERY_S if every_s is None else every_s, stream, clock)
        self.study = study
        self.first: tuple[float, int] | None = None  # (time, done) when generation started: the rate's origin

    def line(self, text: str) -> None:
        tail = f" | {self.study.summary()}" if self.study is not None else ""
        self.out.write(f"{self.prefix} {text}{tail}")

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
            now = self.out.clock()
            if self.first is None:
                self.first = (now, done)
                return  # the count an attempt resumes from, not a finished image
            last = done >= total
            if not self.out.due(last):
                return
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
        self.out = PlainLines(every_s, stream)
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
                    made |= {e.get("prompt_id") for e in read_generation_record(final).get("images") or []}
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
        while not self.stop_event.wait(self.out.every_s):
            try:
                self.out.write(self.line())
            except Exception:  # noqa: BLE001 - progress must never stop the work
                pass

    def start(self) -> None:
        if self.total:
            self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()

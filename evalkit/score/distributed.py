"""Scoring with many ranks (issue #14.4): `torchrun --nproc-per-node N -m evalkit score RUN_DIR`, srun, accelerate
launch, or `evalkit score RUN_DIR --gpus 0,1` (a thin launcher over the same path). A world of one runs the stage
exactly as before: every function here then calls straight through.

How the work is shared, and why the numbers equal one process's:
  * Rank 0 alone opens the run for writing: it takes the run lock, decides the "unchanged" shortcut, verifies and
    hashes the images; what it found is broadcast, so every rank starts from the same items.
  * Every rank plans as one process would (same items, same cache state: ranks only read the cache until every
    plan is agreed) and builds the same list of (backend, chunk) work. The plans are compared across ranks: ranks
    that see different files, caches or metric weights stop, with the difference named, rather than leaving
    pairs that nobody computes.
  * Each rank computes only its chunks (`assign_chunks`). A chunk has the same images as in one process, so every
    batch a metric or feature extractor sees is the same batch, and every value is the one-process value.
  * What each rank computed (cache table entries, float64 feature arrays) is gathered to rank 0, which applies it
    to its cache, saves it, and summarises and writes every output as one process does. Other ranks write
    nothing in the run directory.
  * An error on any rank stops every rank with one line (evalkit.dist.agree), never a hang.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

import evalkit.dist as dist
from evalkit.errors import EvalkitError
from evalkit.plainlines import PlainLines

if TYPE_CHECKING:
    from evalkit.score.cache import ScoreCache
    from evalkit.score.state import Plan, State

_T = TypeVar("_T")


def is_main() -> bool:
    return dist.world().is_main


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if isinstance(e, EvalkitError) and text else f"{type(e).__name__}: {text[0] if text else ''}"


def _label() -> str:
    import socket

    w = dist.world()
    return f"rank {w.rank} of {w.world_size} (host {socket.gethostname()})"


def _agree_raising(error: BaseException | None) -> None:
    """evalkit.dist.agree with the failing rank and host named once; the rank that failed raises its own exception
    (with its traceback, if it is not an EvalkitError) rather than a copy."""
    every = dist.all_gather(None if error is None else f"{_label()}: {_one_line(error)}")
    if error is not None:
        raise error
    bad = [e for e in every if e]
    if bad:
        raise EvalkitError(bad[0])


def everywhere(fn: Callable[[], _T]) -> _T:
    """fn() on every rank; when it raises on any rank, every rank raises (the others with that rank's line)."""
    if not dist.world().distributed:
        return fn()
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - any failure must reach the other ranks before this one leaves
        _agree_raising(e)
        raise  # unreachable: _agree_raising raised
    _agree_raising(None)
    return out


def on_main(fn: Callable[[], _T]) -> _T:
    """fn() on rank 0 only; its result is broadcast to every rank, and an error there stops every rank."""
    w = dist.world()
    if not w.distributed:
        return fn()
    if w.is_main:
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001
            dist.broadcast((f"{_label()}: {_one_line(e)}", None))
            raise
        dist.broadcast((None, out))
        return out
    error, out = dist.broadcast(None)
    if error:
        raise EvalkitError(error)
    return out


def rank_device(device: str) -> str:
    """The device of this rank: `cuda` becomes cuda:LOCAL_RANK (made current), so that N ranks use N GPUs. A
    launcher that shows each rank only its own GPU (srun --gpus-per-task) leaves one visible: cuda:0."""
    w = dist.world()
    if not w.distributed or device != "cuda":
        return device
    import torch

    count = torch.cuda.device_count()
    index = 0 if count == 1 else w.local_rank
    if index >= count:
        raise EvalkitError(f"{w.describe()}: {count} visible GPU(s) for {w.local_world_size} ranks on this node; "
                           "start at most one rank per GPU (or --device cpu)")
    torch.cuda.set_device(index)
    return f"cuda:{index}"


def rank_workers(workers: int | None) -> int | None:
    """Decoding processes per rank: the node's cores are split between its ranks unless --workers says."""
    w = dist.world()
    if workers is not None or w.local_world_size <= 1:
        return workers
    from evalkit.score.images import default_workers

    return max(1, default_workers() // w.local_world_size)


def assign_chunks(parts_per_plan: Sequence[int], world_size: int) -> list[list[int]]:
    """The rank of each chunk, per plan. Chunk j of every backend goes to rank j % N, so a rank pairs a backend's
    chunk with the reference chunk of the same prompts that it decoded itself (references are decoded once per
    rank, not once per pair). The chunks left over after whole rounds (a backend with fewer chunks than ranks,
    the usual case in a small study) are dealt round-robin across backends, so no rank idles while another holds
    every backend's last chunk. Deterministic: every rank computes the same table."""
    owners: list[list[int]] = []
    spill = 0
    for count in parts_per_plan:
        full = count - count % world_size
        row = [j % world_size for j in range(full)]
        for _ in range(full, count):
            row.append(spill % world_size)
            spill += 1
        owners.append(row)
    return owners


def _plan_digest(state: "State", plans: Sequence["Plan"]) -> tuple[str, dict[str, str]]:
    """What a rank is about to do, comparable across ranks: its work list, and the metrics it cannot load."""
    from evalkit.metrics import registry as reg

    work = [(p.b, [[str(state.items[p.b][i].path) for i in part] for part in p.parts],
             sorted(p.paired), sorted(p.feats), sorted(p.prompt)) for p in plans]
    missing = {k: str(v) for k, v in state.opts.created.items() if isinstance(v, reg.MetricUnavailable)}
    return hashlib.sha256(repr(work).encode()).hexdigest(), dict(sorted(missing.items()))


def _agree_on_plans(state: "State", plans: Sequence["Plan"], error: BaseException | None) -> None:
    """One collective: every rank's error or plan; any error, or two ranks with different plans, stops all."""
    mine: Any = ("error", f"{_label()}: {_one_line(error)}") if error else ("plan", _plan_digest(state, plans))
    every = dist.all_gather(mine)
    bad = [(r, m[1]) for r, m in enumerate(every) if m[0] == "error"]
    if error is not None:
        raise error
    if bad:
        raise EvalkitError(bad[0][1])
    digests = [m[1] for m in every]
    for r, (work, missing) in enumerate(digests):
        # Which metrics are unavailable must agree; the reasons may name each host's own paths.
        if set(missing) != set(digests[0][1]):
            name = sorted(set(missing) ^ set(digests[0][1]))[0]
            where, why = (r, missing[name]) if name in missing else (0, digests[0][1][name])
            raise EvalkitError(f"ranks 0 and {r} cannot load the same metrics: on rank {where}, {name}: {why}. "
                               "Every rank must see the same metric weights (`evalkit weights status` on each node)")
        if work != digests[0][0]:
            raise EvalkitError(f"ranks 0 and {r} planned different work: they must read the same run directory and "
                               "score cache (a filesystem that every node mounts); was the run changed during the "
                               "score?")


class PeerFailed(EvalkitError):
    """Another rank failed: this one stops too (the message names the rank at fault)."""


_SCORES = 0  # score calls in this process: each one's failure key is its own (`evalkit run` may score twice)


class PeerWatch:
    """Stops a rank's computing as soon as another rank has failed, rather than at the agreement after every rank
    has finished its share (hours, in a large study): the failing rank posts its line in the process group's
    key-value store, the others look between chunks (one store round trip per chunk). Without a store (a
    launcher torch does not know), failures are still agreed, only later."""

    def __init__(self, store: Any = None) -> None:
        global _SCORES
        _SCORES += 1
        self.key = f"evalkit/score/{_SCORES}/failed"
        self.store = store
        if store is None and dist.world().distributed:
            try:
                import torch.distributed.distributed_c10d as c10d

                self.store = c10d._get_default_store()  # private, hence the fallback above
            except Exception:  # noqa: BLE001
                self.store = None

    def post(self, line: str) -> None:
        if self.store is None:
            return
        try:
            self.store.set(self.key, line)
        except Exception:  # noqa: BLE001 - the final agreement still carries the line
            pass

    def check(self) -> None:
        if self.store is None:
            return
        try:
            failed = self.store.check([self.key])
        except Exception:  # noqa: BLE001
            return
        if failed:
            line = self.store.get(self.key)
            raise PeerFailed(line.decode() if isinstance(line, bytes) else str(line))


def compute_share(state: "State", backends: Sequence[str], plan_work: Callable[..., list["Plan"]],
                  run_work: Callable[..., None]) -> dict[str, int]:
    """Plan every backend (every rank the same), agree on the plans, compute this rank's chunks. Returns counts
    of what this rank did (chunks, images) and of the whole plan. The stage passes its planner and its runner
    (evalkit.score.stage plan_work, run_work): this module only shares their work out."""
    w = dist.world()
    if not w.distributed:
        plans = plan_work(state, backends)
        run_work(state, [(p, part) for p in plans for part in p.parts])
        n = sum(len(p.parts) for p in plans)
        return {"chunks": n, "chunks_total": n}
    plans: list[Plan] = []
    try:
        plans = plan_work(state, backends)
        planned: BaseException | None = None
    except Exception as e:  # noqa: BLE001
        planned = e
    _agree_on_plans(state, plans, planned)
    owners = assign_chunks([len(p.parts) for p in plans], w.world_size)
    mine = [(p, part) for p, row in zip(plans, owners) for part, r in zip(p.parts, row) if r == w.rank]
    watch = PeerWatch()
    try:
        run_work(state, mine, between_chunks=watch.check)
        failed: BaseException | None = None
    except Exception as e:  # noqa: BLE001
        failed = e
        if not isinstance(e, PeerFailed):
            watch.post(f"{_label()}: {_one_line(e)}")
    _agree_raising(failed)
    return {"chunks": len(mine), "images": sum(len(part) for _p, part in mine),
            "chunks_total": sum(len(p.parts) for p in plans)}


def merge_into_main(cache: "ScoreCache") -> None:
    """Every other rank's new cache entries (tables, float64 features) into rank 0's cache."""
    w = dist.world()
    if not w.distributed:
        return
    journals = dist.gather(None if w.is_main else cache.journal())
    if journals is not None:
        for journal in journals[1:]:
            cache.apply(journal)


def say_share(done: dict[str, int]) -> None:
    """One stderr line per rank saying what it scored (a world of one says nothing, as before)."""
    w = dist.world()
    if w.distributed:
        PlainLines(0).write(f"score: rank {w.rank} of {w.world_size} computed {done['chunks']} of "
                            f"{done['chunks_total']} chunks ({done.get('images', 0)} images)"
                            + ("; rank 0 writes the results" if w.is_main else ""))


def launch(argv: Sequence[str], gpus: str | None, jobs: int | None) -> int | None:
    """`evalkit score --gpus 0,1` / `--jobs N` outside a launcher: start the ranks through torchrun and return its
    exit code; None when this process is already a rank (or neither option is given)."""
    if not gpus and not jobs:
        return None
    if dist.world().distributed or dist.launched():
        return None
    ids = [g.strip() for g in (gpus or "").split(",") if g.strip()]
    nproc = len(ids) if ids else int(jobs or 1)
    if nproc < 1:
        raise EvalkitError(f"--jobs {jobs}: expected at least 1")
    if nproc == 1:  # one rank needs no launcher: this process is it
        if ids:
            os.environ["CUDA_VISIBLE_DEVICES"] = ids[0]
        return None
    threads = max(1, (os.cpu_count() or 1) // nproc)
    return dist.launch_local(list(argv), nproc, ids or None, threads_per_rank=threads)

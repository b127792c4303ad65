"""Which rank of how many this process is, and the few collectives evalkit needs between ranks.

evalkit never schedules processes itself: it runs under the launchers users already have and reads what they set.

    torchrun / accelerate launch   RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    Slurm (srun)                   SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE / SLURM_STEP_TASKS_PER_NODE
    --gpus 0,1,2,3 / --jobs N      evalkit starts torchrun (torch.distributed.run) on this machine: `launch_local`

Collectives go through torch.distributed: one process group per process, created on first use, with gloo for
CPU tensors and Python objects and NCCL for CUDA tensors when CUDA is there ("cpu:gloo,cuda:nccl"). A world of
one never imports torch.distributed at all.

This module is neutral (used by generate and score): it imports no stage.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

from evalkit.errors import EvalkitError

# How long a collective waits for the slowest rank. Generation on one rank can run for hours while the others wait
# at the final barrier, so the default is long; a rank that dies closes its connections, and the others' waits fail
# at once rather than at the timeout (torchrun also stops every rank when one fails).
DEFAULT_TIMEOUT_S = 72 * 3600
TIMEOUT_ENV = "EVALKIT_DIST_TIMEOUT"
# Set by `launch_local` in the ranks it starts, so that a rank never launches again.
LAUNCHED_ENV = "EVALKIT_LAUNCHED"
# What `launch_local` was asked for, for a stage rank 0 runs after the others have left (calibrate's sub-runs shard
# over the same GPUs again).
LAUNCH_GPUS_ENV = "EVALKIT_LAUNCH_GPUS"
LAUNCH_NPROC_ENV = "EVALKIT_LAUNCH_NPROC"


@dataclass(frozen=True)
class World:
    """This process's place in the job. `launcher` is "single" (no distributed launcher), "torchrun" (which also
    covers accelerate launch and `evalkit --gpus`) or "slurm"."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    launcher: str = "single"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def tag(self) -> str:
        """Names this rank's own files: `w4-r2` is rank 2 of 4."""
        return f"w{self.world_size}-r{self.rank}"

    def describe(self) -> str:
        return (f"rank {self.rank} of {self.world_size} (local {self.local_rank} of {self.local_world_size}, "
                f"{self.launcher}, host {socket.gethostname()})")


def _int(env: Mapping[str, str], name: str) -> int:
    value = env.get(name, "")
    try:
        return int(value.split("(")[0].split(",")[0])  # SLURM_TASKS_PER_NODE reads like "4(x2)"
    except ValueError:
        raise EvalkitError(f"environment variable {name}={value!r}: expected an integer (set by your launcher)") from None


def detect_world(env: Mapping[str, str] | None = None) -> World:
    """The world this process runs in, from the launcher's environment variables (see the module docstring).

    Slurm's variables count only inside a job step (srun sets SLURM_STEP_ID): a batch script's own shell also has
    SLURM_PROCID=0 and SLURM_NTASKS=N, and would otherwise wait for N-1 ranks that never come."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env and "RANK" in env:
        ws, rank = _int(env, "WORLD_SIZE"), _int(env, "RANK")
        local = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
        lws = _int(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else ws
        world = World(rank, ws, local, lws, "torchrun")
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env):
        ws, rank = _int(env, "SLURM_NTASKS"), _int(env, "SLURM_PROCID")
        local = _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        per_node = next((n for n in ("SLURM_NTASKS_PER_NODE", "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
                         if n in env), None)
        lws = _int(env, per_node) if per_node else ws
        world = World(rank, ws, local, lws, "slurm")
    else:
        return World()
    if world.world_size < 1 or not 0 <= world.rank < world.world_size:
        raise EvalkitError(f"launcher says rank {world.rank} of world size {world.world_size}: not a valid rank")
    if not 0 <= world.local_rank < max(1, world.local_world_size):
        raise EvalkitError(f"launcher says local rank {world.local_rank} of {world.local_world_size} on this node: "
                           "not a valid local rank")
    return world


_WORLD: World | None = None


def world() -> World:
    """This process's world, read once (a stage that changes the environment later does not change its rank)."""
    global _WORLD
    if _WORLD is None:
        _WORLD = detect_world()
    return _WORLD


@contextlib.contextmanager
def solo() -> Iterator[None]:
    """Inside the block this process is a world of one (rank 0 of 1), whatever launched it: for work that one rank
    does alone (rank 0's calibration regenerating a sub-run), which must not wait for peers that are not there."""
    global _WORLD
    before = world()
    _WORLD = World()
    try:
        yield
    finally:
        _WORLD = before


def slurm_master_addr(env: Mapping[str, str]) -> str | None:
    """The first host of the job step's node list ("gpu[03-05,9]" -> "gpu03"): rank 0 of an srun step runs there."""
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodes:
        return None
    first = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodes)
    if not first:
        return None
    prefix, _, ranges = first.groups()
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _rendezvous_env(w: World) -> None:
    """Slurm sets no MASTER_ADDR/PORT: derive them from the node list and the job id (every rank derives the same)."""
    if w.launcher != "slurm":
        return
    if "MASTER_ADDR" not in os.environ:
        addr = slurm_master_addr(os.environ)
        if addr is None:
            raise EvalkitError("Slurm job step without SLURM_STEP_NODELIST or SLURM_JOB_NODELIST: set MASTER_ADDR "
                               "to rank 0's host (see README, Many GPUs and nodes)")
        os.environ["MASTER_ADDR"] = addr
    if "MASTER_PORT" not in os.environ:
        job = os.environ.get("SLURM_JOB_ID", "0")
        os.environ["MASTER_PORT"] = str(20000 + int(job) % 20000 if job.isdigit() else 29500)


_GROUP_READY = False


def init() -> None:
    """Join the job's process group (once per process; a world of one does nothing)."""
    global _GROUP_READY
    w = world()
    if not w.distributed or _GROUP_READY:
        return
    import datetime

    import torch
    import torch.distributed as dist

    if dist.is_initialized():  # accelerate or the user's own code made one: use it
        _GROUP_READY = True
        return
    _rendezvous_env(w)
    os.environ.setdefault("RANK", str(w.rank))
    os.environ.setdefault("WORLD_SIZE", str(w.world_size))
    timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    # The CUDA half is lazy: it creates no CUDA context (a generate rank must not, its workers fork from a server).
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    try:
        dist.init_process_group(backend=backend, rank=w.rank, world_size=w.world_size,
                                timeout=datetime.timedelta(seconds=timeout))
    except Exception as e:  # noqa: BLE001 - the rendezvous failed: say where it tried
        raise EvalkitError(f"{w.describe()}: could not join the process group at "
                           f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}: "
                           f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    _GROUP_READY = True
    import atexit

    # Without this, gloo's threads are still running when the interpreter exits and the C++ runtime aborts the
    # process ("terminate called without an active exception", exit -6) about one time in three.
    atexit.register(_destroy)


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a peer already gone: nothing left to tear down cleanly
            pass


def broadcast(obj: Any, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank (a world of one returns it)."""
    if not world().distributed:
        return obj
    import torch.distributed as dist

    init()
    box = [obj if world().rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not world().distributed:
        return [obj]
    import torch.distributed as dist

    init()
    out: list[Any] = [None] * world().world_size
    dist.all_gather_object(out, obj)
    return out


def gather(obj: Any, dst: int = 0) -> list[Any] | None:
    """Every rank's `obj`, in rank order, on rank `dst` (None on the others)."""
    if not world().distributed:
        return [obj]
    import torch.distributed as dist

    init()
    out: list[Any] | None = [None] * world().world_size if world().rank == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def barrier() -> None:
    if not world().distributed:
        return
    import torch.distributed as dist

    init()
    dist.barrier()


def agree(error: str | None) -> None:
    """Every rank says whether it can go on; if one cannot, every rank stops with that rank's message (so no rank
    waits forever for a peer that already gave up). Raises EvalkitError on every rank when any has an error."""
    errors = all_gather(error)
    bad = [(r, e) for r, e in enumerate(errors) if e]
    if bad:
        r, e = bad[0]
        raise EvalkitError(e if r == world().rank else f"rank {r}: {e}")


def local_gpu(visible: str | None = None) -> str | None:
    """The GPU this rank's workers use, as a CUDA_VISIBLE_DEVICES entry: the local rank's entry of the visible
    devices (all of this node's GPUs when none are set). None in a world of one (the workers see what it sees)."""
    w = world()
    if not w.distributed:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if visible:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
    else:
        ids = [str(i) for i in range(_nvidia_device_count())]
    if not ids:
        return None
    if w.local_rank >= len(ids):
        raise EvalkitError(f"{w.describe()}: this node has {len(ids)} visible GPU(s) ({','.join(ids)}) for "
                           f"{w.local_world_size} ranks; start at most one rank per GPU")
    return ids[w.local_rank]


def _nvidia_device_count() -> int:
    """GPUs on this node from the driver's device nodes: no CUDA call in a rank whose workers fork."""
    try:
        return len([n for n in os.listdir("/dev") if re.fullmatch(r"nvidia\d+", n)])
    except OSError:
        return 0


def strip_launch_options(argv: Sequence[str]) -> list[str]:
    """argv without `--gpus X` / `--jobs N` (the ranks it starts must not launch again)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--gpus", "--jobs"):
            skip = True
            continue
        if a.startswith(("--gpus=", "--jobs=")):
            continue
        out.append(a)
    return out


def launch_local(argv: Sequence[str], nproc: int, gpus: Sequence[str] | None = None,
                 threads_per_rank: int | None = None) -> int:
    """Run `evalkit <argv>` as `nproc` ranks on this machine through torchrun (torch.distributed.run --standalone),
    each rank seeing every GPU of `gpus` (it picks its own by LOCAL_RANK). Returns torchrun's exit code."""

    env = dict(os.environ)
    env[LAUNCHED_ENV] = "1"
    env[LAUNCH_NPROC_ENV] = str(nproc)
    env[LAUNCH_GPUS_ENV] = ",".join(gpus or [])
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    if threads_per_rank:
        env.setdefault("OMP_NUM_THREADS", str(threads_per_rank))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "evalkit", *strip_launch_options(argv)]
    from evalkit.procs import call_tied

    # torchrun and its ranks end with this process: a terminated launcher leaves no rank holding the run's lock
    return call_tied(cmd, env)


def launched() -> bool:
    """True in a rank that `launch_local` started."""
    return os.environ.get(LAUNCHED_ENV) == "1"

"""The generate stage across ranks: rank 0 plans, every rank works, rank 0 merges (docs/distributed.md).

A world of one is rank 0 of 1 and runs the same code: no second scheduler.

1. Rank 0 validates the command, takes the run directory's lock (held until the merge ends; other ranks take
   none), writes the manifest and the unrun backends' records, computes the schedule (evalkit/generate/schedule.py)
   and broadcasts {root, lock token, schedule}. A validation error on rank 0 is broadcast instead, so every rank
   stops with the same one line.
2. Every rank checks that it sees rank 0's lock file with that token: if not, the run directory is not on a
   filesystem every rank mounts, and every rank stops with one line naming the rank, its host and the path.
3. Each rank runs its units one after the other, one worker process per unit, writing only its own shard files.
4. A barrier, then rank 0 merges (evalkit/generate/merge.py) and writes summary.json. A barrier that fails
   because a peer died still lets rank 0 merge and name what is missing (exit 1).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
from typing import Any, Callable, Iterator

import evalkit.dist as dist
from evalkit.errors import EvalkitError
from evalkit.generate.console import print_generation_table, write_error
from evalkit.generate.options import GenerateOptions
from evalkit.generate.plan import LARGE_STUDY_IMAGES
from evalkit.generate.prepare import prepare_run
from evalkit.io import atomic_write_json
from evalkit.record_types import UNIT_SCHEMA
from evalkit.generate.schedule import Schedule
from evalkit.records import Manifest, checked_unit, generation_record_if_any, read_manifest
from evalkit.rundir import RunDir, write_summary
from evalkit.timeutil import utc_now


class MergeIncomplete(EvalkitError):
    """Prompts are missing or claimed twice after the merge: named, exit 1; a rerun fills the holes."""

    exit_code = 1


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """torchrun sends SIGTERM to the surviving ranks when one dies: make it a KeyboardInterrupt, so the stage
    unwinds (lock released, forkserver stopped; partial files are appended per image and stay intact)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _lock_token(rd: RunDir) -> str | None:
    from evalkit.runlock import holder_of

    holder = holder_of(rd.root)
    return holder.get("token") if holder else None


def plan_and_share(opts: GenerateOptions, lock: contextlib.ExitStack, console: Any,
                   start_early: Callable[[], None]) -> tuple[RunDir, Manifest, Schedule]:
    """Steps 1 and 2 of the module docstring; returns the run directory, its manifest and rank 0's schedule
    (evalkit.generate.schedule.Schedule) on every rank."""
    w = dist.world()
    if w.is_main:
        try:
            payload = _plan(opts, lock, console, start_early)
        except EvalkitError as e:
            if w.distributed:
                dist.broadcast({"error": str(e), "exit_code": e.exit_code})
            raise
        dist.broadcast(payload)
    else:
        start_early()
        payload = dist.broadcast(None)
        if "error" in payload:
            err = EvalkitError(payload["error"])
            err.exit_code = payload.get("exit_code", 2)
            raise err
    rd = RunDir(payload["root"])
    problem = None
    if not w.is_main and _lock_token(rd) != payload["token"]:
        problem = (f"rank {w.rank} on host {socket.gethostname()} does not see rank 0's lock file in {rd.root}: the "
                   "run directory is not on a filesystem every rank mounts; put --out on a shared filesystem "
                   "(docs/distributed.md)")
    dist.agree(problem)
    if w.is_main:
        manifest = read_manifest(rd.manifest)
    else:  # the run's plugin and checkpoint backends were registered by rank 0's prepare_run only: register them here
        from evalkit.rundir import open_run

        _, manifest = open_run(rd.root)
    return rd, manifest, Schedule.from_json(payload["schedule"])


def _plan(opts: GenerateOptions, lock: contextlib.ExitStack, console: Any,
          start_early: Callable[[], None]) -> dict[str, Any]:
    from evalkit.generate.plan import describe_plan, plan_work
    from evalkit.generate.schedule import describe, make_schedule
    from evalkit.generate.spawn import write_unrun_record

    w = dist.world()
    rd, manifest, specs = prepare_run(opts, lock, on_validated=start_early)
    device = manifest["config"]["device"]
    console.print(f"[bold]evalkit generate[/] model={manifest['model']['spec']} device={device} "
                  f"{manifest['generation']['height']}x{manifest['generation']['width']} "
                  f"steps={manifest['generation']['num_inference_steps']} prompts={len(manifest['prompts'])} "
                  f"backends={len(specs)} ranks={w.world_size} -> {rd.root}")
    note = held_backends_note(opts, [s.name for s in specs])
    if note:
        console.print(note, markup=False, highlight=False)
    note = ensure_compute_plan(rd, manifest)
    if note:
        console.print(note, markup=False, highlight=False, soft_wrap=True)  # one line, however narrow the console
    requested = tuple(opts.components) if opts.components else None
    work = plan_work(rd, manifest, specs, requested, opts.attempt_known_failures)
    try:
        for spec, status, reason in work.unrun:
            write_unrun_record(rd, spec, status, reason)
    except OSError as e:
        raise write_error(e) from None
    for name, (_rec, problems) in work.repairs.items():
        first = next(iter(problems.values()))
        console.print(f"{name}: regenerating {len(problems)} image(s) that changed since they were recorded "
                      f"(first: {first}; all in logs/{name}.log)")
        try:
            rd.log(name).parent.mkdir(parents=True, exist_ok=True)
            with open(rd.log(name), "a", encoding="utf-8") as log:
                log.writelines(f"regenerating {pid}: {why}\n" for pid, why in problems.items())
        except OSError as e:
            raise write_error(e) from None
    if work.images > LARGE_STUDY_IMAGES:
        console.print(describe_plan(work, rd, manifest))
    costs = unit_costs(rd, manifest, list(work.missing))
    schedule = make_schedule(work.missing, costs, w.world_size, opts.schedule,
                             int(manifest["generation"].get("batch_size", 1)))
    text = describe(schedule, costs)
    if schedule.units:
        console.print(text, markup=False, highlight=False)
    summary = {k: v for k, v in schedule.to_json().items() if k != "units"}
    manifest["config"]["schedule"] = {**summary, "description": text}
    manifest["config"]["world"] = {"world_size": w.world_size, "launcher": w.launcher}
    try:
        atomic_write_json(rd.manifest, manifest)
    except OSError as e:
        raise write_error(e) from None
    return {"root": str(rd.root), "token": _lock_token(rd), "schedule": schedule.to_json()}


def ensure_compute_plan(rd: RunDir, manifest: dict[str, Any]) -> str | None:
    """Give a new run its compute plan (manifest `compute`: which dtype each component computes in, and why;
    evalkit/generate/worker/compute_dtype.py); a run keeps the one it has. A run made before plans were recorded
    keeps bf16 throughout once it has images, so a resumed run never mixes dtypes. Returns the one line to print
    at the start, if any: why the run computes partly in float32, or why it will be slow."""
    from evalkit.families.registry import family_of_manifest
    from evalkit.generate.worker.compute_dtype import BF16, cpu_bf16, legacy_compute, plan_compute

    device = (manifest.get("config") or {}).get("device") or (manifest.get("device") or {}).get("type") or "cpu"
    kind = (manifest.get("model") or {}).get("kind") or ""
    cpu = cpu_bf16() if device == "cpu" else None
    if not isinstance(manifest.get("compute"), dict):
        components = {c.name: c.role for c in family_of_manifest(manifest).components}
        images = rd.root / "images"
        started = images.is_dir() and any(p.is_file() for p in images.rglob("*.png"))
        manifest["compute"] = legacy_compute(components) if started else plan_compute(device, kind, components, cpu)
    compute = manifest["compute"]
    dtypes = compute.get("dtypes") or {}
    slow_bf16 = [n for n, d in dtypes.items() if d == BF16] if cpu is not None and not cpu["native_bf16"] else []
    if slow_bf16:
        return (f"slow: this CPU has no native bf16 kernels ({cpu['capability']}), and {', '.join(slow_bf16)} compute "
                "in bf16 in this run, 30-70x slower than float32 here (manifest.json `compute` says why)")
    if device == "cpu" and kind != "tiny":
        from evalkit.generate.plan import seconds_per_image

        per_image, basis = seconds_per_image(rd, manifest)
        return f"slow: a full-size model on a CPU, about {per_image:.0f} s an image ({basis})"
    return f"compute: {compute['summary']}, every backend alike (manifest.json `compute` says why)" \
        if compute.get("summary") else None


def unit_costs(rd: RunDir, manifest: dict[str, Any], backends: list[str]) -> dict[str, Any]:
    """Each backend's cost model: from its own record in this run when it has one, else rough defaults."""
    from evalkit.generate.plan import seconds_per_image
    from evalkit.generate.schedule import measured_cost, rough_cost

    per_image, basis = seconds_per_image(rd, manifest)
    kind = (manifest.get("model") or {}).get("kind") or "full"
    out = {}
    for name in backends:
        rec = generation_record_if_any(rd.generation_record(name))
        cost = measured_cost(rec) if rec is not None else None
        out[name] = cost or rough_cost(name, kind, per_image, basis)
    return out


def run_and_merge(opts: GenerateOptions, rd: RunDir, manifest: Manifest, schedule: Schedule, console: Any) -> None:
    """Steps 3 and 4 of the module docstring, with plan_and_share's schedule."""
    w = dist.world()
    study = None
    if w.is_main and not sys.stderr.isatty() and w.distributed:
        from evalkit.generate.progress import StudyProgress

        study = StudyProgress(rd, [(u.backend, f"w{w.world_size}-r{u.rank}", u.prompt_ids) for u in schedule.units])
        study.start()
    try:
        _run_units(opts, rd, manifest, schedule.units_of(w.rank), console)
    finally:
        if study is not None:
            study.stop()
    peer_lost = None
    try:
        dist.barrier()
    except Exception as e:  # noqa: BLE001 - gloo raises when a peer died; rank 0 still merges what is there
        peer_lost = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    problems: list[str] = []
    if w.is_main:
        problems = merge_and_summarize(rd, console)
        if peer_lost:
            problems.append(f"a rank stopped before the end ({peer_lost[:200]})")
    if not peer_lost:
        problems = dist.broadcast(problems)
    if problems:
        raise MergeIncomplete("; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3
                                                          else ""))


def merge_and_summarize(rd: RunDir, console: Any) -> list[str]:
    """Merge the shards, rebuild summary.json and print the generation table; returns the merge's problems."""
    from evalkit.generate.merge import merge_run

    try:
        result = merge_run(rd)
        summary = write_summary(rd.root)
    except OSError as e:
        raise write_error(e) from None
    print_generation_table(console, summary)
    return result.problems  # the caller says them, once, as plain lines (rich would wrap the file names)


def write_unit(rd: RunDir, backend: str, tag: str, rank: int, world_size: int, prompt_ids: Any,
               threads: int | None = None) -> None:
    """The unit file of `tag` for `backend`: the prompts its worker is to make (docs/run-directory.md "Shards")."""
    rd.shards_dir(backend).mkdir(parents=True, exist_ok=True)
    atomic_write_json(rd.shard_unit(backend, tag), checked_unit({
        "schema": UNIT_SCHEMA, "backend": backend, "tag": tag, "rank": rank, "world_size": world_size,
        "host": socket.gethostname(), "pid": os.getpid(), "prompt_ids": list(prompt_ids), "threads": threads,
        "created_utc": utc_now()}))


def _run_units(opts: GenerateOptions, rd: RunDir, manifest: dict[str, Any], units: list[Any], console: Any) -> None:
    from evalkit.quantizers.registry import parse_backend
    from evalkit.generate.spawn import run_worker_process

    w = dist.world()
    device = manifest["config"]["device"]
    gpu = dist.local_gpu() if device == "cuda" else None
    if gpu is None and device == "cuda" and len(opts.gpus) == 1:
        gpu = opts.gpus[0]
    env = worker_env(gpu)
    threads = worker_threads(manifest, device, max(opts.jobs, w.local_world_size))
    tag = w.tag()
    plain = not sys.stderr.isatty()
    with contextlib.ExitStack() as stack:
        bars = None
        if not plain and units:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            bars = stack.enter_context(Progress(
                TextColumn("{task.description:<32}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[phase]}"), TimeElapsedColumn(), console=console, transient=False))
        study = _rank_study(rd, manifest, units)
        overall = bars.add_task("study" if not w.distributed else f"this rank's share [{tag}]", total=study.total,
                                phase=study.short()) if bars else None
        tasks = {u.backend: bars.add_task(u.backend if not w.distributed else f"{u.backend} [{tag}]",
                                          total=len(u.prompt_ids), phase="queued")
                 for u in units} if bars else {}
        for index, unit in enumerate(units):
            spec = parse_backend(unit.backend)
            shard = {"tag": tag, "rank": w.rank, "world_size": w.world_size, "host": socket.gethostname(),
                     "gpu": env.get("CUDA_VISIBLE_DEVICES"), "prompt_ids": list(unit.prompt_ids)}
            try:
                write_unit(rd, unit.backend, tag, w.rank, w.world_size, unit.prompt_ids, threads)
                study.start_unit(index)
                sink = _event_sink(bars, tasks.get(unit.backend), w, unit, study)
                seen: list[str] = []

                def on_event(ev: dict[str, Any]) -> None:
                    seen.append(str(ev.get("event")))
                    study.on_event(ev)  # first, so the line the sink prints includes this event
                    sink(ev)
                    if overall is not None:
                        bars.update(overall, completed=study.made, phase=study.short())

                run_worker_process(rd, spec, env, on_event, tag, shard)
                study.finish_unit()
                if "done" not in seen:  # the worker died before saying so: show what its failed record says
                    rec = generation_record_if_any(rd.shard_record(unit.backend, tag)) or {}
                    sink({"event": "done", "status": rec.get("status", "failed"), "reason": rec.get("reason")})
                if overall is not None:
                    bars.update(overall, completed=study.made, phase=study.short())
            except OSError as e:  # the rank could not even write its unit or failed record: disk full, read-only
                raise write_error(e) from None


def held_backends_note(opts: GenerateOptions, backends: list[str]) -> str | None:
    """When the run directory already held backends this command did not ask for: say so, since every table that
    follows (and score, and the report) covers all of them."""
    from evalkit.quantizers.registry import parse_backend_list

    asked = {s.name for s in parse_backend_list(opts.backends, opts.include_reference)}
    held = [b for b in backends if b not in asked]
    if not held:
        return None
    return (f"this run directory already holds backends {', '.join(held)}; it now has {len(backends)} "
            f"(the {len(asked)} asked for and those)")


# Set by torchrun / accelerate / srun for a rank (evalkit.dist reads them); never passed on to a backend worker.
LAUNCHER_VARIABLES = frozenset({"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                                "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT",
                                "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_STEP_ID", "SLURM_STEPID",
                                "ACCELERATE_DYNAMO_BACKEND", "ACCELERATE_MIXED_PRECISION"})


def worker_env(gpu: str | None) -> dict[str, str]:
    """The environment of this rank's backend workers: this process's, without the launcher's variables."""
    # A worker is one process on one device, not a rank: the launcher's variables would make libraries act on them
    # (transformers' loading picked cuda:LOCAL_RANK in a worker that sees one GPU: "invalid device ordinal" on rank 1).
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES and not k.startswith("TORCHELASTIC_")}
    env.setdefault("HF_HUB_OFFLINE", "1")  # workers never reach for the hub
    env["PYTHONUNBUFFERED"] = "1"
    env["EVALKIT_PARENT_PID"] = str(os.getpid())  # a subprocess worker checks it still has this parent
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def worker_threads(manifest: dict[str, Any], device: str, local_workers: int) -> int | None:
    """The intra-op threads this rank's workers use, written to each unit file (the worker reads it there):
    --threads, else on CPU with several workers on this machine at once its cores shared among them (they would
    oversubscribe them), else None (torch's default)."""
    asked = ((manifest.get("config") or {}).get("numerics") or {}).get("threads")
    if asked is not None:
        return int(asked)
    if device == "cpu" and local_workers > 1:
        return max(1, (os.cpu_count() or 1) // local_workers)
    return None


def _rank_study(rd: RunDir, manifest: dict[str, Any], units: list[Any]) -> Any:
    """This rank's units as one study (evalkit/generate/progress.py), starting from the plan's estimates."""
    from evalkit.generate.plan import seconds_per_image
    from evalkit.generate.progress import RankStudy
    from evalkit.generate.schedule import rough_cost

    per_image, basis = seconds_per_image(rd, manifest)
    kind = (manifest.get("model") or {}).get("kind") or "full"
    fixed = [rough_cost(u.backend, kind, per_image, basis).fixed_s for u in units]
    return RankStudy([(u.backend, len(u.prompt_ids)) for u in units], per_image, basis,
                     sum(fixed) / len(fixed) if fixed else 0.0)


def _event_sink(bars: Any, task: Any, w: dist.World, unit: Any, study: Any = None) -> Callable[[dict[str, Any]], None]:
    if bars is None:
        from evalkit.generate.progress import PlainUnitProgress

        return PlainUnitProgress(w, unit.backend, len(unit.prompt_ids), study=study).on_event

    def on_event(ev: dict[str, Any]) -> None:
        if ev.get("event") == "phase":
            bars.update(task, phase=ev.get("phase", ""))
        elif ev.get("event") == "progress":
            bars.update(task, completed=ev.get("done", 0), phase="generating")
        elif ev.get("event") == "done":
            ok = ev.get("status") == "ok"
            bars.update(task, phase="[green]ok[/]" if ok else f"[red]{ev.get('status', 'failed')}[/]")

    bars.update(task, phase="starting")
    return on_event

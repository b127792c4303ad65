"""Backend worker processes: a preloaded forkserver (or a fresh interpreter per backend), their events, and the
record a worker that died without writing its own gets.

Used by the generate stage only. Worker processes die with their parent (evalkit.generate.worker.run.die_with_parent),
and the stage stops the forkserver when it ends, even when it ends by an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from evalkit.device import nvidia_gpu_present
from evalkit.errors import EvalkitError
from evalkit.quantizers.registry import BackendSpec
from evalkit.io import atomic_write_json
from evalkit.records import generation_record_if_any, read_manifest
from evalkit.rundir import SCHEMA_VERSION, RunDir
from evalkit.timeutil import utc_now


def write_unrun_record(rd: RunDir, spec: BackendSpec, status: str, reason: str, tag: str | None = None,
                       shard: dict[str, Any] | None = None) -> None:
    """The record of a backend that does not run (skipped, known failure: generation/<backend>.json) or, with `tag`,
    of one rank's unit whose worker died."""
    path = rd.shard_record(spec.name, tag) if tag else rd.generation_record(spec.name)
    try:
        _write_unrun(path, rd, spec, status, reason, shard)
    except OSError as e:  # name the file: the stage turns this into its one-line error
        raise OSError(e.errno, e.strerror, str(path)) from None


def fold_previous_shard(rd: RunDir, backend: str, tag: str) -> None:
    """Before a unit runs again under the same tag: the tag's earlier final record's images join its partial list
    (the worker re-verifies and keeps them), and that record goes, so a stale record cannot stand in for this
    attempt's outcome."""
    from evalkit.io import atomic_write_text, read_jsonl

    final = rd.shard_record(backend, tag)
    if not final.exists():
        return
    images = list((generation_record_if_any(final) or {}).get("images") or [])
    if images:
        by_id = {e.get("prompt_id"): e for e in images if isinstance(e, dict)}
        for e in read_jsonl(rd.shard_partial(backend, tag)):
            if isinstance(e, dict):
                by_id[e.get("prompt_id")] = e
        atomic_write_text(rd.shard_partial(backend, tag),
                          "".join(json.dumps(e, sort_keys=True) + "\n" for e in by_id.values()))
    final.unlink(missing_ok=True)


def _user_options(rd: RunDir, spec: BackendSpec) -> dict[str, Any]:
    """This backend's `--config` options as the manifest holds them (the worker's record states the same)."""
    try:
        return dict(((read_manifest(rd.manifest).get("config") or {}).get("backend_options") or {}).get(spec.backend.name) or {})
    except (EvalkitError, OSError):
        return {}


def _write_unrun(path: Path, rd: RunDir, spec: BackendSpec, status: str, reason: str,
                 shard: dict[str, Any] | None = None) -> None:
    atomic_write_json(path, {**({"shard": shard} if shard else {}),
        "schema_version": SCHEMA_VERSION, "backend": spec.name, "status": status, "reason": reason, "error": None,
        "recipe": spec.recipe(_user_options(rd, spec)),
        "images": [], "memory": None, "latency": None, "load_time_s": None, "compile_time_s": None,
        "finished_utc": utc_now(),
    })



_FORKSERVER: Any = None
_FORKSERVER_LOCK = threading.Lock()
# The run's model family, for a forkserver started again (the GPU preload given up)
_FAMILY: str | None = None
# On a GPU machine: whether the forkserver also imports the family's modules, libraries and tokenizers
# (evalkit.generate.worker.gpu_preload). Off after a fork found CUDA initialized all the same, for the rest of the
# process, and when EVALKIT_GPU_PRELOAD=narrow.
_GPU_PRELOAD_GIVEN_UP = False
_GPU_PRELOAD_IN_FORCE = False


def _forkserver(family: str | None = None) -> Any:
    """A multiprocessing forkserver that has imported torch, diffusers, the quantization libraries, the run's model
    family's modules and its tokenizers once (on a GPU machine through evalkit.generate.worker.gpu_preload). Each
    backend still gets its own process (clean CUDA peaks, crash isolation), without paying seconds of imports."""
    global _FORKSERVER, _FAMILY, _GPU_PRELOAD_IN_FORCE
    with _FORKSERVER_LOCK:
        if family is not None:
            _FAMILY = family
        if _FORKSERVER is None:
            import multiprocessing as mp

            from evalkit.generate.worker.gpu_preload import known_to_poison, mode as gpu_preload_mode
            from evalkit.quantizers.registry import package_available
            from evalkit.generate.worker.run import preload_modules

            # huggingface_hub reads HF_HUB_OFFLINE when imported, i.e. in the forkserver: set it before that.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            ctx = mp.get_context("forkserver")
            gpu = nvidia_gpu_present()
            if gpu:
                # torch.cuda.is_available() (which diffusers calls on import) runs cuInit and marks every later fork
                # unable to use CUDA, unless it asks NVML instead. Forked workers then found CUDA poisoned on the
                # H100 (benchmarks/results/gpu-2026-11-21.md), even with the narrowed preload. This sets it for the
                # whole process (the forkserver inherits it when it starts, whoever starts it): is_available() then
                # trusts NVML's device count, torch's recommended check for code that forks.
                os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
            # The preloaded libraries' import-time notices go to a pending log, not the console (evalkit.logs).
            from evalkit.logs import PENDING_LOG_ENV, new_pending_log

            # A forkserver started again in the same stage (the GPU preload given up) appends to the first one's
            # file: the stage moves one pending log into logs/generate.log, and the first server's lines say why.
            pending = os.environ.get(PENDING_LOG_ENV)
            if not (pending and os.path.isfile(pending)):
                os.environ[PENDING_LOG_ENV] = str(new_pending_log("forkserver"))
            modules = [m for m in preload_modules(gpu, _FAMILY) if package_available(m.split(".")[0])]
            _GPU_PRELOAD_IN_FORCE = (gpu and not _GPU_PRELOAD_GIVEN_UP and gpu_preload_mode() == "full"
                                     and known_to_poison(_FAMILY) is None)
            if _GPU_PRELOAD_IN_FORCE:
                modules.append("evalkit.generate.worker.preload_gpu")  # last: it reads GPU_PRELOAD_ENV
            ctx.set_forkserver_preload(["evalkit.generate.quiet_preload"] + modules)
            _FORKSERVER = ctx
        return _FORKSERVER


def start_forkserver(family: str | None = None, tokenizers: tuple[str, tuple[str, ...]] | None = None) -> None:
    """Start the forkserver now (in a thread, while the stage prepares the run), preloading `family`'s modules and,
    where it preloads those, `tokenizers` = (pipeline directory, tokenizer components): loaded once for every
    backend's process (evalkit/generate/worker/tokenizers.py)."""
    from multiprocessing import forkserver

    from evalkit.generate.worker.gpu_preload import GPU_PRELOAD_ENV, request
    from evalkit.generate.worker.tokenizers import PRELOAD_ENV, preload_request

    _forkserver(family)
    # The forkserver takes the requests from its environment when it starts; nothing else reads them, and they go
    # again as soon as the server has started.
    if _GPU_PRELOAD_IN_FORCE:
        from evalkit.generate.worker.run import gpu_deferred_modules
        from evalkit.quantizers.registry import package_available

        os.environ[GPU_PRELOAD_ENV] = request(
            [m for m in gpu_deferred_modules(_FAMILY) if package_available(m.split(".")[0])], tokenizers)
    elif tokenizers is not None:
        os.environ[PRELOAD_ENV] = preload_request(*tokenizers)
    try:
        forkserver.ensure_running()
    except Exception:  # noqa: BLE001 - the first backend's start will report it properly
        pass
    finally:
        os.environ.pop(PRELOAD_ENV, None)
        os.environ.pop(GPU_PRELOAD_ENV, None)


def stop_forkserver(kill: bool = False) -> None:
    """Stop the forkserver this process started, if any. It would exit by itself once this process does (it watches
    a pipe from us), but only after its preloading, and `evalkit run` goes on to other stages in this process.
    `kill`: do not wait for it to finish importing (after an error, when no worker is running)."""
    global _FORKSERVER
    with _FORKSERVER_LOCK:
        if _FORKSERVER is None:
            return
        from multiprocessing import forkserver

        pid = forkserver_pid()
        if kill and pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            forkserver._forkserver._stop()
        except Exception:  # noqa: BLE001 - an already dead server leaves nothing to stop
            pass
        _FORKSERVER = None


def forkserver_log() -> Path | None:
    """The pending file the forkserver's imports printed to (evalkit.logs), if one was started."""
    from evalkit.logs import PENDING_LOG_ENV

    name = os.environ.get(PENDING_LOG_ENV)
    return Path(name) if name else None


def forkserver_pid() -> int | None:
    """The running forkserver's pid (tests check that none is left behind)."""
    from multiprocessing import forkserver

    return getattr(forkserver._forkserver, "_forkserver_pid", None)


# Set once a forked worker reports that its forkserver had initialized CUDA: the rest of the run uses subprocesses.
_FORK_POISONED = False


def worker_mode() -> str:
    """'forkserver' (default on Linux) or 'subprocess' (EVALKIT_WORKER_MODE=subprocess: a fresh interpreter per
    backend, slower to start but sharing nothing at all with the parent)."""
    if _FORK_POISONED:
        return "subprocess"
    mode = os.environ.get("EVALKIT_WORKER_MODE", "forkserver" if sys.platform.startswith("linux") else "subprocess")
    if mode not in ("forkserver", "subprocess"):
        raise EvalkitError(f"EVALKIT_WORKER_MODE={mode!r}: expected forkserver or subprocess")
    return mode


def _spawn(rd: RunDir, spec: BackendSpec, env: dict[str, str], on_event: Any, tag: str) -> int:
    global _FORK_POISONED
    from evalkit.generate.worker.startup import SPAWNED_AT_ENV

    env = {**env, SPAWNED_AT_ENV: repr(time.time())}  # the worker's start-up is timed from here
    log_path = rd.log(spec.name)
    if worker_mode() == "subprocess":
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "evalkit.generate.worker", str(rd.root), spec.name, tag],
                                    stdout=subprocess.PIPE, stderr=log, env=env, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                try:
                    on_event(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a library printing to stdout; not ours
            return proc.wait()
    from evalkit.generate.worker.run import forked_main
    from evalkit.mainguard import check_main_guard

    check_main_guard("backend workers (forkserver processes)")
    ctx = _forkserver()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=forked_main, args=(str(rd.root), spec.name, str(log_path), env, send, tag),
                       daemon=False)
    proc.start()
    send.close()
    while True:
        if recv.poll(0.2):
            try:
                on_event(recv.recv())
            except EOFError:
                break
        elif not proc.is_alive():
            while recv.poll(0):
                try:
                    on_event(recv.recv())
                except EOFError:
                    break
            break
    proc.join()
    rc = proc.exitcode if proc.exitcode is not None else -1
    from evalkit.generate.worker.run import EXIT_POISONED_FORK

    if rc == EXIT_POISONED_FORK:  # the forkserver initialized CUDA
        global _GPU_PRELOAD_GIVEN_UP
        if _GPU_PRELOAD_IN_FORCE:  # the GPU preload did it: a forkserver without it, for the rest of the run
            from evalkit.generate.worker.gpu_preload import remember_poisoned

            _GPU_PRELOAD_GIVEN_UP = True
            remember_poisoned(_FAMILY, f"a worker forked for {spec.name} found CUDA initialized")
            stop_forkserver()
        else:  # the core preload did it: from now on, a fresh interpreter per backend
            _FORK_POISONED = True
        return _spawn(rd, spec, env, on_event, tag)
    return rc


def run_worker_process(rd: RunDir, spec: BackendSpec, env: dict[str, str], on_event: Any, tag: str,
                       shard: dict[str, Any] | None = None) -> None:
    """Run one worker for one rank's unit (`tag`) and make sure a record exists afterwards: a worker that died
    without writing its own gets a failed one naming the signal or exit code."""
    rd.log(spec.name).parent.mkdir(parents=True, exist_ok=True)
    rec_path = rd.shard_record(spec.name, tag)
    fold_previous_shard(rd, spec.name, tag)
    with open(rd.log(spec.name), "ab") as log:
        log.write(f"\n=== {utc_now()} worker for {spec.name} unit {tag} ===\n".encode())
        start = log.tell()  # what this worker writes comes after its header
    pending = forkserver_log()
    pending_start = _size(pending)
    rc = _spawn(rd, spec, env, on_event, tag)
    if rc != 0:
        rec = generation_record_if_any(rec_path)  # torn or mangled: as good as none
        if rec is None or rec.get("status") != "failed":
            # The worker died without writing its record (killed, segfault, OOM killer).
            if rc < 0:
                reason = f"worker killed by signal {signal.Signals(-rc).name}"
                if -rc == signal.SIGKILL:
                    reason += " (out of host memory?)"
            else:
                reason = f"worker exited with code {rc}"
            # The worker's own last word: its exception from its log, or, when it died while starting (before its
            # output went to its log), from the forkserver's log.
            said = worker_error_line(rd.log(spec.name), start)
            if not said and pending is not None:
                said = worker_error_line(pending, pending_start)
            write_unrun_record(rd, spec, "failed", f"{reason}: {said}" if said else
                               f"{reason}; it wrote nothing to {rd.relative(rd.log(spec.name))}", tag, shard)


def _size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:
        return 0


def worker_error_line(path: Path, start: int = 0) -> str:
    """What a dead worker last said in `path` after byte `start`: the exception line of its last traceback
    (`EvalkitError: ...`), else its last non-empty line; "" when it said nothing."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip() and not ln.startswith("=== ")]
    exception = ""
    in_traceback = False
    for ln in lines:
        if ln.startswith("Traceback (most recent call last):"):
            in_traceback = True
        elif in_traceback and not ln[:1].isspace():
            exception, in_traceback = ln, False  # the first unindented line after the frames
    said = exception or (lines[-1].strip() if lines else "")
    return said[:300]

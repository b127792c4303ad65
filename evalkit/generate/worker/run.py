"""One backend, one process: load the pipeline, measure, generate the missing images, write the record. The image
loop (warm-up, generation, each image's file and entry) is evalkit.generate.worker.images.

Run by the generate stage as `python -m evalkit.generate.worker.run RUN_DIR BACKEND TAG`. A process per backend keeps
peak-memory statistics clean and lets a crash (OOM, segfault in a kernel) take down only that backend.
Progress goes to stdout as JSON lines; everything else goes to stderr (the run's logs/<backend>.log).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Any

from evalkit.families.registry import family_of_manifest
from evalkit.generate.options import SDPA_BACKENDS
from evalkit.quantizers.base import BuildContext, Quantizer
from evalkit.quantizers.registry import parse_backend, quantizer_for
from evalkit.records import checked_generation_record, read_manifest, read_unit
from evalkit.io import atomic_write_json
from evalkit.rundir import SCHEMA_VERSION, RunDir, load_run_plugins
from evalkit.generate.worker import events, startup
from evalkit.generate.worker.events import emit
from evalkit.generate.worker.images import WriteError, generate_images
from evalkit.generate.worker.tokenizers import load_tokenizers

# Imported once by the forkserver, so each backend's process starts with them loaded (they cost ~4 s a process).
# A forked child of a process that initialized CUDA cannot use CUDA at all, so on a machine with an NVIDIA GPU the
# forkserver imports these first, which leave CUDA alone (probed on an H100, benchmarks/results/gpu-2026-11-21.md),
# and the rest (gpu_deferred_modules: a diffusers pipeline module, whose import asks bitsandbytes for every GPU's
# compute capability) through evalkit.generate.worker.gpu_preload, which answers that question from NVML.
PRELOAD = ("torch", "numpy", "PIL.Image", "diffusers", "safetensors.torch", "evalkit.generate.worker.loading",
           "evalkit.generate.worker.measure")
PRELOAD_NO_GPU = ("transformers",)


def preload_modules(gpu: bool, family: str | None = None) -> tuple[str, ...]:
    """What the forkserver imports as such: the core modules, then without a GPU the run's model family's pipeline
    and text-encoder modules, each backend library's own (its Library record says which) and the run's tokenizers.
    On a GPU machine only the core and the libraries safe to import before forking (Library.preload_on_gpu_machine);
    gpu_deferred_modules are the rest, for evalkit.generate.worker.gpu_preload."""
    from evalkit.families.registry import get_family
    from evalkit.quantizers.registry import library_list

    libs = tuple(m for lib in library_list() if not gpu or lib.preload_on_gpu_machine for m in lib.preload_modules)
    if gpu:
        return tuple(dict.fromkeys(PRELOAD + libs))
    fam = get_family(family).preload_modules if family else ()
    # Last: the run's tokenizers (needs transformers), once the libraries are in
    tokenizers = ("evalkit.generate.worker.preload_tokenizers",) if family else ()
    return tuple(dict.fromkeys(PRELOAD + PRELOAD_NO_GPU + fam + libs + tokenizers))


def gpu_deferred_modules(family: str | None = None) -> tuple[str, ...]:
    """On a GPU machine, what `preload_modules` leaves out: transformers, the family's modules and the other
    libraries' (evalkit.generate.worker.gpu_preload imports them without creating a CUDA context)."""
    from evalkit.families.registry import get_family
    from evalkit.quantizers.registry import library_list

    fam = get_family(family).preload_modules if family else ()
    libs = tuple(m for lib in library_list() if not lib.preload_on_gpu_machine for m in lib.preload_modules)
    return tuple(dict.fromkeys(PRELOAD_NO_GPU + fam + libs))


# Exit status of a forked worker that found CUDA unusable because its forkserver had initialized it; the stage then
# reruns that backend from a forkserver without the GPU preload, or failing that, and for every later backend, in a
# fresh interpreter (EVALKIT_WORKER_MODE=subprocess).
EXIT_POISONED_FORK = 75


def fork_is_poisoned() -> bool:
    """True when this forked process inherited an initialized CUDA context (torch would refuse every CUDA call)."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and getattr(torch.cuda, "_is_in_bad_fork", lambda: False)())


from evalkit.procs import die_with_parent  # noqa: E402 (re-exported: workers and tests use it)
from evalkit.timeutil import utc_now


def forked_main(run_dir: str, backend: str, log_path: str, env: dict[str, str], conn: Any, tag: str) -> None:
    """Entry point of a backend's process forked from the preloaded forkserver."""
    startup.entered("forkserver")
    # Its parent is the forkserver, which exits when the stage's process does (it watches a pipe from it).
    die_with_parent()
    # The forkserver's environment is the one it started with; this backend's (GPU pinning, thread count) wins.
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)  # libraries that print go to the log, not into the event stream
    os.dup2(fd, 2)
    os.close(fd)
    events.connect(conn)
    if fork_is_poisoned():
        print("forked worker cannot use CUDA (its forkserver initialized CUDA); the stage reruns it in a fresh "
              "process (from a forkserver without the GPU preload, or a subprocess)", flush=True)
        conn.close()
        sys.exit(EXIT_POISONED_FORK)
    code = run_worker(run_dir, backend, tag)
    conn.close()
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


def _error_reason(e: BaseException) -> str:
    if isinstance(e, WriteError):
        return e.strerror
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    name = type(e).__name__
    if name == "OutOfMemoryError":
        return f"CUDA out of memory: {msg[:300]}"
    return f"{name}: {msg[:400]}" if msg else name


def partial_reason(backend: Any, quantization: dict[str, Any]) -> str | None:
    """Why this backend quantized less than its name says here (None when it did what it says): a component its
    recipe quantizes by default left in bf16 on this device (bnb's transformer on CPU), or a component it was to
    quantize in which no layer ended up quantized."""
    if backend.reference:
        return None
    reasons = []
    if quantization.get("note"):
        reasons.append(quantization["note"])
    counts = quantization.get("quantized_linear_count") or {}
    for comp in quantization.get("components_quantized") or []:
        if counts.get(comp) == 0:
            reasons.append(f"{comp}: no layer was quantized")
    return "; ".join(reasons) or None


class Target:
    """Where one worker's output goes: one work unit of a rank, generation/shards/<backend>/<tag>.*
    (docs/run-directory.md "Shards"); the stage merges the units into generation/<backend>.json."""

    def __init__(self, rd: RunDir, backend: str, tag: str) -> None:
        self.tag = tag
        self.unit: dict[str, Any] = read_unit(rd.shard_unit(backend, tag))
        self.partial = rd.shard_partial(backend, tag)
        self.record = rd.shard_record(backend, tag)

    def prompts(self, manifest: dict[str, Any]) -> list[dict[str, Any]]:
        ids = set(self.unit.get("prompt_ids") or [])
        return [p for p in manifest["prompts"] if p["id"] in ids]

    def shard_info(self) -> dict[str, Any]:
        import socket

        return {"tag": self.tag, "rank": self.unit.get("rank"), "world_size": self.unit.get("world_size"),
                "host": socket.gethostname(), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "prompt_ids": list(self.unit.get("prompt_ids") or [])}


def run_worker(run_dir: str, backend_name: str, tag: str) -> int:
    """Generate the missing images of the prompts in the unit file of `tag` (a rank's share of one backend) and
    write that unit's record; returns the exit status."""
    rd = RunDir(__import__("pathlib").Path(run_dir))
    manifest = read_manifest(rd.manifest)
    load_run_plugins(manifest)  # the run's own backends, families and metrics, before any name is read
    cfg = manifest["config"]
    gen = manifest["generation"]
    spec = parse_backend(backend_name)
    target = Target(rd, spec.name, tag)
    started = utc_now()
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "backend": spec.name, "status": "failed", "reason": None, "error": None,
        "recipe": spec.recipe(cfg.get("backend_options", {}).get(spec.backend.name)),
        "started_utc": started, "pid": os.getpid(), "images": [], "shard": target.shard_info(),
    }
    try:
        _run(rd, manifest, cfg, gen, spec, record, target)
        record["status"] = "ok"
        code = 0
    except startup.PoisonedFork as e:  # nothing made yet: the stage reruns this unit, and writes no record for it
        print(f"forked worker cannot use CUDA ({e}); the stage reruns it in a fresh process "
              "(from a forkserver without the GPU preload, or a subprocess)", flush=True)
        return EXIT_POISONED_FORK
    except BaseException as e:  # noqa: BLE001 - every failure must end up in the record
        record["status"] = "failed"
        record["reason"] = _error_reason(e)
        record["error"] = {"type": type(e).__name__, "message": str(e)[:4000],
                           "traceback_tail": "".join(traceback.format_exception(e))[-4000:]}
        traceback.print_exc()
        code = 1
    record["finished_utc"] = utc_now()
    try:
        atomic_write_json(target.record, checked_generation_record(record))
    except OSError as e:
        # No record can be written (full disk): the stage learns why from the event and the exit code; the images
        # and the partial list already written stay, so a rerun resumes.
        reason = f"cannot write {target.record}: {e.strerror or e}"
        print(reason, file=sys.stderr, flush=True)
        emit("done", status="failed", reason=reason)
        return 1
    if code == 0:
        try:
            target.partial.unlink()
        except FileNotFoundError:
            pass
    emit("done", status=record["status"], reason=record["reason"])
    return code


def _run(rd: RunDir, manifest: dict, cfg: dict, gen: dict, spec: Any, record: dict[str, Any], target: Target) -> None:
    import torch

    from evalkit.generate.worker import loading, measure

    family = family_of_manifest(manifest)
    record["startup"] = started = startup.begin(family.preload_modules)
    numerics = apply_numerics(torch, requested_numerics(cfg, target.unit))
    numerics_before = numerics_state(torch)
    device = cfg["device"]
    since = startup.since_entry()
    started["setup_s"] = None if since is None else round(since, 3)
    t = time.perf_counter()
    capability = startup.cuda_capability(torch) if device == "cuda" else None
    cuda_s = time.perf_counter() - t
    from evalkit.generate.worker.compute_dtype import dtypes_of

    ctx = BuildContext(device=device, capability=capability, model_path=manifest["model"]["path"],
                       options=record["recipe"]["options"], cache_dir=cfg["cache_dir"], family=family.key,
                       checkpoint=cfg.get("gguf_file"), compute_dtypes=dtypes_of(manifest),
                       prompts=tuple(p["text"] for p in manifest["prompts"]), generation=gen)
    requested = tuple(cfg["components"]) if cfg.get("components") else None
    on_cuda = device == "cuda"

    # --- load -------------------------------------------------------------------------------------------------
    emit("phase", phase="loading")
    record["prepare"] = _before_the_clock(torch, family, spec, ctx, on_cuda, started, cuda_s)
    # The same tokenizer objects for every backend, loaded outside the clock (evalkit/generate/worker/tokenizers.py)
    t = time.perf_counter()
    tokenizers = load_tokenizers(ctx.model_path, [t.subfolder for t in family.tokenizers])
    started["tokenizers_s"] = round(time.perf_counter() - t, 3)
    startup.finish(started)
    if on_cuda:
        measure.cuda_reset_peak()
    t0 = time.perf_counter()
    pipe, qinfo = loading.load_pipeline(spec, ctx, family, requested, tokenizers)
    placement = loading.place_pipeline(pipe, spec, device)
    compile_info = loading.apply_compile(pipe, spec, cfg.get("compile"), cfg["cache_dir"], family)
    changed = restore_numerics(torch, numerics_before)
    if changed:
        print(f"{spec.name}: loading changed {', '.join(changed)}; restored, so the images differ from the "
              f"reference only by the backend", file=sys.stderr, flush=True)
    if on_cuda:
        torch.cuda.synchronize()
    record["load_time_s"] = time.perf_counter() - t0
    pipe.set_progress_bar_config(disable=True)

    memory = _memory_after_load(device)
    record["quantization"] = {**qinfo, **loading.inspect_quantization(pipe, family)}
    record["quantization"]["partial_reason"] = partial_reason(spec.backend, record["quantization"])
    record["placement"] = placement
    record["compile"] = compile_info
    record["footprint"] = loading.pipeline_footprint(pipe, family)
    record["numerics"] = {**numerics, "batch_size": max(1, int(gen.get("batch_size", 1))),
                          "changed_by_loading": changed, "compute_plan": dict(ctx.compute_dtypes) or None}
    emit("phase", phase="loaded", load_time_s=record["load_time_s"])

    with sdpa_context(torch, numerics.get("sdpa_backend")):
        generate_images(rd, manifest, gen, spec, record, pipe, device, compile_info, memory, family,
                        mine=target.prompts(manifest), partial=target.partial)


def _before_the_clock(torch: Any, family: Any, spec: Any, ctx: BuildContext, on_cuda: bool,
                      started: dict[str, Any], cuda_s: float) -> Any:
    """What happens before the load clock starts; returns the library's one-time prepare step's record (None when it
    has none). Python imports and CUDA context creation are process start-up (timed into `started`), not model
    loading, and one-time library steps (optimum-quanto's CUDA kernel build: minutes, once per install) are not
    loading either."""
    import importlib

    import diffusers

    t = time.perf_counter()
    getattr(diffusers, family.pipeline_class)  # diffusers imports a pipeline's module lazily, on first access
    importlib.import_module(spec.backend.library.import_name)
    started["imports_s"] = round(time.perf_counter() - t, 3)
    if on_cuda:
        t = time.perf_counter()
        torch.zeros(1, device="cuda")
        started["cuda_context_s"] = round(cuda_s + time.perf_counter() - t, 3)
    quantizer = quantizer_for(spec.backend)
    if type(quantizer).prepare is Quantizer.prepare:
        return None
    emit("phase", phase="preparing")
    return quantizer.prepare(spec.backend, ctx)


def _memory_after_load(device: str) -> dict[str, Any]:
    """The record's memory figures once the pipeline is loaded (CUDA allocator figures, or on a CPU why there are
    none and the process's RSS)."""
    from evalkit.generate.worker import measure

    memory: dict[str, Any] = {"device": device}
    if device == "cuda":
        snap = measure.cuda_snapshot()
        memory.update(after_load_allocated_gib=snap["allocated_gib"], after_load_reserved_gib=snap["reserved_gib"],
                      load_peak_allocated_gib=snap["max_allocated_gib"], load_peak_reserved_gib=snap["max_reserved_gib"],
                      cuda_reason=None)
    else:
        memory.update(after_load_allocated_gib=None, after_load_reserved_gib=None, load_peak_allocated_gib=None,
                      load_peak_reserved_gib=None, peak_allocated_gib=None, peak_reserved_gib=None,
                      cuda_reason=f"device is {device}: no CUDA allocator; see cpu_peak_rss_gib (host RAM)",
                      cpu_rss_after_load_gib=measure.current_rss_gib())
    return memory


# Numerics knobs: settings a release should tolerate, applied by the worker so that `evalkit calibrate` can
# regenerate the reference under them. They are generate options (--threads, --tf32, --sdpa-backend), stored in the
# manifest's config.numerics; the thread count can also come from the unit file (the rank's share of its machine's
# cores). The record states what was in force (record["numerics"]), not what was asked for.


def requested_numerics(cfg: dict[str, Any], unit: dict[str, Any] | None) -> dict[str, Any]:
    """What this worker is asked for: the manifest's config.numerics, with the unit file's thread count (the rank
    resolved --threads or its share of the cores) over it."""
    asked = dict(cfg.get("numerics") or {})
    if unit is not None and unit.get("threads") is not None:
        asked["threads"] = unit["threads"]
    return asked


def apply_numerics(torch: Any, asked: dict[str, Any]) -> dict[str, Any]:
    """Apply `asked` (threads: intra-op threads; tf32: TF32 matmul and cuDNN conv; sdpa_backend: one of
    SDPA_BACKENDS, entered around generation by sdpa_context). Returns the settings in force. A value that is not
    understood is an error: a calibration must never run under settings it did not ask for."""
    unknown = sorted(set(asked) - {"threads", "tf32", "sdpa_backend"})
    if unknown:
        raise ValueError(f"numerics {unknown}: not understood (expected threads, tf32, sdpa_backend)")
    threads = asked.get("threads")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads={threads!r}: expected a positive integer")
        torch.set_num_threads(threads)
    tf32 = asked.get("tf32")
    if tf32 is not None:
        if not isinstance(tf32, bool):
            raise ValueError(f"tf32={tf32!r}: expected true or false")
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    sdpa = asked.get("sdpa_backend")
    if sdpa is not None and sdpa not in SDPA_BACKENDS:
        raise ValueError(f"sdpa_backend={sdpa!r}: expected one of {', '.join(SDPA_BACKENDS)}")
    return {"intra_op_threads": torch.get_num_threads(), "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "sdpa_backend": sdpa}


def numerics_state(torch: Any) -> dict[str, Any]:
    """The process-wide matmul precision settings a library can change while it loads."""
    return {"tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def restore_numerics(torch: Any, before: dict[str, Any]) -> dict[str, Any]:
    """Put back what loading changed, and say what it was. torchao 0.17's configs (unless told not to) set float32
    matmul precision to "high", i.e. TF32, for the whole process: that backend's images would then differ from the
    reference by TF32 as well as by its quantization, and its record would still say tf32_matmul false."""
    after = numerics_state(torch)
    changed = {k: {"set_by_loading": after[k], "restored_to": before[k]} for k in before if after[k] != before[k]}
    if changed:
        # precision first: setting it also sets allow_tf32, which the next lines then put back exactly
        torch.set_float32_matmul_precision(before["float32_matmul_precision"])
        torch.backends.cuda.matmul.allow_tf32 = before["tf32_matmul"]
        torch.backends.cudnn.allow_tf32 = before["cudnn_tf32"]
    return changed


def sdpa_context(torch: Any, backend: str | None) -> Any:
    """A context that restricts scaled_dot_product_attention to `backend` (None: torch's own choice)."""
    import contextlib

    if backend is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    member = {"math": "MATH", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
              "cudnn": "CUDNN_ATTENTION"}[backend]
    return sdpa_kernel(getattr(SDPBackend, member))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print("usage: python -m evalkit.generate.worker.run RUN_DIR BACKEND TAG", file=sys.stderr)
        return 2
    startup.entered("subprocess")
    parent = os.environ.get("EVALKIT_PARENT_PID")
    die_with_parent(int(parent) if parent and parent.isdigit() else None)  # subprocess mode: the parent is the stage
    return run_worker(argv[0], argv[1], argv[2])


if __name__ == "__main__":
    sys.exit(main())

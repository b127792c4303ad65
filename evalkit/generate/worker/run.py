"""One backend, one process: load the pipeline, measure, generate the missing images, write the record.

Run by the generate stage as `python -m evalkit.generate.worker.run RUN_DIR BACKEND TAG`. A process per backend keeps
peak-memory statistics clean and lets a crash (OOM, segfault in a kernel) take down only that backend.
Progress goes to stdout as JSON lines; everything else goes to stderr (the run's logs/<backend>.log).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any

from evalkit.families.registry import family_of_manifest
from evalkit.generate.options import SDPA_BACKENDS
from evalkit.quantizers.base import BuildContext, Quantizer
from evalkit.quantizers.registry import parse_backend, quantizer_for
from evalkit.records import checked_generation_record, read_unit
from evalkit.io import append_jsonl, atomic_write_bytes, atomic_write_json, read_json, read_jsonl, sha256_bytes
from evalkit.rundir import SCHEMA_VERSION, RunDir, load_run_plugins

# All-black means every channel of every pixel is at most this (out of 255): a VAE decoding zeros/NaNs.
ALL_BLACK_MAX = 3


# Where progress events go: stdout JSON lines (subprocess mode) or a multiprocessing pipe (forkserver mode).
_event_conn: Any = None

# Imported once by the forkserver, so each backend's process starts with them loaded (they cost ~4 s a process).
# A forked child of a process that initialized CUDA cannot use CUDA at all, so on a machine with an NVIDIA GPU the
# forkserver imports only modules that leave CUDA alone. Probed on an H100 (benchmarks/results/gpu-2026-11-21.md):
# torch, numpy, PIL and diffusers' top level do; importing a diffusers pipeline module initializes CUDA, and so
# does optimum-quanto (it asks every GPU for its compute capability).
PRELOAD = ("torch", "numpy", "PIL.Image", "diffusers", "safetensors.torch", "evalkit.generate.worker.loading",
           "evalkit.generate.worker.measure")
PRELOAD_NO_GPU = ("transformers",)


def preload_modules(gpu: bool, family: str | None = None) -> tuple[str, ...]:
    """What the forkserver imports: the core modules, the run's model family's pipeline and text-encoder modules
    (no GPU only: they initialize CUDA), then each backend library's own (its Library record says which, and whether
    they are safe to import before forking on a GPU machine)."""
    from evalkit.families.registry import get_family
    from evalkit.quantizers.registry import library_list

    libs = tuple(m for lib in library_list() if not gpu or lib.preload_on_gpu_machine for m in lib.preload_modules)
    fam = get_family(family).preload_modules if family and not gpu else ()
    return tuple(dict.fromkeys(PRELOAD + (() if gpu else PRELOAD_NO_GPU) + fam + libs))

# Exit status of a forked worker that found CUDA unusable because its forkserver had initialized it; the stage then
# reruns that backend, and every later one, in a fresh interpreter (EVALKIT_WORKER_MODE=subprocess).
EXIT_POISONED_FORK = 75


def fork_is_poisoned() -> bool:
    """True when this forked process inherited an initialized CUDA context (torch would refuse every CUDA call)."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and getattr(torch.cuda, "_is_in_bad_fork", lambda: False)())


def emit(event: str, **data: Any) -> None:
    msg = {"event": event, **data}
    if _event_conn is not None:
        try:
            _event_conn.send(msg)
        except (BrokenPipeError, OSError):
            pass
        return
    print(json.dumps(msg), flush=True)


from evalkit.procs import die_with_parent  # noqa: E402 (re-exported: workers and tests use it)
from evalkit.timeutil import utc_now


def forked_main(run_dir: str, backend: str, log_path: str, env: dict[str, str], conn: Any, tag: str) -> None:
    """Entry point of a backend's process forked from the preloaded forkserver."""
    global _event_conn
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
    _event_conn = conn
    if fork_is_poisoned():
        print("forked worker cannot use CUDA (its forkserver initialized CUDA); the stage reruns it as a subprocess",
              flush=True)
        conn.close()
        sys.exit(EXIT_POISONED_FORK)
    code = run_worker(run_dir, backend, tag)
    conn.close()
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


def image_flags(arr: Any) -> list[str]:
    import numpy as np

    flags = []
    if np.isnan(arr).any():
        flags.append("nan")
    u8 = to_uint8(arr)
    if int(u8.max()) <= ALL_BLACK_MAX:
        flags.append("all_black")
    return flags


def to_uint8(arr: Any) -> Any:
    import numpy as np

    # Same rounding as diffusers' numpy_to_pil; NaN becomes 0 so the PNG still exists and the flag tells why.
    return (np.nan_to_num(arr, nan=0.0).clip(0, 1) * 255).round().astype("uint8")


def encode_png(u8: Any) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(u8, mode="RGB").save(buf, format="PNG", optimize=False)  # no metadata: same pixels, same bytes
    return buf.getvalue()


class WriteError(OSError):
    """A file of the run could not be written; the message names it."""


def write_or_explain(write: Any, path: Any, data: Any) -> None:
    """`write(path, data)`, turning an OSError (ENOSPC, EROFS, EACCES) into one naming the path and the cause."""
    try:
        write(path, data)
    except OSError as e:
        raise WriteError(e.errno, f"cannot write {path}: {e.strerror or e}") from None


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
    manifest = read_json(rd.manifest)
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

    numerics = apply_numerics(torch, requested_numerics(cfg, target.unit))
    numerics_before = numerics_state(torch)
    device = cfg["device"]
    capability = tuple(torch.cuda.get_device_capability()) if device == "cuda" else None
    family = family_of_manifest(manifest)
    from evalkit.generate.worker.compute_dtype import dtypes_of

    ctx = BuildContext(device=device, capability=capability, model_path=manifest["model"]["path"],
                       options=record["recipe"]["options"], cache_dir=cfg["cache_dir"], family=family.key,
                       checkpoint=cfg.get("gguf_file"), compute_dtypes=dtypes_of(manifest),
                       prompts=tuple(p["text"] for p in manifest["prompts"]), generation=gen)
    requested = tuple(cfg["components"]) if cfg.get("components") else None
    on_cuda = device == "cuda"

    # --- load -------------------------------------------------------------------------------------------------
    emit("phase", phase="loading")
    record["prepare"] = _before_the_clock(torch, family, spec, ctx, on_cuda)
    if on_cuda:
        measure.cuda_reset_peak()
    t0 = time.perf_counter()
    pipe, qinfo = loading.load_pipeline(spec, ctx, family, requested)
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
        _generate_images(rd, manifest, gen, spec, record, pipe, device, compile_info, memory, target, family)


def _before_the_clock(torch: Any, family: Any, spec: Any, ctx: BuildContext, on_cuda: bool) -> Any:
    """What happens before the load clock starts; returns the library's one-time prepare step's record (None when it
    has none). Python imports and CUDA context creation are process start-up, not model loading, and one-time library
    steps (optimum-quanto's CUDA kernel build: minutes, once per install) are not loading either."""
    import importlib

    import diffusers

    getattr(diffusers, family.pipeline_class)  # diffusers imports a pipeline's module lazily, on first access

    importlib.import_module(spec.backend.library.import_name)
    if on_cuda:
        torch.zeros(1, device="cuda")
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


def _resumed(rd: RunDir, manifest: dict, backend: str, target: Target) -> dict[str, dict[str, Any]]:
    """The entries of earlier attempts of this unit's tag that still hold: the prompt's seed, and still the file that
    attempt wrote (evalkit.integrity); the others are said and regenerated."""
    from evalkit.integrity import verify_images

    seeds = {p["id"]: p["seed"] for p in manifest["prompts"]}
    partial = [e for e in read_jsonl(target.partial)
               if isinstance(e, dict) and seeds.get(e.get("prompt_id"), object()) == e.get("seed")]
    check = verify_images(rd, backend, {"images": partial}, manifest=manifest, check_extra=False)
    for bad in check.problems:
        print(f"regenerating {bad['prompt_id']}: {bad['path']}: {bad['reason']}", file=sys.stderr, flush=True)
    return {line["prompt_id"]: line for line in check.ok}


def _write_image(rd: RunDir, backend: str, p: dict[str, Any], arr: Any, batch_s: float, batch_size: int,
                 target: Target, latents_nonfinite: Any = None) -> dict[str, Any]:
    """Write one generated image and append its entry to the unit's partial list; returns the entry. The image's
    tripwires (non-finite latents and pixels, a near-constant image) are taken before the PNG (evalkit.tripwires)."""
    from evalkit.generate.worker.tripwire_hook import image_checks

    u8 = to_uint8(arr)
    png = encode_png(u8)
    path = rd.image_path(backend, p["id"], p["seed"])
    write_or_explain(atomic_write_bytes, path, png)
    st = path.stat()
    # Size and mtime let later stages skip re-hashing a file that has not changed since it was written.
    entry = {"prompt_id": p["id"], "seed": p["seed"], "path": rd.relative(path), "sha256": sha256_bytes(png),
             "size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "latency_s": batch_s / batch_size,
             "batch_size": batch_size, "flags": image_flags(arr), "pid": os.getpid(),
             **image_checks(arr, u8, latents_nonfinite, prompt_id=p["id"], seed=p["seed"], file=rd.relative(path))}
    write_or_explain(append_jsonl, target.partial, entry)
    return entry


def _generate_images(rd: RunDir, manifest: dict, gen: dict, spec: Any, record: dict[str, Any], pipe: Any, device: str,
                     compile_info: Any, memory: dict[str, Any], target: Target, family: Any) -> None:
    import torch

    from evalkit.generate.worker import loading, measure
    from evalkit.generate.worker.tripwire_hook import LatentsProbe

    if device == "cuda":
        measure.cuda_reset_peak()
    prompts = manifest["prompts"]
    probe = LatentsProbe(pipe)  # final latents for the non-finite tripwire (evalkit.tripwires)
    common = dict(family.call_arguments(gen), output_type="np", **probe.kwargs())
    warm_times = _warm_up(manifest, gen, spec, record, pipe, device, family, probe)

    # --- generate what is missing ---------------------------------------------------------------------------------
    done = _resumed(rd, manifest, spec.name, target)
    mine = target.prompts(manifest)
    todo = [p for p in mine if p["id"] not in done]
    record["resumed_images"] = len(done)  # verified images of earlier attempts carried forward, not redone
    emit("progress", done=len(mine) - len(todo), total=len(mine))
    bs = max(1, int(gen.get("batch_size", 1)))
    for start in range(0, len(todo), bs):
        batch = todo[start:start + bs]
        gens = [torch.Generator("cpu").manual_seed(p["seed"]) for p in batch]
        out, dt = loading.timed(lambda: pipe(prompt=[p["text"] for p in batch], generator=gens, **common), device)
        latents_nonfinite = probe.take(len(batch))
        for p, arr, lat_bad in zip(batch, out.images, latents_nonfinite):
            done[p["id"]] = _write_image(rd, spec.name, p, arr, dt, len(batch), target, lat_bad)
        # latency_s: this batch's seconds an image, so the stage's study-wide ETA corrects itself from measured images
        emit("progress", done=sum(1 for p in mine if p["id"] in done), total=len(mine), latency_s=dt / len(batch))
    # A unit's record also carries its tag's earlier verified entries outside this unit: a resumed rank loses nothing.
    record["images"] = [done[p["id"]] for p in prompts if p["id"] in done]
    _finish_record(record, spec, device, probe, memory, warm_times, compile_info)


def _warm_up(manifest: dict, gen: dict, spec: Any, record: dict[str, Any], pipe: Any, device: str, family: Any,
             probe: Any) -> list[float]:
    """The warm-up calls (excluded from latency; compilation for +compile happens here), and what each component
    computed in during them (compute_dtype); returns their seconds."""
    import torch

    from evalkit.generate.worker import loading
    from evalkit.generate.worker.compute_dtype import dtypes_of, observe_activations, record_activations

    prompts = manifest["prompts"]
    # --warmup-steps: the warm-up runs the same shapes through fewer denoising steps (same kernels and graphs)
    warm_gen = {**gen, "num_inference_steps": int(gen.get("warmup_steps") or gen["num_inference_steps"])}
    warm_call = dict(family.call_arguments(warm_gen), output_type="np", **probe.kwargs())
    warm_times = []
    with observe_activations(pipe, [c.name for c in family.components]) as seen:  # what each computed in
        for _ in range(int(gen.get("warmup_runs", 1))):
            emit("phase", phase="warmup")
            g = torch.Generator("cpu").manual_seed(prompts[0]["seed"])
            _, dt = loading.timed(lambda: pipe(prompt=prompts[0]["text"], generator=g, **warm_call), device)
            warm_times.append(dt)
    record["warmup_times_s"] = warm_times
    if warm_times and (below := record_activations(record, dtypes_of(manifest), seen)):
        print(f"{spec.name}: {below}", file=sys.stderr, flush=True)
    return warm_times


def _finish_record(record: dict[str, Any], spec: Any, device: str, probe: Any, memory: dict[str, Any],
                   warm_times: list[float], compile_info: Any) -> None:
    """Memory peaks, tripwire totals, latency and compile time, once every image of the unit is written."""
    from evalkit.generate.worker import measure
    from evalkit.generate.worker.tripwire_hook import record_section

    if device == "cuda":
        snap = measure.cuda_snapshot()
        memory.update(peak_allocated_gib=snap["max_allocated_gib"], peak_reserved_gib=snap["max_reserved_gib"])
    memory["cpu_peak_rss_gib"] = measure.peak_rss_gib()
    record["memory"] = memory
    record["tripwires"] = record_section(probe, {**record, "status": "ok"}, spec.backend.reference)
    # Latency only from images timed in this process: a resumed run may come from another process or machine state.
    fresh = [e["latency_s"] for e in record["images"] if e.get("pid") == os.getpid()]
    record["latency"] = measure.latency_stats(fresh or [e["latency_s"] for e in record["images"]], len(warm_times))
    if compile_info is not None:
        from evalkit.generate.worker.compile_options import dynamo_stats

        compile_info["dynamo"] = dynamo_stats()
    if compile_info is not None and warm_times and record["latency"].get("median_s") is not None:
        record["compile_time_s"] = max(0.0, warm_times[0] - record["latency"]["median_s"])
    else:
        record["compile_time_s"] = None


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
    parent = os.environ.get("EVALKIT_PARENT_PID")
    die_with_parent(int(parent) if parent and parent.isdigit() else None)  # subprocess mode: the parent is the stage
    return run_worker(argv[0], argv[1], argv[2])


if __name__ == "__main__":
    sys.exit(main())

"""The image loop of one worker: warm up, generate the unit's missing images batch by batch, write each as a PNG
with its entry in the unit's partial list, and finish the record's measurements once every image is written.

run.py loads the pipeline and writes the record; this module fills in the record's images and what is measured
over them (latency, memory peaks, tripwires). An entry is appended to the partial list as soon as its PNG is
written, so a rerun resumes from the images that still hold.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path
from typing import Any

from evalkit.generate.worker.events import emit
from evalkit.io import append_jsonl, atomic_write_bytes, read_jsonl, sha256_bytes
from evalkit.rundir import RunDir

# All-black means every channel of every pixel is at most this (out of 255): a VAE decoding zeros/NaNs.
ALL_BLACK_MAX = 3


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


def generate_images(rd: RunDir, manifest: dict, gen: dict, spec: Any, record: dict[str, Any], pipe: Any,
                    device: str, compile_info: Any, memory: dict[str, Any], family: Any, *,
                    mine: list[dict[str, Any]], partial: Path) -> None:
    """Warm up, then generate the unit's prompts (`mine`) that no earlier attempt left a verified image of: each
    image written as it comes, its entry appended to the unit's partial list `partial`. Fills in record["images"]
    and the measurements over them."""
    import torch

    from evalkit.generate.worker import loading, measure
    from evalkit.generate.worker.tripwire_hook import LatentsProbe

    if device == "cuda":
        measure.cuda_reset_peak()
    prompts = manifest["prompts"]
    probe = LatentsProbe(pipe)  # final latents for the non-finite tripwire (evalkit.tripwires)
    common = dict(family.call_arguments(gen), output_type="np", **probe.kwargs())
    warm_times = _warm_up(manifest, gen, spec, record, pipe, device, family, probe, compile_info is not None)

    # --- generate what is missing ---------------------------------------------------------------------------------
    done = _resumed(rd, manifest, spec.name, partial)
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
            done[p["id"]] = _write_image(rd, spec.name, p, arr, dt, len(batch), partial, lat_bad)
        # latency_s: this batch's seconds an image, so the stage's study-wide ETA corrects itself from measured images
        emit("progress", done=sum(1 for p in mine if p["id"] in done), total=len(mine), latency_s=dt / len(batch))
    # A unit's record also carries its tag's earlier verified entries outside this unit: a resumed rank loses nothing.
    record["images"] = [done[p["id"]] for p in prompts if p["id"] in done]
    _finish_record(record, gen, spec, device, probe, memory, warm_times, compile_info)


def _resumed(rd: RunDir, manifest: dict, backend: str, partial: Path) -> dict[str, dict[str, Any]]:
    """The entries of earlier attempts of this unit's tag (its partial list) that still hold: the prompt's seed, and
    still the file that attempt wrote (evalkit.integrity); the others are said and regenerated."""
    from evalkit.integrity import verify_images

    seeds = {p["id"]: p["seed"] for p in manifest["prompts"]}
    entries = [e for e in read_jsonl(partial)
               if isinstance(e, dict) and seeds.get(e.get("prompt_id"), object()) == e.get("seed")]
    check = verify_images(rd, backend, {"images": entries}, manifest=manifest, check_extra=False)
    for bad in check.problems:
        print(f"regenerating {bad['prompt_id']}: {bad['path']}: {bad['reason']}", file=sys.stderr, flush=True)
    return {line["prompt_id"]: line for line in check.ok}


def _write_image(rd: RunDir, backend: str, p: dict[str, Any], arr: Any, batch_s: float, batch_size: int,
                 partial: Path, latents_nonfinite: Any = None) -> dict[str, Any]:
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
    write_or_explain(append_jsonl, partial, entry)
    return entry


def _warm_up(manifest: dict, gen: dict, spec: Any, record: dict[str, Any], pipe: Any, device: str, family: Any,
             probe: Any, compiled: bool) -> list[float]:
    """The warm-up calls (excluded from latency; compilation for +compile happens here), and what each component
    computed in (compute_dtype); returns their seconds.

    The dtypes are observed through a forward hook on every layer. Under +compile, dynamo guards on the hooks of the
    layers inside a compiled block: a warm-up with them compiles a graph that the measured images, run without them,
    cannot use, and the first measured image compiles again (its latency then counts a compile: benchmarks/
    families-gpu.md). So a compiled pipeline is observed in a separate short pass that dynamo leaves eager, and its
    warm-up runs without hooks."""
    import torch

    from evalkit.generate.worker import loading
    from evalkit.generate.worker.compute_dtype import dtypes_of, observe_activations, record_activations

    prompts = manifest["prompts"]
    steps = int(gen["num_inference_steps"])
    # --warmup-steps: the warm-up runs the same shapes through fewer denoising steps (same kernels and graphs)
    warm_call = dict(family.call_arguments({**gen, "num_inference_steps": int(gen.get("warmup_steps") or steps)}),
                     output_type="np", **probe.kwargs())

    def call(kwargs: dict[str, Any]) -> float:
        g = torch.Generator("cpu").manual_seed(prompts[0]["seed"])
        return loading.timed(lambda: pipe(prompt=prompts[0]["text"], generator=g, **kwargs), device)[1]

    def warm_ups() -> list[float]:
        times = []
        for _ in range(warm_up_calls(gen, compiled)):
            emit("phase", phase="warmup")
            times.append(call(warm_call))
        return times

    names = [c.name for c in family.components]
    if compiled:
        with observe_activations(pipe, names) as seen, torch.compiler.set_stance("force_eager"):
            call(dict(family.call_arguments({**gen, "num_inference_steps": min(2, steps)}), output_type="np"))
        warm_times = warm_ups()
    else:
        with observe_activations(pipe, names) as seen:
            warm_times = warm_ups()
    record["warmup_times_s"] = warm_times
    if (warm_times or compiled) and (below := record_activations(record, dtypes_of(manifest), seen)):
        print(f"{spec.name}: {below}", file=sys.stderr, flush=True)
    return warm_times


def _finish_record(record: dict[str, Any], gen: dict[str, Any], spec: Any, device: str, probe: Any,
                   memory: dict[str, Any], warm_times: list[float], compile_info: Any) -> None:
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
    record["compile_time_s"] = None
    if compile_info is not None:
        record["compile_time_s"], compile_info["time_basis"] = compile_seconds(
            warm_times, record["latency"].get("median_s"), warm_up_is_an_image(gen))


def warm_up_is_an_image(gen: dict[str, Any]) -> bool:
    """Whether a warm-up call is the same work as a measured image: all the steps, one prompt per call."""
    steps = int(gen["num_inference_steps"])
    return int(gen.get("warmup_steps") or steps) >= steps and max(1, int(gen.get("batch_size", 1))) == 1


def warm_up_calls(gen: dict[str, Any], compiled: bool) -> int:
    """The warm-up calls to make: the run's `warmup_runs`; a compiled pipeline whose warm-up is not an image's work
    (`--warmup-steps`, or batches) makes at least two, so its compile time is the first call less the same call
    compiled. Subtracting an image's median from a short warm-up understates compile time, down to 0.0 s where the
    image takes longer than the warm-up with its compile (benchmarks/results/qwen-image-random-h100-2026-12-06)."""
    runs = int(gen.get("warmup_runs", 1))
    return max(runs, 2) if compiled and runs >= 1 and not warm_up_is_an_image(gen) else runs


def compile_seconds(warm_times: list[float], median_s: float | None,
                    warm_up_is_image: bool) -> tuple[float | None, str]:
    """A compiled pipeline's compile time, and how it was measured: the first warm-up call (where dynamo and
    inductor compile) less the same call compiled (the median of the later warm-up calls), else less the median
    measured image when a warm-up call is an image's work. None, with the reason, when neither is there."""
    if not warm_times:
        return None, "no warm-up call: compilation fell in the first measured image"
    if len(warm_times) >= 2:
        return max(0.0, warm_times[0] - statistics.median(warm_times[1:])), \
            f"first warm-up call less the median of the {len(warm_times) - 1} same calls after it"
    if warm_up_is_image and median_s is not None:
        return max(0.0, warm_times[0] - median_s), "first warm-up call (an image's work) less the median image"
    return None, "one warm-up call shorter than an image and nothing of its length to subtract"

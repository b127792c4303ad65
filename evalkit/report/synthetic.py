"""Synthetic run directories that follow docs/run-directory.md exactly, for tests, the benchmark and demos.

The images are smooth random scenes; each backend adds structured error whose size grows as its
bit width shrinks, and the metric records are consistent with that error. Nothing here is a measurement.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Sequence

from evalkit.io import atomic_write_json, sha256_file
from evalkit.prompts import prompt_id, prompt_seed
from evalkit.rundir import RunDir, write_summary

DEFAULT_PROMPTS = [
    "Baroque style, a lavish palace interior with ornate gilded ceilings.",
    "Futurist style, a dynamic spaceport with sleek silver starships.",
    "Noir style, a shadowy alleyway with flickering street lamps.",
]

# (name, relative error level, weight bytes relative to bf16, latency factor); the library comes from the backend
# registry, so the demo's colours and order are the real ones.
FIFTEEN_BACKENDS: list[tuple[str, float, float, float]] = [
    ("bf16", 0.0, 1.00, 1.00),
    ("bnb-nf4", 0.55, 0.36, 1.35),
    ("bnb-8bit", 0.25, 0.55, 1.90),
    ("torchao-int8wo", 0.20, 0.55, 1.05),
    ("torchao-int4wo", 0.60, 0.36, 1.10),
    ("torchao-fp8wo", 0.22, 0.55, 1.02),
    ("quanto-int8", 0.21, 0.56, 1.60),
    ("quanto-int4", 0.62, 0.38, 1.70),
    ("quanto-fp8", 0.24, 0.56, 1.55),
    ("gguf-q8_0", 0.18, 0.57, 1.25),
    ("gguf-q4_1", 0.50, 0.38, 1.30),
    ("gguf-q2_k", 1.00, 0.25, 1.40),
    ("fp8-layerwise", 0.30, 0.55, 1.08),
    ("bnb-nf4+offload", 0.55, 0.12, 2.60),
    ("torchao-int8wo+compile", 0.20, 0.55, 0.80),
]


def _library_of(name: str) -> str:
    from evalkit.errors import EvalkitError
    from evalkit.quantizers.registry import parse_backend  # the backend registry, not the generate stage

    try:
        return parse_backend(name).backend.library.key
    except EvalkitError:
        return "unknown"


def _rng(*key: Any):
    import numpy as np

    digest = hashlib.sha256(":".join(map(str, key)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _scene(seed: int, size: int):
    """A smooth, photo-like random image (gradients plus blobs): compresses like a real render, not like noise."""
    import numpy as np

    rng = _rng("scene", seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.zeros((size, size, 3), np.float32)
    for c in range(3):
        img[..., c] = rng.uniform(0.1, 0.5) + rng.uniform(-0.3, 0.3) * x + rng.uniform(-0.3, 0.3) * y
    for _ in range(12):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.03, 0.25)
        col = rng.uniform(0, 1, 3).astype(np.float32)
        mask = np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r)))
        img += mask[..., None] * (col - img) * 0.8
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)  # film grain
    return np.clip(img, 0, 1)


def _perturb(base, level: float, key: Any):
    """Quantization-like error: a low-frequency colour drift plus local detail error, scaled by `level`."""
    import numpy as np

    if level <= 0:
        return base
    size = base.shape[0]
    rng = _rng("perturb", key)
    low = rng.normal(0, 1, (8, 8, 3)).astype(np.float32)
    rep = int(math.ceil(size / 8))
    low = np.kron(low, np.ones((rep, rep, 1), np.float32))[:size, :size]
    hi = rng.normal(0, 1, base.shape).astype(np.float32)
    return np.clip(base + level * (0.04 * low + 0.03 * hi), 0, 1)


def make_synthetic_run(
    root: str | Path,
    *,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    backends: Sequence[str] | None = None,
    size: int = 64,
    device: str = "cpu",
    random_weights: bool = False,
    with_metrics: bool = True,
    failed: dict[str, str] | None = None,
    skipped: dict[str, str] | None = None,
    skipped_metrics: dict[str, str] | None = None,
    base_seed: int = 0,
    partial: dict[str, str] | None = None,
    latency_spread: dict[str, float] | None = None,
) -> Path:
    """Write a complete run directory at `root` (created) and return it. `failed`/`skipped` map backend -> reason;
    `partial` maps backend -> why it quantized less than its name says (written as the generation record's
    quantization.partial_reason); `latency_spread` maps backend -> relative per-image latency jitter (default 0.03)."""
    table = {b[0]: b for b in FIFTEEN_BACKENDS}
    names = list(backends) if backends is not None else [b[0] for b in FIFTEEN_BACKENDS[:5]]
    not_run = {**{n: ("skipped", r) for n, r in (skipped or {}).items()},
               **{n: ("failed", r) for n, r in (failed or {}).items()}}  # failed wins, as it did
    if skipped_metrics is None:
        skipped_metrics = {"clip_score": "no CLIP weights found: pass --clip-model (docs/metrics.md)"}
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rd = RunDir(root)
    plist = _prompt_list(prompts, base_seed)
    cuda = device == "cuda"
    atomic_write_json(rd.manifest, _manifest(root, prompts, plist, names, size, base_seed, cuda, random_weights))
    atomic_write_json(rd.extractor_mode("fid_mode"), {  # score's file (schema 2), as a scored run has it
        "implementation": "evalkit (clean-fid 'clean' resize, TF Inception pool3)", "n": len(prompts),
        "note": "FID on a handful of images is strongly biased; read KID and paired metrics first"})
    ref_imgs = {p["id"]: _scene(p["seed"], size) for p in plist}
    for name in names:
        _, level, mem_factor, lat_factor = table.get(name, (name, 0.4, 0.5, 1.2))
        record = _record_head(name)
        if name in not_run:
            _mark_not_run(record, *not_run[name])
        else:
            weights_gib = (31.4 if cuda else 0.004) * mem_factor
            rng = _rng("mem", name)  # one stream, memory first, then latency: the demo's numbers stay as they were
            memory = _memory(name, cuda, weights_gib, mem_factor, rng)
            lats = _latencies(rng, cuda, lat_factor, (latency_spread or {}).get(name, 0.03))
            if name in (partial or {}):
                record["quantization"]["partial_reason"] = (partial or {})[name]
            record.update(
                images=_write_images(rd, name, plist, ref_imgs, level, lats),
                footprint={"total_bytes": int(weights_gib * 2**30), "total_gib": round(weights_gib, 3)},
                load_time_s=round(4.0 * lat_factor, 2) if cuda else round(0.2 * lat_factor, 3),
                compile_time_s=95.0 if "compile" in name else None,
                memory=memory,
                latency=_latency_record(lats),
            )
        atomic_write_json(rd.generation_record(name), record)
        if name not in not_run and with_metrics and not random_weights:
            atomic_write_json(rd.metrics_record(name), _metrics(name, level, plist, skipped_metrics))
    write_summary(root)
    return root


def _prompt_list(prompts: Sequence[str], base_seed: int) -> list[dict[str, Any]]:
    """The manifest's prompt entries, with token counts a real run would write (word counts stand in)."""
    return [
        {"index": i, "id": prompt_id(i, t), "text": t, "seed": prompt_seed(t, base_seed),
         "tokens": {"clip": min(77, len(t.split()) + 2), "clip_limit": 77, "clip_truncated": len(t.split()) + 2 > 77,
                    "t5": len(t.split()) + 1, "t5_limit": 512, "t5_truncated": False}}
        for i, t in enumerate(prompts)
    ]


def _manifest(root: Path, prompts: Sequence[str], plist: list[dict[str, Any]], names: list[str], size: int,
              base_seed: int, cuda: bool, random_weights: bool) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "run_id": root.name,
        "created_utc": "2026-11-21T14:30:00Z",
        "evalkit_version": "0.1.0",
        "command": ["evalkit", "run", "prompts/styles.txt", "--model", "synthetic"],
        "prompts_file": "prompts/styles.txt",
        "prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
        "prompts": plist,
        "model": {"spec": "random:flux-dev" if random_weights else "synthetic", "kind": "random" if random_weights else "tiny",
                  "path": str(root / "model"), "random_weights": random_weights, "quality_meaningful": not random_weights,
                  "note": "synthetic run written by evalkit.report.synthetic (no model was run)"},
        "generation": {"height": size, "width": size, "num_inference_steps": 4, "guidance_scale": 3.5,
                       "max_sequence_length": 64, "batch_size": 1, "base_seed": base_seed,
                       "generator_device": "cpu", "warmup_runs": 1, "dtype": "bfloat16"},
        "backends": names,
        "reference_backend": "bf16",
        "device": ({"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "capability": [9, 0], "total_memory_gib": 79.1,
                    "cpu_count": 16, "platform": "Linux-x86_64", "python": "3.11.7"} if cuda else
                   {"type": "cpu", "name": "x86_64", "capability": None, "total_memory_gib": None,
                    "cpu_count": 2, "platform": "Linux-x86_64", "python": "3.11.7"}),
        "versions": {"torch": "2.13.0+cpu", "diffusers": "0.42.1", "transformers": "5.23.0", "evalkit": "0.1.0"},
        "memory_convention": {
            "unit": "GiB (2^30 bytes)",
            "after_load_*": "torch.cuda.memory_allocated/reserved right after loading",
            "load_peak_*": "torch.cuda.max_memory_allocated/reserved during loading (peak stats reset before)",
            "peak_*": "torch.cuda.max_memory_allocated/reserved during generation",
            "cpu_peak_rss_gib": "process peak RSS (ru_maxrss)",
        },
        "config": {"synthetic": True},
    }


def _record_head(name: str) -> dict[str, Any]:
    """The generation record's fields every backend has, ran or not."""
    return {
        "schema_version": 1, "backend": name, "status": "ok", "reason": None, "error": None,
        "recipe": {"name": name, "library": _library_of(name), "components": ["transformer", "text_encoder_2"],
                   "modifiers": name.split("+")[1:], "options": {}},
        "quantization": {"resolved_config": {}, "components_quantized": [] if name == "bf16" else ["transformer", "text_encoder_2"],
                         "layer_types": {},
                         "quantized_linear_count": {} if name == "bf16" else {"transformer": 30, "text_encoder_2": 8}},
        "started_utc": "2026-11-21T14:30:00Z", "finished_utc": "2026-11-21T14:31:00Z", "pid": 1234,
    }


def _mark_not_run(record: dict[str, Any], status: str, reason: str) -> None:
    """A failed or skipped backend: its reason (a failure also its error), and no images or numbers."""
    record.update(status=status, reason=reason)
    if status == "failed":
        record["error"] = {"type": "RuntimeError", "message": reason,
                           "traceback_tail": f'  File "worker.py", line 1\nRuntimeError: {reason}'}
    record.update(images=[], footprint=None, load_time_s=None, compile_time_s=None, memory=None, latency=None)


def _memory(name: str, cuda: bool, weights_gib: float, mem_factor: float, rng: Any) -> dict[str, Any]:
    """The record's memory block: both torch.cuda conventions on CUDA; on CPU only the process RSS, as a real CPU
    run records it (the CUDA fields null, with the reason)."""
    if cuda:
        return {"device": "cuda", "after_load_allocated_gib": round(weights_gib, 3),
                "after_load_reserved_gib": round(weights_gib * 1.01 + 0.1, 3),
                "load_peak_allocated_gib": round(weights_gib * (1.0 if name == "bf16" else 1.25), 3),
                "load_peak_reserved_gib": round(weights_gib * (1.02 if name == "bf16" else 1.3) + 0.2, 3),
                "peak_allocated_gib": round(weights_gib + 1.6 + rng.uniform(0, 0.3), 3),
                "peak_reserved_gib": round(weights_gib + 3.2 + rng.uniform(0, 0.6), 3),
                "cuda_reason": None, "cpu_peak_rss_gib": round(3.0 + rng.uniform(0, 1), 3)}
    return {"device": "cpu", "after_load_allocated_gib": None, "after_load_reserved_gib": None,
            "load_peak_allocated_gib": None, "load_peak_reserved_gib": None,
            "peak_allocated_gib": None, "peak_reserved_gib": None,
            "cuda_reason": "device is cpu", "cpu_peak_rss_gib": round(0.6 + 0.4 * mem_factor + rng.uniform(0, 0.05), 3)}


def _latencies(rng: Any, cuda: bool, lat_factor: float, jitter: float) -> list[float]:
    """Five per-image latencies, sorted, with relative spread `jitter`."""
    base_lat = 11.0 if cuda else 0.04
    return sorted(max(1e-4, float(base_lat * lat_factor * (1 + jitter * v))) for v in rng.normal(0, 1, 5))


def _latency_record(lats: list[float]) -> dict[str, Any]:
    import numpy as np

    return {"warmup_runs": 1, "n": len(lats), "median_s": lats[len(lats) // 2], "mean_s": sum(lats) / len(lats),
            "std_s": float(np.std(lats)), "min_s": lats[0], "max_s": lats[-1], "p10_s": lats[0], "p90_s": lats[-1]}


def _write_images(rd: RunDir, name: str, plist: list[dict[str, Any]], ref_imgs: dict[str, Any], level: float,
                  lats: list[float]) -> list[dict[str, Any]]:
    """Each prompt's image for `name` (the reference scene plus this backend's error), with its record entry."""
    import numpy as np
    from PIL import Image

    images: list[dict[str, Any]] = []
    for p in plist:
        arr = _perturb(ref_imgs[p["id"]], level, (name, p["id"]))
        path = rd.image_path(name, p["id"], p["seed"])
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((arr * 255 + 0.5).astype(np.uint8)).save(path, compress_level=1)
        images.append({"prompt_id": p["id"], "seed": p["seed"], "path": rd.relative(path), "sha256": sha256_file(path),
                       "latency_s": lats[len(images) % len(lats)], "flags": []})
    return images


def _metrics(name: str, level: float, plist: list[dict], skipped_metrics: dict[str, str]) -> dict[str, Any]:
    rng = _rng("metrics", name)
    ids = [p["id"] for p in plist]
    n = len(ids)
    metrics: dict[str, Any] = {}

    def paired(key: str, base: float, slope: float, hib: bool, jitter: float) -> None:
        per = {i: round(base + slope * level * (1 + jitter * float(rng.normal())), 4) for i in ids}
        mean = sum(per.values()) / n
        half = 1.96 * jitter * abs(slope) * level / max(math.sqrt(n), 1) + 1e-4
        metrics[key] = {"status": "ok", "mean": round(mean, 4), "ci_low": round(mean - half, 4), "ci_high": round(mean + half, 4),
                        "n": n, "higher_is_better": hib, "per_prompt": per}

    if name != "bf16":
        paired("psnr", 48.0, -22.0, True, 0.1)
        paired("ssim", 1.0, -0.35, True, 0.1)
        paired("lpips_alex", 0.0, 0.30, False, 0.15)
        metrics["fid"] = {"status": "ok", "value": round(2.0 + 20 * level * level, 3), "n": n, "n_reference": n,
                          "higher_is_better": False, "mode": "clean"}
    for key, reason in skipped_metrics.items():
        metrics[key] = {"status": "skipped", "reason": reason}
    return {"schema_version": 1, "backend": name, "reference_backend": "bf16", "metrics": metrics}

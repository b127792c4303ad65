"""Build a fake run directory through evalkit's own builders (evalkit.records), with no model.

Prompt ids and seeds come from evalkit.prompts, image paths from RunDir, records from the builders, and the summary
from write_summary: a test that uses this cannot drift from the format evalkit writes.

    root = make_run(tmp_path / "run", backends=("bf16", "torchao-int8wo"))
    root = make_run(tmp_path / "run", image=lambda backend, prompt: my_array, metrics={"torchao-int8wo": {...}})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from evalkit.io import atomic_write_json
from evalkit.prompts import Prompt, parse_prompts
from evalkit.records import (build_generation_record, build_manifest, build_metric_record, image_entry_for_file,
                             prompt_entry)
from evalkit.rundir import RunDir, write_summary

PROMPTS = (
    "A cat holding a sign that says hello world",
    "Noir style, a shadowy alleyway with flickering street lamps",
    "A red cube on a blue table",
)

ImageFn = Callable[[str, Prompt], "np.ndarray | Image.Image"]


def default_image(backend: str, prompt: Prompt, size: int) -> np.ndarray:
    """A deterministic picture per prompt; other backends differ from bf16 by a little seeded noise."""
    rng = np.random.default_rng(prompt.seed)
    base = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    if backend == "bf16":
        return base
    noise = np.random.default_rng(prompt.seed + len(backend)).integers(-6, 7, size=base.shape)
    return np.clip(base.astype(int) + noise, 0, 255).astype(np.uint8)


def make_run(root: Path, *, prompts: tuple[str, ...] | list[str] = PROMPTS,
             backends: tuple[str, ...] = ("bf16", "torchao-int8wo"), size: int = 32, base_seed: int = 0,
             image: ImageFn | None = None, status: dict[str, str] | None = None,
             quantization: dict[str, dict[str, Any]] | None = None,
             metrics: dict[str, dict[str, Any]] | None = None,
             left_out: dict[str, list[dict[str, Any]]] | None = None,
             device: str = "cpu", random_weights: bool = False, tokens: dict[str, Any] | None = None) -> Path:
    """A run directory with a manifest, images and a generation record per backend, optional metric records, and
    summary.json. `status` maps a backend to "failed"/"skipped" (no images); `metrics` maps a backend to its
    metric results (the `metrics` object of metrics/<backend>.json); `tokens`: every prompt's token counts."""
    rd = RunDir(root)
    parsed = parse_prompts("\n".join(prompts) + "\n", base_seed=base_seed)
    generation = {"height": size, "width": size, "num_inference_steps": 2, "guidance_scale": 3.5,
                  "max_sequence_length": 64, "batch_size": 1, "base_seed": base_seed, "generator_device": "cpu",
                  "warmup_runs": 1, "dtype": "bfloat16"}
    manifest = build_manifest(
        prompts=[prompt_entry(p, tokens) for p in parsed], backends=list(backends), run_id=root.name, generation=generation,
        model={"spec": "tiny", "kind": "tiny", "path": None, "random_weights": random_weights,
               "quality_meaningful": not random_weights,
               "note": "fake run built by tests/fake_run.py (no model was run)"},
        device={"type": device, "name": "test", "capability": None, "cpu_count": 2},
        versions={}, created_utc="2026-11-28T00:00:00Z", command=["tests/fake_run.py"],
        memory_convention={"unit": "GiB (2^30 bytes)"})
    atomic_write_json(rd.manifest, manifest)
    status = status or {}
    for b in backends:
        st = status.get(b, "ok")
        images = []
        if st == "ok":
            for p in parsed:
                pixels = (image or (lambda bb, pp: default_image(bb, pp, size)))(b, p)
                path = rd.image_path(b, p.id, p.seed)
                path.parent.mkdir(parents=True, exist_ok=True)
                (pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)).save(path, format="PNG")
                images.append(image_entry_for_file(rd.root, rd.relative(path), prompt_id=p.id, seed=p.seed,
                                                   latency_s=0.01))
        record = build_generation_record(
            backend=b, status=st, reason=None if st == "ok" else f"{b} {st} in a test",
            images=images, quantization=(quantization or {}).get(b),
            memory={"device": device, "cpu_peak_rss_gib": 0.5, "cuda_reason": "device is cpu"},
            latency={"n": len(images), "median_s": 0.01} if images else None, load_time_s=0.1)
        atomic_write_json(rd.generation_record(b), record)
    for b, results in (metrics or {}).items():
        atomic_write_json(rd.metrics_record(b), build_metric_record(
            backend=b, metrics=results, left_out=(left_out or {}).get(b)))
    write_summary(root)
    return root

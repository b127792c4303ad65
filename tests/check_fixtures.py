"""Tiny synthetic run directories for the check/compare tests, built through evalkit's own record builders
(evalkit.records), as tests/fake_run.py is: a test that uses them cannot drift from the format evalkit writes.

No model: manifest.json, generation/<backend>.json, metrics/<backend>.json and summary.json (via write_summary),
plus one small solid-colour PNG per (backend, prompt) recorded with its sha256 and stat fingerprint, because check
and compare verify the images their metrics rest on (evalkit.integrity).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from evalkit.io import atomic_write_json
from evalkit.prompts import parse_prompts
from evalkit.records import build_generation_record, build_manifest, build_metric_record, image_entry, prompt_entry
from evalkit.rundir import RunDir, write_summary

PROMPTS = [
    "Baroque style, a lavish palace interior with ornate gilded ceilings",
    "Futurist style, a dynamic spaceport with sleek silver starships",
    "Noir style, a shadowy alleyway with flickering street lamps",
    "Impressionist style, a sunlit garden with blooming flowers",
    "Cubist style, a bustling market of fragmented geometric stalls",
    "Art Deco style, a grand hotel lobby with geometric brass",
    "Ukiyo-e style, a fishing village under a great wave",
    "Pop Art style, a diner with neon signs and chrome stools",
    "Gothic style, a cathedral nave lit by stained glass",
    "Surrealist style, melting clocks on a desert shore",
    "Minimalist style, a white room with a single red chair",
    "Romantic style, a stormy sea with a lone lighthouse",
]
# At least evalkit.check.compare.MIN_PROMPTS_FOR_SIGNIFICANCE, so the compare tests can find significant changes.

# Per-prompt quality of each backend against bf16: small, plausible, and different per prompt so the
# bootstrap has spread to work with.
BASE_LPIPS = [0.10, 0.14, 0.12, 0.09, 0.15, 0.11, 0.13, 0.08, 0.16, 0.12, 0.10, 0.12]
BASE_SSIM = [0.91, 0.88, 0.90, 0.93, 0.86, 0.89, 0.87, 0.92, 0.85, 0.90, 0.91, 0.92]
BASE_PSNR = [28.0, 26.5, 27.2, 29.1, 25.8, 27.0, 26.2, 28.7, 25.1, 27.5, 28.3, 27.8]


def manifest(prompts: list[str] = PROMPTS, backends: tuple[str, ...] = ("bf16", "bnb-nf4", "torchao-int8wo"),
             base_seed: int = 0, device: str = "cpu", **generation: Any) -> dict[str, Any]:
    """The manifest, through evalkit's own builder (evalkit.records.build_manifest); prompt ids and seeds come
    from evalkit.prompts."""
    gen = {"height": 128, "width": 128, "num_inference_steps": 4, "guidance_scale": 3.5,
           "max_sequence_length": 64, "batch_size": 1, "base_seed": base_seed, "generator_device": "cpu",
           "warmup_runs": 1, "dtype": "bfloat16"}
    gen.update(generation)
    tokens = {"clip": 12, "clip_limit": 77, "clip_truncated": False, "t5": 14, "t5_limit": 512, "t5_truncated": False}
    parsed = parse_prompts("\n".join(prompts) + "\n", base_seed=base_seed)
    return dict(build_manifest(
        prompts=[prompt_entry(p, tokens) for p in parsed], backends=list(backends), run_id="20261121-143000-tiny",
        generation=gen, created_utc="2026-11-21T14:30:00Z", evalkit_version="0.1.0",
        command=["evalkit", "run", "prompts/styles.txt", "--model", "tiny"], prompts_file="prompts/styles.txt",
        prompts_sha256="0" * 64,
        model={"spec": "tiny", "kind": "tiny", "path": "/cache/tiny", "random_weights": False,
               "quality_meaningful": True, "note": "tiny test model"},
        device={"type": device, "name": "Intel CPU" if device == "cpu" else "NVIDIA H100", "capability": None,
                "total_memory_gib": None, "cpu_count": 2, "platform": "linux", "python": "3.11.7"},
        versions={"torch": "2.13.0+cpu", "diffusers": "0.42.1"}, memory_convention={"unit": "GiB (2^30 bytes)"},
        config={}))


def generation_record(backend: str, m: dict[str, Any], status: str = "ok", reason: str | None = None,
                      device: str = "cpu", median_s: float = 0.03, peak_reserved: float | None = None,
                      flags: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """A generation record through evalkit's builder; its images' sha256 are placeholders until make_run writes
    the files and records their real hashes and stat fingerprints."""
    cuda = device == "cuda"
    peak = peak_reserved or 1.0
    mem = {
        "device": device,
        "after_load_allocated_gib": peak * 0.8 if cuda else None,
        "after_load_reserved_gib": peak * 0.9 if cuda else None,
        "load_peak_allocated_gib": peak * 0.85 if cuda else None,
        "load_peak_reserved_gib": peak * 0.95 if cuda else None,
        "peak_allocated_gib": peak * 0.9 if cuda else None,
        "peak_reserved_gib": peak if cuda else None,
        "cuda_reason": None if cuda else "device is cpu",
        "cpu_peak_rss_gib": 2.1,
    }
    ok = status == "ok"
    images = [] if not ok else [
        image_entry(prompt_id=p["id"], seed=p["seed"], path=f"images/{backend}/{p['id']}_s{p['seed']}.png",
                    sha256="0" * 64, latency_s=median_s, flags=(flags or {}).get(p["id"], []))
        for p in m["prompts"]]
    return dict(build_generation_record(
        backend=backend, status=status, reason=reason,  # type: ignore[arg-type]
        error=None if ok else {"type": "RuntimeError", "message": reason or "", "traceback_tail": ""},
        recipe={"name": backend, "library": backend.split("-")[0], "components": ["transformer"], "modifiers": [],
                "options": {}},
        quantization={"resolved_config": {}, "components_quantized": [] if backend == "bf16" else ["transformer"],
                      "layer_types": {}, "quantized_linear_count": {}},
        footprint={"total_bytes": 1 << 20, "total_gib": 0.001}, load_time_s=1.2 if ok else None,
        memory=mem if ok else None,
        latency=({"warmup_runs": 1, "n": len(m["prompts"]), "median_s": median_s, "mean_s": median_s,
                  "std_s": 0.001, "min_s": median_s, "max_s": median_s, "p10_s": median_s, "p90_s": median_s}
                 if ok else None),
        images=images, started_utc="2026-11-21T14:30:00Z", finished_utc="2026-11-21T14:31:00Z", pid=1))


def _metric(values: list[float], ids: list[str], higher_is_better: bool) -> dict[str, Any]:
    n = len(values)
    mean = sum(values) / n
    sd = (sum((v - mean) ** 2 for v in values) / max(n - 1, 1)) ** 0.5
    half = 2.0 * sd / n ** 0.5
    return {"status": "ok", "mean": mean, "std": sd, "ci_low": mean - half, "ci_high": mean + half, "n": n,
            "higher_is_better": higher_is_better, "per_prompt": dict(zip(ids, values))}


def metrics_record(backend: str, m: dict[str, Any], shift: float = 0.0,
                   skipped: dict[str, str] | None = None) -> dict[str, Any]:
    """Quality of `backend` against bf16. `shift` worsens every per-prompt value (LPIPS up, SSIM/PSNR down)."""
    ids = [p["id"] for p in m["prompts"]]
    n = len(ids)
    k = 1.0 if backend == "bnb-nf4" else 0.5  # nf4 is the lossier backend
    metrics = {
        "lpips_alex": _metric([v * k + shift for v in BASE_LPIPS[:n]], ids, False),
        "ssim": _metric([1 - (1 - v) * k - shift for v in BASE_SSIM[:n]], ids, True),
        "psnr": _metric([v / k ** 0.25 - 40 * shift for v in BASE_PSNR[:n]], ids, True),
        "fid": {"status": "ok", "value": 12.3 * k + 100 * shift, "n": n, "n_reference": n, "higher_is_better": False},
    }
    for name, reason in (skipped or {}).items():
        metrics[name] = {"status": "skipped", "reason": reason}
    return dict(build_metric_record(backend=backend, metrics=metrics))


def write_images(rd: RunDir, backend: str, m: dict[str, Any]) -> list[dict[str, Any]]:
    """One PNG per prompt at the manifest's size, and its record entry (sha256, size_bytes, mtime_ns)."""
    from PIL import Image

    from evalkit.records import image_entry_for_file

    gen = m["generation"]
    entries = []
    for i, p in enumerate(m["prompts"]):
        path = rd.image_path(backend, p["id"], p["seed"])
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (gen["width"], gen["height"]), (i * 17 % 256, len(backend) * 9 % 256, 80)).save(path)
        entries.append(image_entry_for_file(rd.root, rd.relative(path), prompt_id=p["id"], seed=p["seed"]))
    return entries


def make_run(root: Path, m: dict[str, Any] | None = None, *, shift: float = 0.0,
             failed: dict[str, str] | None = None, skipped: dict[str, str] | None = None,
             device: str = "cpu", median_s: dict[str, float] | None = None,
             peak_reserved: dict[str, float] | None = None, score: bool = True,
             flags: dict[str, dict[str, list[str]]] | None = None) -> Path:
    """Write a complete scored run under `root` and return it.

    failed: backend -> reason (generation failed); skipped: metric -> reason (skipped for every backend);
    shift: a uniform quality regression of the non-reference backends (for compare).
    """
    m = copy.deepcopy(m or manifest(device=device))
    m["device"]["type"] = device
    rd = RunDir(Path(root))
    rd.root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(rd.manifest, m)
    for b in m["backends"]:
        st, reason = ("failed", failed[b]) if failed and b in failed else ("ok", None)
        lat = (median_s or {}).get(b, 0.03 if b == "bf16" else 0.045)
        rec = generation_record(b, m, st, reason, device, lat, (peak_reserved or {}).get(b), (flags or {}).get(b))
        if st == "ok":
            real = write_images(rd, b, m)
            for entry, written in zip(rec["images"], real):
                entry.update({k: written[k] for k in ("path", "sha256", "size_bytes", "mtime_ns")})
        atomic_write_json(rd.generation_record(b), rec)
        if score and st == "ok" and b != m["reference_backend"]:
            atomic_write_json(rd.metrics_record(b), metrics_record(b, m, shift, skipped))
    write_summary(rd.root)
    return rd.root


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_calibration(root: Path, values: dict[str, list[float]], perturbation: str = "batch2",
                      m: dict[str, Any] | None = None) -> Path:
    """RUN/calibration.json as `evalkit calibrate` writes it (evalkit.calibrate.floor), from one perturbation's
    per-prompt values per metric, for the run whose manifest is `m` (its prompts, device, model and settings; the
    values are repeated over its prompts). Constant values give a floor of exactly that value (its CI collapses)."""
    from evalkit.calibrate.floor import SCHEMA, metric_facts, metric_floor, perturbation_entry
    from evalkit.score.stats import summarize

    m = m or manifest()
    metrics = {}
    for name, vals in values.items():
        facts = metric_facts(name)
        ids = [p["id"] for p in m["prompts"]]
        vals = [vals[i % len(vals)] for i in range(len(ids))]
        rec = {"status": "ok", **summarize(vals), "per_prompt": dict(zip(ids, vals))}
        entry = perturbation_entry(rec, facts)
        metrics[name] = {**{k: facts[k] for k in ("label", "unit", "higher_is_better", "identity", "scale")},
                         "floor": metric_floor({perturbation: entry}, facts), "perturbations": {perturbation: entry}}
    path = Path(root) / "calibration.json"
    atomic_write_json(path, {"schema": SCHEMA, "run_id": m["run_id"], "model": m["model"]["spec"],
                             "device": m["device"]["type"], "n_prompts": len(m["prompts"]), "generation": m["generation"],
                             "perturbations": {perturbation: {"settings": {"batch_size": 2}}}, "metrics": metrics})
    return path

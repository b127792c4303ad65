"""Helpers for the report tests: synthetic run directories that follow docs/run-directory.md exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evalkit.report.synthetic import FIFTEEN_BACKENDS, make_synthetic_run

XSS_PROMPTS = [
    "A cat <script>alert(1)</script> on a mat",
    '"><img src=x onerror=alert(1)> a dog',
    "Noir style & </script><script>alert(2)</script> {braces} 50% $x_1$ #tag ~tilde^",
]

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def synthetic_run(tmp_path: Path, name: str = "run", **kwargs: Any) -> Path:
    """A small CPU run: 3 prompts, 5 backends, 64 px, scored, with one failed and one skipped metric by default."""
    kwargs.setdefault("backends", ["bf16", "bnb-nf4", "torchao-int8wo", "gguf-q4_1", "quanto-int8"])
    return make_synthetic_run(tmp_path / name, **kwargs)


__all__ = ["ARTIFACTS", "FIFTEEN_BACKENDS", "TINY_NOTE", "TINY_RUN_NUMBERS", "XSS_PROMPTS", "make_synthetic_run",
           "synthetic_run", "tiny_like_run"]


# The tiny model's CPU run of 2026-12-05 (evalkit run prompts/styles.txt --model tiny, five backends), as issue #24
# saw it: LPIPS near 1e-4 with overlapping CIs, SSIM 0.9997 everywhere, bf16's noisy latency overlapping the
# fastest's, load times either side of one second. (median, p10, p90) s; footprint GiB; load s; (mean, lo, hi).
TINY_RUN_NUMBERS: dict[str, dict[str, Any]] = {
    "bf16": {"lat": (1.8141, 0.0885, 2.5773), "fp": 0.01855, "load": 0.8153},
    "bnb-nf4": {"lat": (0.225, 0.1454, 0.3362), "fp": 0.01847, "load": 0.6903,
                "lpips_alex": (9.3206e-05, 8.4142e-05, 0.00010305), "ssim": (0.99976758, 0.99976600, 0.99976915),
                "psnr": (51.0543, 51.0011, 51.1092), "fid": 0.1923},
    "torchao-int8wo": {"lat": (0.1556, 0.1468, 0.1772), "fp": 0.01497, "load": 0.8756,
                       "lpips_alex": (0.00012648, 0.00010758, 0.00014332), "ssim": (0.99973633, 0.99973442, 0.99973824),
                       "psnr": (50.4631, 50.4185, 50.5094), "fid": 0.2344},
    "quanto-int8": {"lat": (0.1738, 0.1507, 0.1884), "fp": 0.01494, "load": 1.0401,
                    "lpips_alex": (0.00012687, 0.00011836, 0.00013445), "ssim": (0.99973127, 0.99972934, 0.99973320),
                    "psnr": (50.3744, 50.3487, 50.3975), "fid": 0.2798},
    "gguf-q8_0": {"lat": (0.112, 0.1067, 0.1208), "fp": 0.0152, "load": 0.9882,
                  "lpips_alex": (0.00010641, 9.7155e-05, 0.00011949), "ssim": (0.99974902, 0.99974673, 0.99975117),
                  "psnr": (50.7121, 50.6657, 50.7630), "fid": 0.2399},
}
TINY_NOTE = "embedded tiny Flux pipeline built from configs with seeded random weights; for tests and demos"


def tiny_like_run(tmp_path: Path, name: str = "tiny") -> Path:
    """A run shaped like the tiny model's CPU run above: the manifest says what `evalkit run --model tiny` writes
    (not synthetic), bnb-nf4 is partial as on CPU, and the numbers are the measured ones."""
    import json

    from evalkit.rundir import write_summary

    root = make_synthetic_run(tmp_path / name, backends=list(TINY_RUN_NUMBERS), size=32,
                              partial={"bnb-nf4": "transformer left in bf16 on CPU: diffusers' bitsandbytes quantizer "
                                                  "needs a GPU"})
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["model"] = {"spec": "tiny", "kind": "tiny", "path": "/cache/models/tiny-flux-v1", "random_weights": False,
                         "quality_meaningful": True, "note": TINY_NOTE, "extra": {}}
    manifest["config"] = {}
    (root / "manifest.json").write_text(json.dumps(manifest))
    for backend, nums in TINY_RUN_NUMBERS.items():
        gen_path = root / "generation" / f"{backend}.json"
        gen = json.loads(gen_path.read_text())
        med, lo, hi = nums["lat"]
        gen["latency"].update(median_s=med, p10_s=lo, p90_s=hi, min_s=lo, max_s=hi)
        gen["footprint"] = {"total_bytes": int(nums["fp"] * 2**30), "total_gib": nums["fp"]}
        gen["load_time_s"] = nums["load"]
        gen["memory"]["cuda_reason"] = "device is cpu: no CUDA allocator; see cpu_peak_rss_gib (host RAM)"
        gen_path.write_text(json.dumps(gen))
        met_path = root / "metrics" / f"{backend}.json"
        if backend == "bf16" or not met_path.exists():
            continue
        met = json.loads(met_path.read_text())
        for key in ("lpips_alex", "ssim", "psnr"):
            mean, lo, hi = nums[key]
            met["metrics"][key].update(mean=mean, ci_low=lo, ci_high=hi)
        met["metrics"]["fid"].update(value=nums["fid"], indicative=True, n=5, n_reference=5)
        met_path.write_text(json.dumps(met))
    write_summary(root)
    return root

"""benchmarks/floor_table.py on hand-made calibration files (no GPU): which perturbations make the floor, how a
deadline-cut calibration reads, and that PSNR of identical images never shows its cap. Run:
`python -m pytest -q benchmarks/test_floor_table.py` (outside the default test paths: a benchmark tool)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from evalkit.calibrate.floor import metric_facts, perturbation_entry

_spec = importlib.util.spec_from_file_location("floor_table", Path(__file__).with_name("floor_table.py"))
floor_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(floor_table)

PROMPTS = ("p0", "p1", "p2")


def _entry(metric: str, values: tuple[float, ...], ci: tuple[float, float]) -> dict:
    rec = {"status": "ok", "per_prompt": dict(zip(PROMPTS, values)), "mean": sum(values) / len(values),
           "ci_low": ci[0], "ci_high": ci[1], "ci_level": 0.95, "n": len(values)}
    return perturbation_entry(rec, metric_facts(metric))


def _calibration(per: dict[str, dict[str, dict]]) -> dict:
    """per: {perturbation: {metric: entry}} -> the shape evalkit calibrate writes (the fields the page reads)."""
    metrics: dict[str, dict] = {}
    for p, by_metric in per.items():
        for m, e in by_metric.items():
            metrics.setdefault(m, {"perturbations": {}})["perturbations"][p] = e
    return {"perturbations": {p: {"settings": {"batch_size": 2} if p == "batch2" else {}, "backend": "bf16",
                                  "in_force": {"batch_size": 1}, "run_dir": f"calibration/{p}", "n_images": 3,
                                  "n_byte_identical_images": 0} for p in per},
            "metrics": metrics}


def _run_dir(tmp: Path, files: dict[str, dict]) -> Path:
    d = tmp / "floor"
    (d / "generation").mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({
        "created_utc": "2026-11-29T00:00:00Z", "model": {"spec": "random:flux-dev"}, "config": {"device": "cuda"},
        "device": {"name": "NVIDIA H200"}, "versions": {"torch": "2.11.0"}, "prompts": [{"id": p} for p in PROMPTS],
        "generation": {"height": 1024, "width": 1024}, "prompts_file": "prompts-3.txt"}))
    (d / "generation" / "bf16.json").write_text(json.dumps({"status": "ok", "numerics": {"batch_size": 1}}))
    for name, data in files.items():
        (d / f"calibration.{name}.json").write_text(json.dumps(data))
    return d


def _floor_line(page: str, label: str) -> str:
    section = page.split("## The floor")[1].split("## Per perturbation")[0]
    return next(ln for ln in section.splitlines() if ln.startswith(f"| {label} |"))


def test_floor_is_the_worst_default_noise_end_and_the_control_stays_out(tmp_path: Path) -> None:
    batch2 = {"lpips_alex": _entry("lpips_alex", (0.010, 0.020, 0.030), (0.012, 0.028)),
              "psnr": _entry("psnr", (40.0, 41.0, 42.0), (40.2, 41.8))}
    tf32 = {"lpips_alex": _entry("lpips_alex", (0.030, 0.040, 0.050), (0.033, 0.047)),
            "psnr": _entry("psnr", (100.0, 100.0, 100.0), (100.0, 100.0))}
    rerun = {"lpips_alex": _entry("lpips_alex", (0.5, 0.5, 0.5), (0.5, 0.5)),  # worse than any: must not count
             "psnr": _entry("psnr", (10.0, 10.0, 10.0), (10.0, 10.0))}
    default = _calibration({"batch2": batch2, "tf32": tf32})
    d = _run_dir(tmp_path, {"default": default, "batch2": _calibration({"batch2": batch2}),
                            "rerun": _calibration({"rerun": rerun})})
    page = floor_table.page(d, ["batch2", "sdpa-math", "tf32", "compile"], "")

    lpips = _floor_line(page, "LPIPS (AlexNet)")
    assert "| 0.0470 | tf32 | batch2, tf32 |" in lpips  # largest ci_high of the defaults, not the rerun's 0.5
    psnr = _floor_line(page, "PSNR")
    assert "| 40.20 dB | batch2 |" in psnr  # the smallest ci_low: PSNR is higher-is-better
    # tf32's PSNR images are identical: shown as such, never as the 100 dB cap.
    tf32_psnr = next(ln for ln in page.splitlines() if ln.startswith("| tf32 | PSNR |"))
    assert "identical" in tf32_psnr and "100" not in tf32_psnr
    assert "| rerun (control, not in the floor) | LPIPS (AlexNet) | 0.5000 |" in page


def test_a_cut_calibration_takes_the_floor_over_what_finished(tmp_path: Path) -> None:
    # The deadline came before `evalkit calibrate RUN`: only batch2's own file exists.
    batch2 = {"lpips_alex": _entry("lpips_alex", (0.010, 0.020, 0.030), (0.012, 0.028))}
    d = _run_dir(tmp_path, {"batch2": _calibration({"batch2": batch2})})
    page = floor_table.page(d, None, "")  # None: evalkit's defaults for the run's device (cuda)
    assert ("over the default perturbations that finished: batch2. **Not in it, because they did not finish: "
            "sdpa-math, tf32, compile.**") in page
    assert "| 0.0280 | batch2 | batch2 |" in _floor_line(page, "LPIPS (AlexNet)")

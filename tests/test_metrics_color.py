"""CIEDE2000 and CIELAB shifts: parity with scikit-image's rgb2lab + deltaE_ciede2000 (the reference the module
transcribes) on real photographs, and `evalkit score` + `evalkit report` + `evalkit check` on a synthetic run.

Tolerances (stated where asserted): float64 per-pixel ΔE00 within 1e-10 of skimage (measured ~2.5e-13), Lab within
1e-10, per-image means within 1e-12; float32 ΔE within 1e-3 (what float32 costs, ~1.2e-4 measured)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.color import deltaE_ciede2000, rgb2lab

from evalkit.metrics import registry as reg
from evalkit.metrics.color import delta_e_ciede2000, rgb_to_lab

PHOTOS = ("astronaut", "chelsea", "coffee")  # 512x512, 300x451, 400x600


def _pair(name: str, seed: int, amp: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """A photograph and a copy with uniform integer noise in [-amp, amp] (clipped to 8 bits)."""
    img = getattr(skdata, name)()
    noise = np.random.default_rng(seed).integers(-amp, amp + 1, size=img.shape)
    return img, np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", PHOTOS)
def test_lab_and_delta_e_match_skimage_on_photographs(name):
    img, pert = _pair(name, seed=PHOTOS.index(name))
    lab_ref, lab_pert = rgb2lab(img), rgb2lab(pert)
    lab = rgb_to_lab(torch.from_numpy(img)).numpy()
    assert np.abs(lab - lab_ref).max() < 1e-10  # tolerance: Lab 1e-10
    want = deltaE_ciede2000(lab_ref, lab_pert)
    got = delta_e_ciede2000(rgb_to_lab(torch.from_numpy(img)), rgb_to_lab(torch.from_numpy(pert))).numpy()
    assert want.mean() > 1.0  # the noise is visible: the comparison is not between two zero maps
    assert np.abs(got - want).max() < 1e-10  # tolerance: per-pixel ΔE00, float64
    # float32 input keeps float32 (as skimage does) and costs ~1e-4
    got32 = delta_e_ciede2000(rgb_to_lab(torch.from_numpy(img).float() / 255), rgb_to_lab(torch.from_numpy(pert).float() / 255))
    assert got32.dtype == torch.float32 and np.abs(got32.double().numpy() - want).max() < 1e-3


def test_delta_e_branches_match_skimage_on_random_and_edge_case_lab_pairs():
    """Gray pixels (C = 0: the CC == 0 branches), hue wrap-around (|h2 - h1| > π), ±0 and tiny chroma."""
    rng = np.random.default_rng(0)
    edges1 = np.array([[50, 0, 0], [50, 0, 0], [20, 10, -0.001], [60, 3, 0.0], [40, -1e-9, 0], [70, -30, -1], [70, 30, -1]])
    edges2 = np.array([[50, 0, 0], [70, 5, 5], [20, 10, 0.001], [60, 3, -0.0], [40, 1e-9, 0], [70, -30, 1], [72, 40, 3]])
    lab1 = np.concatenate([rng.uniform([0, -128, -128], [100, 127, 127], size=(20000, 3)), edges1])
    lab2 = np.concatenate([rng.uniform([0, -128, -128], [100, 127, 127], size=(20000, 3)), edges2])
    got = delta_e_ciede2000(torch.from_numpy(lab1), torch.from_numpy(lab2)).numpy()
    np.testing.assert_allclose(got, deltaE_ciede2000(lab1, lab2), rtol=0, atol=1e-9)  # tolerance 1e-9


def test_registered_metrics_compute_skimage_means_per_pair():
    pairs = [_pair("astronaut", 1, amp=12)]
    a = np.ascontiguousarray(pairs[0][0][:300, :451])  # chelsea's shape: one batch, one size
    b = np.ascontiguousarray(pairs[0][1][:300, :451])
    c, d = _pair("chelsea", 2)
    ref, img = np.stack([a, c]), np.stack([b, d])
    de = reg.create_metric("delta_e2000").compute(ref, img)
    want = [deltaE_ciede2000(rgb2lab(r), rgb2lab(i)).mean() for r, i in zip(ref, img)]
    assert de.dtype == np.float64
    np.testing.assert_allclose(de, want, rtol=0, atol=1e-12)  # tolerance: per-image mean ΔE00, 1e-12
    for k, ch in enumerate("lab"):
        shift = reg.create_metric(f"lab_shift_{ch}").compute(torch.from_numpy(ref), torch.from_numpy(img))
        want = [abs(rgb2lab(i)[..., k].mean() - rgb2lab(r)[..., k].mean()) for r, i in zip(ref, img)]
        np.testing.assert_allclose(shift, want, rtol=0, atol=1e-12)  # tolerance 1e-12
    assert list(reg.create_metric("delta_e2000").compute(ref, ref)) == [0.0, 0.0]


def test_a_colour_cast_moves_its_channel_only():
    """A warmer image (more red, less blue) mostly moves b* (blue-yellow), then a*; lightness moves least."""
    img = getattr(skdata, "coffee")()
    warm = img.astype(np.int16)
    warm[..., 0] += 12
    warm[..., 2] -= 12
    warm = np.clip(warm, 0, 255).astype(np.uint8)
    s = {c: float(reg.create_metric(f"lab_shift_{c}").compute(img[None], warm[None])[0]) for c in "lab"}
    assert s["b"] > s["a"] > s["l"] and s["b"] > 3 * s["l"] and s["b"] > 5, s


def test_registry_facts_for_gate_and_calibration():
    spec = reg.get_spec("delta_e2000")
    assert spec.kind == "paired" and spec.higher_is_better is False and spec.value_range == (0.0, None)
    assert "delta_e2000" in reg.DEFAULT_METRICS and "lab_shift_l" not in reg.DEFAULT_METRICS
    assert reg.resolve_names("color") == ["delta_e2000", "lab_shift_l", "lab_shift_a", "lab_shift_b"]
    from evalkit.calibrate.floor import metric_facts
    from evalkit.calibrate.stage import paired_metric_names

    # calibrate measures every paired metric; identical images sit at ΔE 0
    assert {"delta_e2000", "lab_shift_b"} <= set(paired_metric_names())
    assert metric_facts("delta_e2000")["identity"] == 0.0 and metric_facts("lab_shift_a")["higher_is_better"] is False


def test_score_report_and_gate_show_delta_e2000(tmp_path, capsys):
    """End to end through the CLI: the registry entry alone puts it in the records, summary.json, the report page,
    the summary CSV and the gate."""
    from PIL import Image

    from evalkit.cli import main
    from evalkit.io import read_json
    from evalkit.report.synthetic import make_synthetic_run

    run = make_synthetic_run(tmp_path / "run", backends=["bf16", "bnb-nf4", "torchao-int8wo"], with_metrics=False)
    assert main(["score", str(run), "--metrics", "delta_e2000,psnr", "--workers", "1", "--device", "cpu",
                 "--quiet"]) == 0
    # independent value: skimage on the PNGs the generation records list
    gen, ref = read_json(run / "generation" / "bnb-nf4.json"), read_json(run / "generation" / "bf16.json")
    ref_by_pid = {i["prompt_id"]: i["path"] for i in ref["images"]}
    vals = [deltaE_ciede2000(rgb2lab(np.asarray(Image.open(run / ref_by_pid[i["prompt_id"]]).convert("RGB"))),
                             rgb2lab(np.asarray(Image.open(run / i["path"]).convert("RGB")))).mean()
            for i in gen["images"]]
    rec = read_json(run / "metrics" / "bnb-nf4.json")["metrics"]["delta_e2000"]
    assert rec["status"] == "ok" and rec["n"] == len(vals) and rec["higher_is_better"] is False
    assert rec["mean"] == pytest.approx(float(np.mean(vals)), abs=1e-12) and rec["mean"] > 0
    assert rec["ci_low"] <= rec["mean"] <= rec["ci_high"]
    summ = read_json(run / "summary.json")
    assert summ["backends"]["bnb-nf4"]["metrics"]["delta_e2000"]["mean"] == rec["mean"]

    assert main(["report", str(run), "--no-figures"]) == 0
    page = (run / "index.html").read_text(encoding="utf-8")
    assert "CIEDE2000" in page and "lower is better" in page
    rows = {r["backend"]: r for r in csv.DictReader((run / "tables" / "summary.csv").open())}
    assert float(rows["bnb-nf4"]["delta_e2000"]) == pytest.approx(rec["mean"], rel=1e-6)

    # the gate bounds it like any metric: a bound below the value fails (exit 1), above passes (exit 0)
    (tmp_path / "fail.toml").write_text(f"[default]\ndelta_e2000_max = {rec['mean'] / 2}\n")
    (tmp_path / "pass.toml").write_text("[default]\ndelta_e2000_max = 100\nlab_shift_l_max = 100\n")
    assert main(["check", str(run), "-t", str(tmp_path / "fail.toml"), "-q"]) == 1
    capsys.readouterr()
    code = main(["check", str(run), "-t", str(tmp_path / "pass.toml"), "-q", "--markdown", str(tmp_path / "g.md")])
    md = (tmp_path / "g.md").read_text()
    # lab_shift_l was not scored in this run: the gate says so instead of passing silently
    assert code == 1 and "lab_shift_l" in md and "delta_e2000" in md
    json.dumps(rec)  # strict JSON

"""#12.1: metric kinds as protocols; toy metrics of each kind, registered from a test-only module, are scored by
the unchanged stage, with values checked against an independent computation from the PNGs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import toy_metrics
from evalkit.io import read_json
from evalkit.metrics import registry as reg
from evalkit.score.stage import score_run
from metrics_fixtures import make_run, noise


@pytest.fixture(autouse=True)
def toy_registered():
    with toy_metrics.registered():
        yield
    assert not [s.name for s in reg.list_metrics() if s.name.startswith("toy_")]  # nothing leaks to other tests


def _images(run, backend):
    """{prompt_id: (uint8 image, prompt text)} read straight from the run directory (independent of the stage)."""
    manifest = read_json(run / "manifest.json")
    texts = {p["id"]: p["text"] for p in manifest["prompts"]}
    out = {}
    for p in sorted((run / "images" / backend).glob("*.png")):
        pid = next(k for k in texts if p.name.startswith(k))
        out[pid] = (np.asarray(Image.open(p).convert("RGB")), texts[pid])
    return out


@pytest.mark.parametrize("use_cache", [True, False])
def test_toy_metrics_of_each_kind_are_scored_by_the_unchanged_stage(tmp_path, use_cache):
    run = make_run(tmp_path / "run", {"bf16": None, "q": lambda a, i: noise(a, 20, seed=i)}, n_prompts=3, size=32)
    res = score_run(run, ",".join(toy_metrics.TOY_METRICS), workers=1, progress=False, use_cache=use_cache)
    ref, q = _images(run, "bf16"), _images(run, "q")
    assert set(ref) == set(q) and len(q) == 3
    # paired
    want = np.mean([np.abs(ref[k][0].astype(float) - q[k][0].astype(float)).mean() for k in q])
    assert res["q"]["toy_absdiff"]["mean"] == pytest.approx(want, rel=1e-12)
    assert res["q"]["toy_absdiff"]["higher_is_better"] is False  # from the spec, not the class
    assert res["bf16"]["toy_absdiff"]["status"] == "skipped"
    # prompt (every backend, the reference included) and its derived drop
    score = {b: {k: len(t) + im.mean() / 255 for k, (im, t) in imgs.items()} for b, imgs in (("bf16", ref), ("q", q))}
    for b in ("bf16", "q"):
        assert res[b]["toy_prompt_len"]["mean"] == pytest.approx(np.mean(list(score[b].values())), rel=1e-12)
        assert res[b]["toy_prompt_len"]["model"] == "toy"
        assert res[b]["toy_prompt_len"]["n_long_prompts"] == sum(len(t) > 40 for _im, t in q.values())
    drop = np.mean([score["bf16"][k] - score["q"][k] for k in q])
    assert res["q"]["toy_prompt_drop"]["mean"] == pytest.approx(drop, rel=1e-9, abs=1e-12)
    # set, through the shared extractor
    fm = {b: np.stack([im.astype(float).mean(axis=(0, 1)) for im, _t in imgs.values()]) for b, imgs in (("bf16", ref), ("q", q))}
    rec = res["q"]["toy_meandist"]
    assert rec["status"] == "ok" and rec["n"] == 3 and rec["n_reference"] == 3 and rec["dims"] == 3
    assert rec["value"] == pytest.approx(float(np.linalg.norm(fm["q"].mean(0) - fm["bf16"].mean(0))), rel=1e-12)
    # the per-image CSV carries them too
    csv_text = (run / "metrics" / "per_image.csv").read_text()
    assert "toy_absdiff" in csv_text and "toy_prompt_len" in csv_text and "toy_prompt_drop" in csv_text


def test_an_object_not_of_its_declared_kind_is_refused_and_skipped(tmp_path):
    with pytest.raises(TypeError, match="declared 'paired'.*compute"):
        reg.create_metric("toy_broken")
    run = make_run(tmp_path / "run", {"bf16": None, "q": lambda a, i: noise(a, 5)}, n_prompts=2, size=32)
    res = score_run(run, "toy_broken,toy_absdiff", workers=1, progress=False)
    assert res["q"]["toy_broken"]["status"] == "skipped" and "compute" in res["q"]["toy_broken"]["reason"]
    assert res["q"]["toy_absdiff"]["status"] == "ok"


def test_registration_validates_kind_facts():
    with pytest.raises(ValueError, match="not registered"):
        reg.register_metric(reg.MetricSpec("toy_x", "set", False, "toy_metrics:ToyMeanDistance", extractor="nope"))
    with pytest.raises(ValueError, match="only set metrics"):
        reg.register_metric(reg.MetricSpec("toy_y", "paired", False, "toy_metrics:ToyAbsDiff", extractor="toy_mean_rgb"))
    with pytest.raises(ValueError, match="derived"):
        reg.register_metric(reg.MetricSpec("toy_z", "paired", False, "toy_metrics:ToyAbsDiff", derived_from="toy_absdiff"))
    assert "toy_x" not in {s.name for s in reg.list_metrics()}


def test_real_dir_twins_and_aliases_come_from_the_registry():
    assert reg.real_twins("fid") == ["fid_real"] and reg.real_twins("kid") == ["kid_real"]
    assert reg.resolve_names("fid,psnr", real_dir="/x") == ["psnr", "fid", "fid_real"]
    assert reg.resolve_names("clip") == ["clip_score", "clip_score_drop"]


def test_stage_code_names_no_metric():
    """No metric name drives the stage's code: kinds, derivation and sharing come from the registry."""
    from pathlib import Path

    root = Path(reg.__file__).parents[1] / "score"  # the scoring machinery, every module of it
    names = [s.name for s in reg.list_metrics() if not s.name.startswith("toy_")] + ["inception", "clip", "lpips"]
    import ast

    mods = sorted(root.glob("*.py"))
    assert len(mods) >= 10  # the scan really looks at the score package
    for mod in mods:
        tree = ast.parse(mod.read_text())
        docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}  # docstrings and their examples
        found = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                 and id(n) not in docs and n.value in names]
        # compute_fid / compute_kid are the API functions of those two metrics: naming them is their job
        allowed = {"fid", "kid"} if mod.name == "api.py" else set()
        assert not set(found) - allowed, f"{mod.name} names {found}"


def test_a_set_metric_against_real_images_through_its_registry_twin(tmp_path):
    run = make_run(tmp_path / "run", {"bf16": None, "q": lambda a, i: noise(a, 20, seed=i)}, n_prompts=3, size=32)
    real = tmp_path / "real"
    real.mkdir()
    rng = np.random.default_rng(5)
    reals = [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(4)]
    for i, r in enumerate(reals):
        Image.fromarray(r).save(real / f"r{i}.png")
    res = score_run(run, "toy_meandist", real_dir=real, workers=1, progress=False, use_cache=False)
    q = _images(run, "q")
    fq = np.stack([im.astype(float).mean(axis=(0, 1)) for im, _t in q.values()])
    fr = np.stack([r.astype(float).mean(axis=(0, 1)) for r in reals])
    rec = res["q"]["toy_meandist_real"]
    assert rec["status"] == "ok" and rec["n"] == 3 and rec["n_reference"] == 4 and str(real) in rec["reference"]
    assert rec["value"] == pytest.approx(float(np.linalg.norm(fq.mean(0) - fr.mean(0))), rel=1e-12)
    assert res["bf16"]["toy_meandist_real"]["status"] == "ok"  # the reference backend too, against real images

"""The metric registry: names, kinds, creation, unavailability, and that one entry is all a new metric needs."""

from __future__ import annotations

import numpy as np
import pytest

from metrics_fixtures import make_run, noise
from evalkit.errors import EvalkitError
from evalkit.metrics import registry as reg
from evalkit.score.stage import expand_metric_names, score_run


def test_names_kinds_and_directions():
    names = {s.name: s for s in reg.list_metrics()}
    assert {"lpips_alex", "lpips_vgg", "ssim", "ms_ssim", "psnr", "clip_score", "clip_score_drop", "fid", "kid"} <= set(names)
    assert {s.name for s in reg.list_metrics("paired")} == {"lpips_alex", "lpips_vgg", "ssim", "ms_ssim", "psnr",
                                                           "delta_e2000", "lab_shift_l", "lab_shift_a", "lab_shift_b"}
    assert not names["lpips_alex"].higher_is_better and names["ssim"].higher_is_better
    assert names["lpips_vgg"].weights == ("lpips_vgg", "lpips_lin_vgg")
    assert set(reg.DEFAULT_METRICS) <= set(names)


def test_create_metric_and_errors():
    m = reg.create_metric("psnr")
    assert m.compute(np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 8, 8, 3), np.uint8))[0] == 100.0
    with pytest.raises(EvalkitError, match="Did you mean: lpips_alex"):
        reg.create_metric("lpips_alx")
    with pytest.raises(reg.MetricUnavailable):
        reg.create_metric("clip_score_drop")  # derived: the stage computes it


def test_expand_metric_names():
    assert expand_metric_names("lpips,ssim", lpips_net="alex,vgg") == ["lpips_alex", "lpips_vgg", "ssim"]
    assert "lpips_vgg" in expand_metric_names(None, lpips_net="vgg") and "lpips_alex" not in expand_metric_names(None, lpips_net="vgg")
    assert expand_metric_names("fid", real_dir="/x") == ["fid", "fid_real"]
    assert expand_metric_names("all") == [s.name for s in reg.list_metrics()]


class MAEMetric:
    """A toy paired metric, defined in this file: mean absolute 8-bit error."""

    higher_is_better = False
    OPTIONS = {"scale": "8-bit levels"}

    def __init__(self, device: str = "cpu", batch_size: int = 8) -> None:
        pass

    def min_size_reason(self, h: int, w: int) -> str | None:
        return None

    def compute(self, ref, img) -> np.ndarray:
        ref, img = np.asarray(ref).astype(float), np.asarray(img).astype(float)
        return np.abs(ref - img).reshape(len(ref), -1).mean(1)


def test_one_registry_entry_is_enough_for_a_new_metric(tmp_path, monkeypatch):
    monkeypatch.setitem(reg._REGISTRY, "mae", reg.MetricSpec("mae", "paired", False, "test_metrics_registry:MAEMetric"))
    run = make_run(tmp_path / "run", {"bf16": None, "q": lambda a, i: noise(a, 10, seed=i)}, n_prompts=2, size=48)
    res = score_run(run, "mae,psnr", workers=1, progress=False)
    assert res["q"]["mae"]["status"] == "ok" and 5 < res["q"]["mae"]["mean"] < 12
    assert res["q"]["mae"]["options"] == {"scale": "8-bit levels"}


def test_metric_whose_code_is_missing_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setitem(reg._REGISTRY, "ghost", reg.MetricSpec("ghost", "paired", True, "evalkit.metrics.no_such_module:X"))
    run = make_run(tmp_path / "run", {"bf16": None, "q": lambda a, i: a}, n_prompts=2, size=48)
    res = score_run(run, "ghost,psnr", workers=1, progress=False)
    assert res["q"]["ghost"]["status"] == "skipped" and "no_such_module" in res["q"]["ghost"]["reason"]
    assert res["q"]["psnr"]["status"] == "ok"

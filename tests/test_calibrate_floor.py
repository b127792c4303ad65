"""The noise floor's definition (evalkit.calibrate.floor) and the perturbation selection, on synthetic records."""

from __future__ import annotations

from pathlib import Path

import pytest

from evalkit.calibrate.floor import metric_facts, metric_floor, perturbation_entry
from evalkit.calibrate.perturbations import DEFAULTS, select_perturbations
from evalkit.errors import EvalkitError
from evalkit.score.stats import summarize


def entry(name: str, values: list[float]) -> dict:
    rec = {"status": "ok", **summarize(values), "per_prompt": {f"p{i}": v for i, v in enumerate(values)}}
    return perturbation_entry(rec, metric_facts(name))


def test_floor_is_the_worst_ci_end_on_the_bad_side() -> None:
    a, b = [0.01, 0.03, 0.02, 0.04], [0.05, 0.01, 0.02, 0.02]
    lp = metric_floor({"a": entry("lpips_alex", a), "b": entry("lpips_alex", b)}, metric_facts("lpips_alex"))
    his = [summarize(v)["ci_high"] for v in (a, b)]
    assert lp["value"] == max(his) and lp["from"] == "ab"[his.index(max(his))] and not lp["identical"]
    s1, s2 = [0.99, 0.98, 0.97], [0.995, 0.999, 0.96]
    ss = metric_floor({"a": entry("ssim", s1), "b": entry("ssim", s2)}, metric_facts("ssim"))
    los = [summarize(v)["ci_low"] for v in (s1, s2)]
    assert ss["value"] == min(los) and ss["distance_from_identity"] == pytest.approx(1 - min(los))


def test_identical_images_give_zero_and_psnr_identical_never_a_number() -> None:
    lp = metric_floor({"rerun": entry("lpips_alex", [0.0, 0.0])}, metric_facts("lpips_alex"))
    assert lp["value"] == 0.0 and lp["identical"] and lp["display"] == "0"
    e = entry("psnr", [100.0, 100.0])
    assert e["per_prompt"] == {"p0": "identical", "p1": "identical"} and e["mean"] is None
    ps = metric_floor({"rerun": e}, metric_facts("psnr"))
    assert ps["value"] is None and ps["display"] == "identical"
    # One perturbation that changed bits makes the floor a number again.
    ps2 = metric_floor({"rerun": e, "batch2": entry("psnr", [100.0, 48.0, 52.0])}, metric_facts("psnr"))
    assert ps2["value"] == pytest.approx(summarize([100.0, 48.0, 52.0])["ci_low"]) and not ps2["identical"]


def test_one_prompt_has_no_ci_and_says_the_mean_is_used() -> None:
    e = entry("lpips_alex", [0.02])
    assert e["noise_end"] == 0.02 and "no CI" in e["noise_end_statistic"]


def test_skipped_metric_gives_a_skipped_floor_with_the_reason_once() -> None:
    skipped = {"status": "skipped", "reason": "needs 176 px"}
    f = metric_floor({p: perturbation_entry(skipped, metric_facts("ms_ssim")) for p in ("a", "b")},
                     metric_facts("ms_ssim"))
    assert f["status"] == "skipped" and f["reason"] == "needs 176 px (a, b)"


def test_perturbation_selection(tmp_path: Path) -> None:
    assert [p.name for p in select_perturbations("cpu")] == list(DEFAULTS["cpu"])
    assert [p.name for p in select_perturbations("cuda")] == list(DEFAULTS["cuda"])
    cfg = tmp_path / "c.toml"
    cfg.write_text('[calibrate]\nperturbations = ["rerun", "t4"]\n[calibrate.define.t4]\nintra_op_threads = 4\n')
    chosen = select_perturbations("cpu", str(cfg))
    assert [p.name for p in chosen] == ["rerun", "t4"] and chosen[1].intra_op_threads == 4
    assert chosen[1].settings() == {"intra_op_threads": 4}
    with pytest.raises(EvalkitError, match="needs cuda"):
        select_perturbations("cpu", names=["tf32"])
    with pytest.raises(EvalkitError, match="unknown perturbation 'batch3'"):
        select_perturbations("cpu", names=["batch3"])
    cfg.write_text('[calibrate.define.x]\nthreads = 4\n')
    with pytest.raises(EvalkitError, match=r"c.toml: \[calibrate.define.x\]: unknown knob"):
        select_perturbations("cpu", str(cfg))

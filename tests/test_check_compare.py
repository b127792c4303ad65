"""`evalkit compare`: comparability refusal, the paired bootstrap, regression flags and exit codes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from check_fixtures import PROMPTS, make_run, manifest
from evalkit.check.compare import paired_bootstrap
from evalkit.cli import main

XSD = Path(__file__).resolve().parent.parent / "evalkit" / "check" / "schema" / "junit-10.xsd"


def compare(base: Path, cand: Path, *extra: str) -> int:
    return main(["compare", str(base), str(cand), "-q", *extra])


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return make_run(tmp_path / "base")


# --- the statistics ----------------------------------------------------------------------------------------

def test_bootstrap_identical_runs_is_no_change() -> None:
    r = paired_bootstrap([0.1, 0.2, 0.3], [0.1, 0.2, 0.3], 2000)
    assert (r.delta, r.ci_low, r.ci_high, r.p_value, r.significant) == (0.0, 0.0, 0.0, 1.0, False)


def test_bootstrap_consistent_shift_is_significant_and_noise_is_not() -> None:
    base = [0.10, 0.14, 0.12, 0.09, 0.15, 0.11, 0.13, 0.10, 0.12, 0.16]
    shifted = paired_bootstrap(base, [v + 0.01 for v in base], 4000)
    assert shifted.significant and shifted.ci_low > 0 and shifted.p_value < 0.01
    assert shifted.delta == pytest.approx(0.01)
    # Per-prompt changes of both signs around zero: not significant.
    noise = [0.02, -0.03, 0.01, -0.01, 0.03, -0.02, 0.00, -0.005, 0.01, -0.01]
    r = paired_bootstrap(base, [b + d for b, d in zip(base, noise)], 4000)
    assert not r.significant and r.ci_low < 0 < r.ci_high and r.p_value > 0.2


def test_bootstrap_is_deterministic_and_chunking_does_not_change_it() -> None:
    import numpy as np

    rng = np.random.default_rng(1)
    b, c = rng.random(300).tolist(), rng.random(300).tolist()
    r1, r2 = paired_bootstrap(b, c, 10000), paired_bootstrap(b, c, 10000)
    assert r1 == r2
    # The CI of the mean of a paired difference should match the normal approximation roughly.
    d = np.asarray(c) - np.asarray(b)
    se = d.std(ddof=1) / np.sqrt(d.size)
    assert r1.ci_high - r1.ci_low == pytest.approx(2 * 1.96 * se, rel=0.1)


# --- refusal of non-comparable runs ----------------------------------------------------------------------------

def _other(tmp_path: Path, **kw) -> Path:
    prompts = kw.pop("prompts", PROMPTS)
    base_seed = kw.pop("base_seed", 0)
    m = manifest(prompts=prompts, base_seed=base_seed, **{k: v for k, v in kw.items() if k != "model"})
    if "model" in kw:
        m["model"].update(kw["model"])
    return make_run(tmp_path / "cand", m)


@pytest.mark.parametrize("kw, fragment", [
    ({"prompts": PROMPTS[:5]}, "prompts differ (12 vs 5): 7 only in base (p05-art-deco-style-a-grand"),
    ({"prompts": PROMPTS[:5] + ["Pop art style, a diner"]}, "1 only in candidate (p05-pop-art-style-a-diner"),
    ({"base_seed": 1}, "seeds differ for 12 prompt(s)"),
    ({"height": 256, "width": 256}, "resolution differs (128x128 vs 256x256)"),
    ({"num_inference_steps": 8}, "generation.num_inference_steps differs (4 vs 8)"),
    ({"guidance_scale": 5.0}, "generation.guidance_scale differs (3.5 vs 5.0)"),
    ({"model": {"spec": "random:flux-dev", "kind": "random"}}, "model.spec differs ('tiny' vs 'random:flux-dev')"),
])
def test_not_comparable_exits_2_naming_the_difference(base: Path, tmp_path: Path, capsys, kw, fragment) -> None:
    cand = _other(tmp_path, **kw)
    assert compare(base, cand) == 2
    err = capsys.readouterr().err
    assert "not comparable" in err and fragment in err and "--force" in err
    assert not (cand / "check" / "compare-junit.xml").exists()


def test_seed_edited_in_manifest_is_caught(base: Path, tmp_path: Path, capsys) -> None:
    m = manifest()
    m["prompts"][2]["seed"] += 1  # same base seed, one prompt's seed differs: caught per prompt
    cand = make_run(tmp_path / "cand", m)
    assert compare(base, cand) == 2
    assert "seeds differ for 1 prompt(s) (e.g. p02-" in capsys.readouterr().err


def test_prompt_text_differs_under_same_id_is_caught(base: Path, tmp_path: Path, capsys) -> None:
    m = manifest()
    m["prompts"][0]["text"] += " (edited)"
    cand = make_run(tmp_path / "cand", m)
    assert compare(base, cand) == 2
    assert "prompt texts differ for 1 prompt(s)" in capsys.readouterr().err


def test_force_compares_and_says_so_everywhere(base: Path, tmp_path: Path, capsys) -> None:
    cand = _other(tmp_path, num_inference_steps=8, prompts=PROMPTS[:5])
    assert compare(base, cand, "--force") == 0
    err = capsys.readouterr().err
    assert "FORCED comparison" in err
    md = (cand / "check" / "compare-summary.md").read_text()
    assert md.splitlines()[2].startswith("> ⚠️ **Warning:** FORCED comparison (--force)")
    assert "num_inference_steps differs (4 vs 8)" in md
    root = ET.parse(cand / "check" / "compare-junit.xml").getroot()
    props = {p.get("name"): p.get("value") for p in root.find("testsuite").iter("property") if p.get("name") == "forced"}
    assert props == {"forced": "true"}
    assert "FORCED" in root.find("testsuite").find("system-err").text
    # Only the 5 shared prompts are paired.
    assert "n=5 prompts" in (cand / "check" / "compare-junit.xml").read_text()


# --- regressions ----------------------------------------------------------------------------------------------

def test_identical_runs_pass_with_no_change(base: Path, tmp_path: Path) -> None:
    cand = make_run(tmp_path / "cand")
    assert compare(base, cand, "--fail-on-regression") == 0
    md = (cand / "check" / "compare-summary.md").read_text()
    assert "no significant regression" in md and "regression |" not in md


def test_regression_is_flagged_and_fails_only_with_flag(base: Path, tmp_path: Path) -> None:
    cand = make_run(tmp_path / "cand", shift=0.02)
    assert compare(base, cand) == 0  # report only
    md = (cand / "check" / "compare-summary.md").read_text()
    assert "6 significant regression(s) (not failing" in md
    assert "### Regressions (not failing" in md
    assert ET.parse(cand / "check" / "compare-junit.xml").getroot().get("failures") == "0"

    assert compare(base, cand, "--fail-on-regression") == 1
    root = ET.parse(cand / "check" / "compare-junit.xml").getroot()
    failed = sorted((c.get("classname"), c.get("name")) for c in root.iter("testcase") if c.find("failure") is not None)
    assert failed == [(f"evalkit.compare.{b}", m) for b in ("bnb-nf4", "torchao-int8wo") for m in ("lpips_alex", "psnr", "ssim")]
    msg = next(root.iter("failure")).get("message")
    assert "lpips_alex rose by 0.02" in msg and "lower is better" in msg and "95% CI" in msg


def test_improvement_is_not_a_regression(base: Path, tmp_path: Path) -> None:
    cand = make_run(tmp_path / "cand", shift=-0.01)
    assert compare(base, cand, "--fail-on-regression") == 0
    assert "improved" in (cand / "check" / "compare-summary.md").read_text()


def test_set_level_metric_delta_is_shown_untested(base: Path, tmp_path: Path) -> None:
    cand = make_run(tmp_path / "cand", shift=0.01)
    compare(base, cand)
    md = (cand / "check" / "compare-summary.md").read_text()
    assert "| bnb-nf4 | `fid` | 12.3 | 13.3 | +1 |  |  | not tested |" in md


def test_latency_and_memory_ratios(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base", device="cuda", peak_reserved={"bf16": 33.0, "bnb-nf4": 12.0, "torchao-int8wo": 20.0})
    cand = make_run(tmp_path / "cand", device="cuda", peak_reserved={"bf16": 33.0, "bnb-nf4": 14.0, "torchao-int8wo": 20.2},
                    median_s={"bf16": 0.03, "bnb-nf4": 0.045, "torchao-int8wo": 0.06})
    assert compare(base, cand, "--fail-on-regression") == 1
    root = ET.parse(cand / "check" / "compare-junit.xml").getroot()
    failed = sorted((c.get("classname").rsplit(".", 1)[1], c.get("name")) for c in root.iter("testcase")
                    if c.find("failure") is not None)
    # nf4 memory +16.7% (> 5%), int8wo latency x1.333 (> 10%); int8wo memory +1% is within tolerance.
    assert ("bnb-nf4", "peak_memory_reserved_gib") in failed
    assert ("torchao-int8wo", "latency_median_s") in failed
    assert ("torchao-int8wo", "peak_memory_reserved_gib") not in failed
    assert compare(base, cand, "--fail-on-regression", "--memory-tolerance", "0.5", "--latency-tolerance", "0.5") == 0


def test_other_device_ratios_shown_not_flagged(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    m = manifest()
    m["device"]["name"] = "AMD EPYC"
    cand = make_run(tmp_path / "cand", m, median_s={"bf16": 0.3, "bnb-nf4": 0.9, "torchao-int8wo": 0.9})
    assert compare(base, cand, "--fail-on-regression") == 0
    md = (cand / "check" / "compare-summary.md").read_text()
    assert "devices differ" in md and "other device" in md


def test_backend_failing_in_candidate_is_a_regression(base: Path, tmp_path: Path) -> None:
    cand = make_run(tmp_path / "cand", failed={"bnb-nf4": "RuntimeError: no kernel image is available"})
    assert compare(base, cand, "--fail-on-regression") == 1
    f = next(ET.parse(cand / "check" / "compare-junit.xml").getroot().iter("failure"))
    assert "no kernel image" in f.get("message")


def test_metric_skipped_in_candidate_is_reported(base: Path, tmp_path: Path) -> None:
    cand = make_run(tmp_path / "cand", skipped={"lpips_alex": "no LPIPS weights"})
    compare(base, cand)
    md = (cand / "check" / "compare-summary.md").read_text()
    assert "lpips_alex candidate: skipped (no LPIPS weights)" in md


def test_compare_junit_validates(base: Path, tmp_path: Path) -> None:
    xmlschema = pytest.importorskip("xmlschema")
    cand = make_run(tmp_path / "cand", shift=0.02, skipped={"clip_score": "no weights"})
    compare(base, cand, "--fail-on-regression")
    xmlschema.XMLSchema(str(XSD)).validate(str(cand / "check" / "compare-junit.xml"))


def test_bad_arguments_exit_2(base: Path, tmp_path: Path, capsys) -> None:
    cand = make_run(tmp_path / "cand")
    assert compare(base, cand, "--alpha", "1.5") == 2
    assert "--alpha" in capsys.readouterr().err
    assert compare(base, tmp_path / "missing") == 2


def test_per_prompt_read_from_metrics_files(base: Path, tmp_path: Path) -> None:
    # One prompt got much worse, the rest are identical: the mean moves, but the bootstrap (n=12) must
    # not call one outlier a certain regression of every prompt.
    cand = make_run(tmp_path / "cand")
    rec_path = cand / "metrics" / "bnb-nf4.json"
    rec = json.loads(rec_path.read_text())
    pp = rec["metrics"]["lpips_alex"]["per_prompt"]
    first = next(iter(pp))
    pp[first] += 0.3
    rec_path.write_text(json.dumps(rec))
    assert compare(base, cand, "--fail-on-regression") == 0
    row = next(line for line in (cand / "check" / "compare-summary.md").read_text().splitlines()
               if line.startswith("| bnb-nf4 | `lpips_alex`"))
    assert "+0.025" in row and "n.s." in row


def test_compare_does_not_clobber_check_outputs(base: Path, tmp_path: Path) -> None:
    from check_fixtures import write

    cand = make_run(tmp_path / "cand")
    assert main(["check", str(cand), "-q", "--thresholds", str(write(tmp_path / "t.toml", "[default]\nssim_min = 0.5\n"))]) == 0
    assert compare(base, cand) == 0
    assert sorted(p.name for p in (cand / "check").iterdir()) == [
        "compare-junit.xml", "compare-summary.md", "junit.xml", "summary.md"]

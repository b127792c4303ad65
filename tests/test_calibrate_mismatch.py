"""A calibration made under other settings than the run it gates is refused (exit 2) with every differing setting
named; --allow-calibration-mismatch uses it and warns in every output (#23.3 item 3)."""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from check_fixtures import PROMPTS, make_run, manifest, write, write_calibration
from evalkit.cli import main

FLOORS = {"lpips_alex": [0.02] * 4, "ssim": [0.99] * 4}
BOUNDS = '[backends."torchao-int8wo"]\nlpips_alex_max = { noise = 3 }\n'


def gate(run: Path, tmp_path: Path, *extra: str) -> int:
    return main(["check", str(run), "-t", str(write(tmp_path / "t.toml", BOUNDS)), "-q", *extra])


def other(**generation) -> dict:
    return manifest(**generation)


@pytest.mark.parametrize("m, fragments", [
    (other(height=256, width=64), ["generation.height 256 (this run: 128)", "generation.width 64 (this run: 128)"]),
    (other(num_inference_steps=50), ["generation.num_inference_steps 50 (this run: 4)"]),
    (other(max_sequence_length=512), ["generation.max_sequence_length 512 (this run: 64)"]),
    (other(dtype="float16"), ["generation.dtype 'float16' (this run: 'bfloat16')"]),
    (other(base_seed=7), ["generation.base_seed 7 (this run: 0)"]),
    (other(device="cuda"), ["device 'cuda' (this run: 'cpu')"]),
    (manifest(prompts=PROMPTS[:6]), ["prompts (6 vs 12: 6 only in this run"]),
])
def test_every_differing_setting_is_named_and_refused(tmp_path: Path, capsys, m: dict, fragments: list[str]) -> None:
    run = make_run(tmp_path / "run")
    cal = write_calibration(run, FLOORS, m=m)
    assert gate(run, tmp_path) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(cal) in err and "other settings than this run" in err
    for f in fragments:
        assert f in err, (f, err)


def test_model_and_several_settings_are_all_listed(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run")
    m = other(height=64, num_inference_steps=2, guidance_scale=7.0)
    m["model"]["spec"] = "black-forest-labs/FLUX.1-dev"
    write_calibration(run, FLOORS, m=m)
    assert gate(run, tmp_path) == 2
    err = capsys.readouterr().err
    for f in ("model 'black-forest-labs/FLUX.1-dev' (this run: 'tiny')", "generation.height 64",
              "generation.num_inference_steps 2", "generation.guidance_scale 7.0"):
        assert f in err, f


def test_allowed_mismatch_warns_in_every_output(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run")
    write_calibration(run, FLOORS, m=other(num_inference_steps=50))
    assert gate(run, tmp_path, "--allow-calibration-mismatch") == 0
    assert "calibrated under other settings" in capsys.readouterr().err  # -q still prints warnings
    assert "generation.num_inference_steps 50" in (run / "check" / "summary.md").read_text()
    props = [p.get("value") for p in ET.parse(run / "check" / "junit.xml").getroot().iter("property")
             if p.get("name") == "warning"]
    assert any("calibrated under other settings" in v for v in props)


def test_matching_calibration_of_another_run_is_accepted_and_its_manifest_read(tmp_path: Path, capsys) -> None:
    # A baseline's calibration, kept next to its manifest (the CI job's cache): same settings pass ...
    base = make_run(tmp_path / "baseline")
    cal = write_calibration(base, FLOORS)
    run = make_run(tmp_path / "run")
    assert gate(run, tmp_path, "--calibration", str(cal)) == 0
    # ... and the baseline's manifest adds what calibration.json does not hold: the device's name.
    m = copy.deepcopy(manifest())
    m["device"]["name"] = "AMD EPYC (AVX2)"
    run2 = make_run(tmp_path / "run2", m)
    assert gate(run2, tmp_path, "--calibration", str(cal)) == 2
    assert "device.name 'Intel CPU' (this run: 'AMD EPYC (AVX2)')" in capsys.readouterr().err

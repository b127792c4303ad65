"""Bounds relative to the noise floor (`{ noise = k }`): pass and fail exactly where their arithmetic says,
exit 0 / 1 / 2, and the floor, margin and sample-size figures in every output (terminal, Markdown, JUnit)."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from check_fixtures import BASE_LPIPS, BASE_PSNR, BASE_SSIM, make_run, write, write_calibration
from evalkit.cli import main

# The fixture's torchao-int8wo (k = 0.5) means, computed here independently of evalkit.
INT8_LPIPS = sum(v * 0.5 for v in BASE_LPIPS) / len(BASE_LPIPS)  # 0.05917
INT8_SSIM = sum(1 - (1 - v) * 0.5 for v in BASE_SSIM) / len(BASE_SSIM)  # 0.9475
INT8_PSNR = sum(v / 0.5 ** 0.25 for v in BASE_PSNR) / len(BASE_PSNR)  # 32.43 dB
FLOORS = {"lpips_alex": [0.02] * 4, "ssim": [0.99] * 4, "psnr": [40.0] * 4}


@pytest.fixture
def run(tmp_path: Path) -> Path:
    root = make_run(tmp_path / "run")
    write_calibration(root, FLOORS)
    return root


def check(run: Path, text: str, tmp_path: Path, *extra: str) -> int:
    return main(["check", str(run), "--thresholds", str(write(tmp_path / "t.toml", text)), *extra])


def only_int8(bounds: str) -> str:
    return f'[backends."torchao-int8wo"]\n{bounds}\n'


# k at which each bound sits exactly on the int8 mean, from the documented arithmetic:
#   LPIPS  k * floor;   SSIM  1 - k * (1 - floor);   PSNR  floor - 10 log10(k)  (k times the floor's MSE).
K_LPIPS = INT8_LPIPS / 0.02
K_SSIM = (1 - INT8_SSIM) / (1 - 0.99)
K_PSNR = 10 ** ((40.0 - INT8_PSNR) / 10)


@pytest.mark.parametrize("key,k_edge", [("lpips_alex_max", K_LPIPS), ("ssim_min", K_SSIM), ("psnr_min", K_PSNR)])
def test_relative_bound_passes_above_and_fails_below_its_arithmetic(run: Path, tmp_path: Path, key: str,
                                                                    k_edge: float) -> None:
    assert check(run, only_int8(f"{key} = {{ noise = {k_edge * 1.01} }}"), tmp_path) == 0
    assert check(run, only_int8(f"{key} = {{ noise = {k_edge * 0.99} }}"), tmp_path) == 1


def test_floor_and_margin_in_every_output(run: Path, tmp_path: Path, capsys) -> None:
    assert check(run, only_int8("lpips_alex_max = { noise = 3 }\nlpips_alex_min = 0.0"), tmp_path) == 0
    out = capsys.readouterr().out
    margin = f"{3 - INT8_LPIPS / 0.02:+.2f}×"  # +0.04×
    assert "floor" in out and "margin" in out and margin in out and "(3× floor)" in out
    # Which perturbations the floor is over, and which one set each metric's floor.
    assert "over batch2: " in out and "lpips_alex 0.0200 (batch2)" in out
    md = (run / "check" / "summary.md").read_text()
    assert f"| 0.0200 | {margin} |" in md
    props = {p.get("name"): p.get("value") for p in ET.parse(run / "check" / "junit.xml").getroot().iter("property")}
    assert props["calibration"] == str(run / "calibration.json")


def test_relative_bound_without_calibration_exits_2_naming_the_bound(tmp_path: Path, capsys) -> None:
    root = make_run(tmp_path / "bare")
    assert check(root, "[default]\nssim_min = 0.5\nlpips_alex_max = { noise = 3 }\n", tmp_path) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 't.toml'}:3:" in err and "calibration.json not found" in err and "evalkit calibrate" in err


@pytest.mark.parametrize("text,fragment", [
    ("lpips_alex_min = { noise = 3 }", "good side"),
    ("ssim_max = { noise = 3 }", "good side"),
    ("lpips_alex_max = { noise = 0 }", "above 0"),
    ("lpips_alex_max = { noise = -1 }", "above 0"),
    ("lpips_alex_max = { noise = 'x' }", "above 0"),
    ("lpips_alex_max = { noise = 3, floor = 1 }", "exactly one key"),
    ("latency_ratio_to_bf16_max = { noise = 3 }", "only quality metrics"),
    ("lpips_vgg_max = { noise = 3 }", "no floor for lpips_vgg"),
])
def test_bad_relative_bounds_exit_2(run: Path, tmp_path: Path, capsys, text: str, fragment: str) -> None:
    assert check(run, f"[default]\n{text}\n", tmp_path) == 2
    assert fragment in capsys.readouterr().err


def test_identical_floor_demands_identical_images(tmp_path: Path, capsys) -> None:
    # A reference reproduced bit for bit: LPIPS floor 0, PSNR "identical". k times nothing is nothing.
    root = make_run(tmp_path / "run")
    write_calibration(root, {"lpips_alex": [0.0] * 3, "psnr": [100.0] * 3})
    assert check(root, only_int8("lpips_alex_max = { noise = 100 }"), tmp_path) == 1
    assert check(root, only_int8("psnr_min = { noise = 100 }"), tmp_path) == 1
    out = capsys.readouterr().out
    assert "identical" in out and "≥ 100" in out


def test_explicit_calibration_file_and_missing_one(tmp_path: Path, capsys) -> None:
    root = make_run(tmp_path / "run")
    cached = write_calibration(tmp_path, FLOORS)  # a calibration kept from another run, as a CI cache would
    text = only_int8(f"lpips_alex_max = {{ noise = {K_LPIPS * 1.01} }}")
    assert check(root, text, tmp_path, "--calibration", str(cached)) == 0
    assert check(root, text, tmp_path, "--calibration", str(tmp_path / "nope.json")) == 2
    assert "nope.json: file not found" in capsys.readouterr().err


def test_gate_that_cannot_resolve_its_bound_says_so_everywhere(run: Path, tmp_path: Path, capsys) -> None:
    # 12 prompts, per-prompt sd of int8's LPIPS ~0.012: a bound 0.0005 above the mean needs ~ thousands.
    limit = INT8_LPIPS + 0.0005
    assert check(run, only_int8(f"lpips_alex_max = {limit}"), tmp_path) == 0
    out = capsys.readouterr().out
    assert "CANNOT resolve" in out and "power 0.8" in out
    assert "CANNOT resolve" in (run / "check" / "summary.md").read_text()
    props = {p.get("name"): p.get("value") for p in ET.parse(run / "check" / "junit.xml").getroot().iter("property")}
    key = "sample_size.torchao-int8wo.lpips_alex_max"
    assert props[f"{key}.resolvable"] == "false" and props[f"{key}.n"] == "12"
    sd = math.sqrt(sum((v * 0.5 - INT8_LPIPS) ** 2 for v in BASE_LPIPS) / 11)
    assert int(props[f"{key}.prompts_needed"]) == math.ceil((2.8015852 * sd / 0.0005) ** 2)
    # A bound far from the value is resolvable: no warning.
    assert check(run, only_int8("lpips_alex_max = 0.5"), tmp_path) == 0
    assert "CANNOT resolve" not in capsys.readouterr().out

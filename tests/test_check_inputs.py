"""Every malformed input is exit 2 with one line naming the file and the field, never a traceback and never exit 1
(which means "a bound was violated"): calibration.json, summary.json, metric records, the manifest and the
thresholds TOML, with wrong types, NaN, strings, truncation or deep nesting (#23.3 item 3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

from check_fixtures import make_run, write, write_calibration
from evalkit.cli import main

FLOORS = {"lpips_alex": [0.02] * 4, "ssim": [0.99] * 4, "psnr": [40.0] * 4}
RELATIVE = '[backends."torchao-int8wo"]\nlpips_alex_max = { noise = 3 }\nssim_min = { noise = 3 }\n'


def one_line_error(capsys, *fragments: str) -> str:
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("evalkit: error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err + captured.out
    for f in fragments:
        assert f in err, (f, err)
    return err


def mangle(path: Path, fn: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(fn(json.loads(path.read_text())), allow_nan=True))


def _floor(d: dict, metric: str, **kw: Any) -> dict:
    d["metrics"][metric]["floor"].update(kw)
    return d


@pytest.mark.parametrize("fn, fragment", [
    (lambda d: _floor(d, "lpips_alex", value="0.02"), "metrics.lpips_alex.floor.value must be a number, found str"),
    (lambda d: _floor(d, "lpips_alex", value=float("nan")), "metrics.lpips_alex.floor.value is nan"),
    (lambda d: _floor(d, "ssim", value=float("inf")), "metrics.ssim.floor.value is inf"),
    (lambda d: _floor(d, "lpips_alex", value=None), "metrics.lpips_alex.floor.value is null"),
    (lambda d: _floor(d, "lpips_alex", value=-0.5), "metrics.lpips_alex.floor.value -0.5 is not on the bad side"),
    (lambda d: _floor(d, "lpips_alex", status=1), "metrics.lpips_alex.floor.status must be a string, found int"),
    (lambda d: _floor(d, "lpips_alex", identical="no"), "metrics.lpips_alex.floor.identical must be true or false"),
    (lambda d: {**d, "metrics": {**d["metrics"], "ssim": [1]}}, "metrics.ssim must be a JSON object, found list"),
    (lambda d: {**d, "metrics": {**d["metrics"], "ssim": {**d["metrics"]["ssim"], "identity": "1"}}},
     "metrics.ssim.identity must be a number, found str"),
    (lambda d: {**d, "metrics": {**d["metrics"], "ssim": {**d["metrics"]["ssim"], "scale": "log"}}},
     "metrics.ssim.scale must be \"linear\" or \"db\""),
    (lambda d: {**d, "metrics": {**d["metrics"], "ssim": {**d["metrics"]["ssim"], "higher_is_better": 1}}},
     "metrics.ssim.higher_is_better must be true or false"),
    (lambda d: {**d, "metrics": "all"}, "not a calibration (no 'metrics' table)"),
    (lambda d: [d], "not a calibration"),
    (lambda d: {**d, "generation": "128x128"}, "calibration.generation must be a JSON object or null, found str"),
])
def test_malformed_calibration_is_exit_2_naming_file_and_field(tmp_path: Path, capsys, fn, fragment) -> None:
    run = make_run(tmp_path / "run")
    cal = write_calibration(run, FLOORS)
    mangle(cal, fn)
    assert main(["check", str(run), "-t", str(write(tmp_path / "t.toml", RELATIVE)), "-q"]) == 2
    one_line_error(capsys, str(cal), fragment)


@pytest.mark.parametrize("text, fragment", [
    ('{"metrics": {"lpips_alex": {"floor": {"status": "ok", "val', ":1: invalid JSON"),  # truncated
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("\xff\xfe not utf-8", "not UTF-8"),
    ("", "invalid JSON"),
])
def test_unreadable_calibration_is_exit_2(tmp_path: Path, capsys, text: str, fragment: str) -> None:
    run = make_run(tmp_path / "run")
    (run / "calibration.json").write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    assert main(["check", str(run), "-t", str(write(tmp_path / "t.toml", RELATIVE)), "-q"]) == 2
    one_line_error(capsys, "calibration.json", fragment)


def _set_metric(field: str, value: Any) -> Callable[[dict], dict]:
    def fn(d: dict) -> dict:
        d["backends"]["bnb-nf4"]["metrics"]["ssim"][field] = value
        return d
    return fn


def _set_backend(field: str, value: Any) -> Callable[[dict], dict]:
    def fn(d: dict) -> dict:
        d["backends"]["bnb-nf4"][field] = value
        return d
    return fn


@pytest.mark.parametrize("fn, bounds, fragment", [
    (_set_metric("mean", "0.9"), "ssim_min = 0.5", "backends.bnb-nf4.metrics.ssim.mean must be a number or null, found str"),
    (_set_metric("mean", float("nan")), "ssim_min = 0.5", "backends.bnb-nf4.metrics.ssim.mean is nan"),
    (_set_metric("ci_low", [0.8]), "ssim_min = 0.5", "backends.bnb-nf4.metrics.ssim.ci_low must be a number or null"),
    (_set_metric("n", "12"), "ssim_min = 0.5", "backends.bnb-nf4.metrics.ssim.n must be a count"),
    (_set_metric("status", None), "ssim_min = 0.5", "backends.bnb-nf4.metrics.ssim.status must be a string"),
    (_set_backend("latency", {"median_s": "fast"}), "latency_ratio_to_bf16_max = 9",
     "backends.bnb-nf4.latency.median_s must be a number or null, found str"),
    (_set_backend("memory", {"cpu_peak_rss_gib": True}), "cpu_peak_rss_gib_max = 9",
     "backends.bnb-nf4.memory.cpu_peak_rss_gib must be a number or null, found bool"),
    (_set_backend("image_flags", {"nan": "2"}), "flagged_images_max = 0", "backends.bnb-nf4.image_flags.nan must be a count"),
    (_set_backend("status", 7), "ssim_min = 0.5", "backends.bnb-nf4.status must be a JSON str, found int"),
])
def test_malformed_summary_is_exit_2_never_a_failed_bound(tmp_path: Path, capsys, fn, bounds, fragment) -> None:
    run = make_run(tmp_path / "run")
    mangle(run / "summary.json", fn)
    assert main(["check", str(run), "-t", str(write(tmp_path / "t.toml", f"[default]\n{bounds}\n")), "-q"]) == 2
    one_line_error(capsys, str(run / "summary.json"), fragment)


def test_deeply_nested_manifest_is_exit_2(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run")
    (run / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    assert main(["check", str(run), "-t", str(write(tmp_path / "t.toml", "[default]\nssim_min = 0.5\n"))]) == 2
    one_line_error(capsys, str(run / "manifest.json"), "nested too deeply")


@pytest.mark.parametrize("value, fragment", [
    ('"0.1"', "metrics.ssim.per_prompt.p00-"), ("NaN", "is nan"), ("[0.1]", "must be a number or null, found list"),
])
def test_compare_malformed_per_prompt_value_is_exit_2(tmp_path: Path, capsys, value: str, fragment: str) -> None:
    base, cand = make_run(tmp_path / "base"), make_run(tmp_path / "cand")
    rec = cand / "metrics" / "bnb-nf4.json"
    data = json.loads(rec.read_text())
    pid = next(iter(data["metrics"]["ssim"]["per_prompt"]))
    text = rec.read_text().replace(f'"{pid}": {data["metrics"]["ssim"]["per_prompt"][pid]}', f'"{pid}": {value}', 1)
    assert text != rec.read_text()
    rec.write_text(text)
    assert main(["compare", str(base), str(cand), "-q", "--fail-on-regression"]) == 2
    one_line_error(capsys, str(rec), fragment)


@pytest.mark.parametrize("text, fragment", [
    ("[default]\nssim_min = '0.5'\n", "ssim_min must be a number"),
    ("[default]\nssim_min = [0.5]\n", "ssim_min must be a number"),
    ("[default]\nssim_min = 2024-01-01\n", "ssim_min must be a number"),
    ("[default]\nallow_skipped_backend = 'yes'\n", "allow_skipped_backend must be true or false"),
    ("default = 3\n", "'default' must be a table"),
    ("[[default]]\nssim_min = 0.5\n", "'default' must be a table"),
    ("backends = 3\n", "'backends' must hold tables"),
    ('[backends]\n"bnb-nf4" = 0.5\n', "must be a table"),
    ("[default]\nlpips_alex_max = { noise = 'x' }\n", "noise must be a finite number above 0"),
    ("[default]\nlpips_alex_max = { noise = nan }\n", "noise must be a finite number above 0"),
    ("a = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
])
def test_thresholds_with_wrong_types_exit_2(tmp_path: Path, capsys, text: str, fragment: str) -> None:
    run = make_run(tmp_path / "run")
    assert main(["check", str(run), "-t", str(write(tmp_path / "t.toml", text)), "-q"]) == 2
    one_line_error(capsys, "t.toml", fragment)

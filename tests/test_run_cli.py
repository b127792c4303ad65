"""The README's main command, as a user runs it: `evalkit run PROMPTS --model tiny` from a working directory,
with the default relative `reports/` output. Every stage runs and the last line says where the report is."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import run_evalkit
from evalkit.io import read_json


def test_evalkit_run_end_to_end_with_relative_default_output(tmp_path: Path, three_prompts: Path, tiny_model_path: Path) -> None:
    work = tmp_path / "project"
    work.mkdir()
    (work / "prompts.txt").write_text(three_prompts.read_text())
    r = run_evalkit("run", "prompts.txt", "--model", "tiny", "--height", "64", "--width", "64",
                    "--backends", "bf16,torchao-int8wo", "--metrics", "lpips_alex,ssim,psnr,kid", cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    lines = r.stdout.strip().splitlines()
    m = re.fullmatch(r"Report: (reports/tiny-prompts-[0-9a-f]{8}/index\.html)", lines[-1])
    assert m, lines[-3:]
    assert any(re.fullmatch(r"Results: reports/tiny-prompts-[0-9a-f]{8}", ln) for ln in lines), lines[:3]
    run = work / Path(m.group(1)).parent
    assert (run / "index.html").stat().st_size > 10_000
    summary = read_json(run / "summary.json")
    assert summary["images_left_out"] == [] and summary["backends"]["torchao-int8wo"]["partial_reason"] is None
    scored = summary["backends"]["torchao-int8wo"]["metrics"]
    assert scored["lpips_alex"]["status"] == "ok" and 0 < scored["lpips_alex"]["mean"] < 0.5
    assert scored["ssim"]["ci_low"] <= scored["ssim"]["mean"] <= scored["ssim"]["ci_high"]
    # Each stage reruns alone on the existing run directory.
    for stage in (["score", str(run.relative_to(work))], ["report", str(run.relative_to(work))]):
        r2 = run_evalkit(*stage, cwd=work)
        assert r2.returncode == 0 and "Traceback" not in r2.stderr, (stage, r2.stderr[-2000:])

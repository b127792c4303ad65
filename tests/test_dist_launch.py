"""The thin launcher of `--gpus`/`--jobs` and the API: what it starts, and the command line the ranks get."""

from __future__ import annotations

import pytest

from conftest import run_evalkit
from evalkit.generate.launch import local_ranks_wanted
from evalkit.generate.stage import GenerateOptions
from evalkit.io import read_json


def test_ranks_wanted_by_gpus_and_jobs(monkeypatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "EVALKIT_LAUNCHED"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("evalkit.dist._WORLD", None)
    assert local_ranks_wanted(GenerateOptions(prompts_file="p", gpus=["0", "1", "3"])) == 3
    assert local_ranks_wanted(GenerateOptions(prompts_file="p", jobs=2)) == 2
    assert local_ranks_wanted(GenerateOptions(prompts_file="p")) == 1
    monkeypatch.setenv("EVALKIT_LAUNCHED", "1")  # a rank that launch_local started never launches again
    assert local_ranks_wanted(GenerateOptions(prompts_file="p", jobs=2)) == 1


@pytest.mark.slow
def test_evalkit_run_on_two_ranks_scores_and_reports_once(tmp_path, three_prompts, tiny_model_path) -> None:
    """`evalkit run --jobs 2`: both ranks generate, rank 0 alone scores and reports (the other exits 0 after
    generate), and the launching process only waits for them."""
    out = tmp_path / "run"
    r = run_evalkit("run", str(three_prompts), "--model", "tiny", "--height", "32", "--width", "32", "--warmup", "0",
                    "--backends", "bf16,fp8-layerwise", "--metrics", "ssim,psnr", "--jobs", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "starting 2 ranks on this machine" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout.count("Results: ") == 1 and r.stdout.count("Report: ") == 1, r.stdout
    assert read_json(out / "metrics" / "fp8-layerwise.json")["metrics"]["ssim"]["status"] == "ok"
    assert (out / "index.html").is_file()
    units = read_json(out / "merge.json")["backends"]
    assert {u["world_size"] for b in units.values() for u in b["units"]} == {2}

"""The thin launcher of `--gpus`/`--jobs` and the API: what it starts, and the command line the ranks get."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from conftest import run_evalkit
from evalkit.cli import build_parser
from evalkit.generate.cli import local_ranks_wanted, options_argv, options_from_args
from evalkit.generate.stage import GenerateOptions
from evalkit.io import read_json


def test_api_options_become_the_same_command_line() -> None:
    opts = GenerateOptions(prompts_file="p.txt", model="tiny", backends="bf16,fp8-layerwise", out="/tmp/r",
                           height=32, width=48, steps=3, guidance=2.5, max_sequence_length=64, batch_size=2, seed=7,
                           prompt_column="caption", warmup=0, components=["transformer", "text_encoder_2"],
                           config_file="c.toml", gguf_file="g.gguf", attempt_known_failures=True, break_lock=True,
                           lock_timeout=3.0, max_images=9, schedule="backends")
    back = options_from_args(build_parser().parse_args(options_argv(opts)))
    drop = ("command",)
    assert {k: v for k, v in asdict(back).items() if k not in drop} == \
        {k: v for k, v in asdict(opts).items() if k not in drop}


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

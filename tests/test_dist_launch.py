"""The thin launcher of `--gpus`/`--jobs` and the API: what it starts, and the command line the ranks get."""

from __future__ import annotations

from dataclasses import asdict

from evalkit.cli import build_parser
from evalkit.generate.cli import local_ranks_wanted, options_argv, options_from_args
from evalkit.generate.stage import GenerateOptions


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

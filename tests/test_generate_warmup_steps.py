"""--warmup-steps (#25 item 7): the warm-up runs the same shapes through fewer denoising steps, the images and the
run's identity do not change, and each record says how far its first measured image was from the median."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalkit.cli import main
from evalkit.errors import EvalkitError
from evalkit.generate.worker.measure import latency_stats


def _generate(prompts: Path, out: Path, *extra: str) -> dict:
    assert main(["generate", str(prompts), "--model", "tiny", "--backends", "bf16", "--height", "32", "--width", "32",
                 "--steps", "4", "--threads", "1", "--out", str(out), *extra]) == 0
    return json.loads((out / "generation" / "bf16.json").read_text())


def test_a_few_step_warm_up_changes_no_image_and_records_the_first_image(tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("A red cube on a blue table\nA lighthouse at dusk\nA bowl of fruit\n", encoding="utf-8")
    full = _generate(prompts, tmp_path / "full")
    short = _generate(prompts, tmp_path / "short", "--warmup-steps", "1")
    manifest = json.loads((tmp_path / "short" / "manifest.json").read_text())
    assert manifest["generation"]["warmup_steps"] == 1
    assert "warmup_steps" not in json.loads((tmp_path / "full" / "manifest.json").read_text())["generation"]
    assert manifest["config"]["identity"] == json.loads((tmp_path / "full" / "manifest.json").read_text())[
        "config"]["identity"]  # warm-up never changes an image: same study, same run id
    assert [i["sha256"] for i in short["images"]] == [i["sha256"] for i in full["images"]]
    assert len(short["warmup_times_s"]) == 1
    unit = short["ranks"][0]["latency"]  # the unit's own: its images in generation order
    assert unit["first_s"] == short["images"][0]["latency_s"]
    assert unit["first_vs_median"] == pytest.approx(unit["first_s"] / unit["median_s"])
    assert short["latency"]["first_vs_median"] == unit["first_vs_median"]  # merged: the worst unit's


def test_more_warm_up_steps_than_steps_is_refused(tmp_path: Path) -> None:
    from evalkit.generate.options import GenerateOptions
    from evalkit.generate.prepare import check_options

    opts = GenerateOptions(prompts_file=str(tmp_path / "p.txt"), steps=4, warmup_steps=5)
    with pytest.raises(EvalkitError, match="--warmup-steps 5 is more than --steps 4"):
        check_options(opts)


def test_first_vs_median_is_the_first_sample_in_generation_order() -> None:
    lat = latency_stats([3.0, 1.0, 1.0, 1.0], warmup_runs=1)
    assert lat["first_s"] == 3.0 and lat["first_vs_median"] == 3.0 and lat["median_s"] == 1.0

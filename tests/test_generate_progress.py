"""Study-wide progress (issue #24.1): backend k of N, images done of all, and an ETA whose seconds an image correct
themselves from the run's own first images."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from evalkit.generate.progress import RankStudy


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_rank_study_counts_backends_and_images_and_replaces_the_prior_with_measurements() -> None:
    clock = Clock()
    study = RankStudy([("bf16", 3), ("torchao-int8wo", 3)], prior_image_s=10.0, prior_basis="rough: a guess",
                      prior_fixed_s=5.0, clock=clock)
    assert study.summary().startswith("backend 1 of 2, 0/6 images, ETA 70 s (~10 s an image: rough: a guess)")
    study.start_unit(0)
    clock.t += 2.0
    study.on_event({"event": "progress", "done": 0, "total": 3})  # generation starts: fixed cost measured, 2 s
    study.on_event({"event": "progress", "done": 1, "total": 3, "latency_s": 0.5})
    assert study.seconds_per_image() == (0.5, "measured, 1 image of this run")
    # 5 images left at 0.5 s, one unit not started at the measured 2 s
    assert study.eta() == pytest.approx(5 * 0.5 + 2.0)
    study.on_event({"event": "progress", "done": 3, "total": 3, "latency_s": 0.7})
    study.finish_unit()
    study.start_unit(1)
    assert study.summary().startswith("backend 2 of 2, 3/6 images")
    assert study.seconds_per_image()[0] == pytest.approx(0.7)  # median of 0.5, 0.7, 0.7
    clock.t += 0.5  # still loading: what is left of its fixed cost counts
    assert study.eta() == pytest.approx(3 * 0.7 + 1.5)
    study.finish_unit()  # the worker died: its images will not come, and nothing is left to wait for
    assert study.eta() == 0.0 and study.made == 3


def test_a_resumed_unit_counts_its_earlier_images_as_done_without_timing_them() -> None:
    study = RankStudy([("bf16", 4)], 1.0, "rough", 1.0, clock=Clock())
    study.start_unit(0)
    study.on_event({"event": "progress", "done": 2, "total": 4})
    assert study.made == 2 and study.latencies == []


@pytest.mark.slow
def test_the_estimate_after_the_first_images_is_within_2x_of_the_measured_time(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The prior is set absurdly wrong (1000 s an image) so that only a correction from measured images can pass."""
    from evalkit.generate import plan, progress, stage

    monkeypatch.setitem(plan.ROUGH_SECONDS, ("tiny", "cpu"), (1000.0, 4, 32 * 32, "a wrong prior, for the test"))
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)  # a line per image
    prompts = tmp_path / "six.txt"
    prompts.write_text("".join(f"a test picture number {i}\n" for i in range(6)), encoding="utf-8")
    out = stage.run_generate(stage.GenerateOptions(prompts_file=str(prompts), model="tiny", backends="bf16",
                                                   height=32, width=32, out=str(tmp_path / "run")))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "images (this unit)" in ln]
    assert lines and "backend 1 of 1" in lines[0], err[-3000:]
    estimates = [float(m.group(1)) for ln in lines if (m := re.search(r"~([0-9.e+]+) s an image: measured", ln))]
    assert len(estimates) == 6, err[-3000:]
    assert lines[-1].endswith("this run)") and "6/6 images" in lines[-1]
    latencies = [i["latency_s"] for i in json.loads((out / "generation" / "bf16.json").read_text())["images"]]
    measured = statistics.median(latencies)
    after_first = estimates[1]  # after two images
    assert measured / 2 <= after_first <= measured * 2, (after_first, latencies)

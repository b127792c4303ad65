"""Sample-size guidance (evalkit.check.power) against the closed form and against simulated paired data."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from check_fixtures import make_run
from evalkit.check import power
from evalkit.cli import main
from evalkit.io import atomic_write_json, read_json
from evalkit.rundir import RunDir, write_summary

Z = 1.959963984540054 + 0.8416212335729143  # z_{0.975} + z_{0.8}, from tables


def test_closed_form() -> None:
    assert power.detectable_difference(1.0, 100) == pytest.approx(Z / 10, rel=1e-9)
    assert power.prompts_needed(2.0, 0.5) == math.ceil((Z * 2.0 / 0.5) ** 2)
    assert power.prompts_needed(1.0, 0.0) is None and power.prompts_needed(0.0, 0.1) == 1
    assert power.guidance(1.0, 1, 0.1) is None  # one prompt has no spread


def _simulated_power(rng: np.random.Generator, n: int, sd: float, delta: float, reps: int = 4000) -> float:
    """Share of paired experiments (n prompts, per-prompt differences N(delta, sd)) in which a two-sided test at
    alpha 0.05 on the mean difference rejects 'no difference'."""
    base = rng.normal(0.3, 0.05, size=(reps, n))  # per-prompt values of one run
    cand = base + rng.normal(delta, sd, size=(reps, n))  # the other, paired by prompt
    d = cand - base
    z = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    return float(np.mean(np.abs(z) > 1.959963984540054))


def test_detectable_difference_has_the_stated_power_on_synthetic_pairs() -> None:
    rng = np.random.default_rng(0)
    n, sd = 60, 0.02
    d = power.detectable_difference(sd, n)
    assert _simulated_power(rng, n, sd, d) == pytest.approx(power.POWER, rel=0.05)


def test_prompts_needed_gives_the_stated_power_on_synthetic_pairs() -> None:
    rng = np.random.default_rng(1)
    sd, gap = 0.03, 0.012
    n = power.prompts_needed(sd, gap)
    assert n == math.ceil((Z * sd / gap) ** 2)
    assert _simulated_power(rng, n, sd, gap) == pytest.approx(power.POWER, rel=0.05)


def test_compare_reports_sample_size_of_the_per_prompt_differences(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    cand = make_run(tmp_path / "cand", shift=0.002)
    # Per-prompt differences with spread: the candidate's LPIPS moves by shift plus prompt-specific noise.
    rd = RunDir(cand)
    rec = read_json(rd.metrics_record("torchao-int8wo"))
    pp = rec["metrics"]["lpips_alex"]["per_prompt"]
    noise = np.random.default_rng(2).normal(0, 0.01, len(pp))
    for (pid, v), e in zip(list(pp.items()), noise):
        pp[pid] = v + float(e)
    vals = list(pp.values())
    rec["metrics"]["lpips_alex"]["mean"] = float(np.mean(vals))
    atomic_write_json(rd.metrics_record("torchao-int8wo"), rec)
    write_summary(cand)
    assert main(["compare", str(base), str(cand), "--markdown", "-", "-q"]) == 0
    props = {p.get("name"): p.get("value")
             for p in ET.parse(cand / "check" / "compare-junit.xml").getroot().iter("property")}
    bpp = read_json(RunDir(base).metrics_record("torchao-int8wo"))["metrics"]["lpips_alex"]["per_prompt"]
    diffs = np.array([pp[i] - bpp[i] for i in pp])
    key = "sample_size.torchao-int8wo.lpips_alex"
    expected = Z * diffs.std(ddof=1) / math.sqrt(len(diffs))
    assert float(props[f"{key}.detectable_difference"]) == pytest.approx(expected, rel=0.05)
    assert int(props[f"{key}.prompts_needed"]) == pytest.approx((Z * diffs.std(ddof=1) / diffs.mean()) ** 2, rel=0.05)
    assert props[f"{key}.resolvable"] == str(len(diffs) >= int(props[f"{key}.prompts_needed"])).lower()

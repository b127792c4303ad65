"""#26's done-when: the tiny study with a backend of each of ModelOpt, SDNQ and AutoRound (and BFL), a prequantized
checkpoint folder evalkit wrote in an earlier step given as `--backend mine=DIR`, and the example plugin's method:
all generated, scored, reported and gated (tests/quant_fixtures.py makes the study once a session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_evalkit
from evalkit.io import read_json
from quant_fixtures import STUDY_BACKENDS, plugin_env

ALL = ("bf16", *STUDY_BACKENDS, "mine")


@pytest.mark.slow
def test_every_backend_is_generated_scored_reported_and_gated(study: Path, rtn6_site: Path, tmp_path: Path) -> None:
    summary = read_json(study / "summary.json")
    assert set(summary["backends"]) == set(ALL)
    page = (study / "index.html").read_text(encoding="utf-8")
    for name in ALL:
        rec = read_json(study / "generation" / f"{name}.json")
        assert rec["status"] == "ok" and len(rec["images"]) == 2, (name, rec.get("reason"))
        if name == "bf16":
            continue
        assert rec["quantization"]["quantized_linear_count"]["transformer"] > 0, name
        lpips = read_json(study / "metrics" / f"{name}.json")["metrics"]["lpips_alex"]
        assert lpips["status"] == "ok" and lpips["mean"] > 0, name  # quantized: not the reference's pixels
        assert f'data-sort="{name}"' in page, name
    bounds = tmp_path / "bounds.toml"
    bounds.write_text("".join(f"[backends.{n}]\nlpips_alex_max = 0.9\n" for n in ALL if n != "bf16"), encoding="utf-8")
    env = plugin_env(rtn6_site)  # check reads the run's backends: the plugin's too
    r = run_evalkit("check", str(study), "--thresholds", str(bounds), env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    # the gate reads each backend's own numbers: a bound below what the checkpoint measured fails the gate
    mine = read_json(study / "metrics" / "mine.json")["metrics"]["lpips_alex"]["mean"]
    bounds.write_text(f"[backends.mine]\nlpips_alex_max = {mine / 2}\n", encoding="utf-8")
    r = run_evalkit("check", str(study), "--thresholds", str(bounds), env=env)
    assert r.returncode == 1 and "mine" in r.stdout + r.stderr

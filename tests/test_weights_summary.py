"""summary.json says when a run lacks its headline metrics for want of weights (issue 16, item 2).

Needs the change to evalkit/records.py and evalkit/score/summary.py proposed in helper WTS's report; until the
lead applies it, this file is skipped with that reason."""

from __future__ import annotations

import pytest
from metrics_fixtures import jpeg, make_run

from evalkit.cli import main
from evalkit.io import read_json
from evalkit.weights import store as w
from evalkit.records import Summary

pytestmark = pytest.mark.skipif("missing_headline_metrics" not in Summary.__annotations__,
                                reason="records.Summary has no missing_headline_metrics yet (WTS proposal)")


def test_summary_status_names_missing_headline_metrics(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path / "run", {"bf16": None, "mild": lambda a, i: jpeg(a, 70)}, n_prompts=2, size=64)
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(w.ENV_WEIGHTS_DIR, raising=False)
    installed = w.package_dir
    monkeypatch.setattr(w, "package_dir", lambda pkg: None)
    w._HASH_MEMO.clear()
    assert main(["score", str(run), "--metrics", "lpips_alex,ssim,lpips_vgg", "--quiet", "--workers", "1"]) == 0
    summary = read_json(run / "summary.json")
    assert summary["status"] == "missing headline metrics"
    assert summary["missing_headline_metrics"] == ["lpips_alex"]  # lpips_vgg is opt-in, not a headline
    assert read_json(run / "metrics" / "mild.json")["missing_headline_metrics"] == ["lpips_alex"]
    assert "missing headline metrics" in capsys.readouterr().err

    monkeypatch.setattr(w, "package_dir", installed)  # the packages again: the same run, rescored, is complete
    w._HASH_MEMO.clear()
    assert main(["score", str(run), "--metrics", "lpips_alex,ssim", "--quiet", "--workers", "1"]) == 0
    summary = read_json(run / "summary.json")
    assert summary["status"] == "ok" and summary["missing_headline_metrics"] == []

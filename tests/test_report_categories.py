"""Per-category breakdowns in the report (issue #16.5): a run whose prompts carry categories gets, per paired or
prompt metric, the mean per category and backend on the page and in tables/per_category.csv/.tex; a run without
categories gets none of it."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from fake_run import make_run

from evalkit.io import atomic_write_json, read_json
from evalkit.report.build import build_report

PROMPTS = ("a red apple on a table", "a blue car in the rain", "a portrait of an old man", "a cat wearing a hat")
CATEGORIES = ("Food & Drink", "Vehicles", "People", "Animals")  # & and _ must survive LaTeX


def _run(root: Path, categories: tuple[str | None, ...] | None) -> tuple[Path, dict[str, list[float]]]:
    make_run(root, prompts=PROMPTS, backends=("bf16", "torchao-int8wo", "quanto-int8"))
    manifest = read_json(root / "manifest.json")
    ids = [p["id"] for p in manifest["prompts"]]
    if categories is not None:
        for p, c in zip(manifest["prompts"], categories):
            if c is not None:
                p["category"] = c
        atomic_write_json(root / "manifest.json", manifest)
    values = {"torchao-int8wo": [0.10, 0.20, 0.30, 0.40], "quanto-int8": [0.5, 0.7, 0.9, 1.1]}
    for b, vals in values.items():
        per_prompt = dict(zip(ids, vals))
        rec = {"status": "ok", "mean": sum(vals) / len(vals), "ci_low": min(vals), "ci_high": max(vals), "n": len(vals),
               "per_prompt": per_prompt, "higher_is_better": False}
        meta = read_json(root / "generation" / f"{b}.json")  # the record exists: make_run wrote it
        assert meta["status"] == "ok"
        atomic_write_json(root / "metrics" / f"{b}.json", {"schema_version": 1, "backend": b, "reference_backend": "bf16",
                                                           "metrics_version": "2", "metrics": {"lpips_alex": rec}})
    return root, values


def test_category_means_on_page_and_in_csv_and_tex(tmp_path: Path) -> None:
    # Two prompts share "Food & Drink", one has none: that one is grouped as "(none)".
    root, values = _run(tmp_path / "run", ("Food & Drink", "Food & Drink", "People_1", None))
    build_report(root, figures=False, quiet=True)
    rows = list(csv.DictReader(io.StringIO((root / "tables" / "per_category.csv").read_text())))
    got = {(r["category"], r["backend"]): (float(r["mean"]), int(r["n"])) for r in rows if r["metric"] == "lpips_alex"}
    for b, vals in values.items():
        assert got[("Food & Drink", b)] == (sum(vals[:2]) / 2, 2)
        assert got[("People_1", b)] == (vals[2], 1)
        assert got[("(none)", b)] == (vals[3], 1)
    assert {r["backend"] for r in rows} == set(values)  # the reference has no value against itself
    tex = (root / "tables" / "per_category.tex").read_text()
    assert r"Food \& Drink" in tex and r"People\_1" in tex and "0.15" in tex
    html = (root / "index.html").read_text()
    assert 'id="per-category"' in html and "Food &amp; Drink" in html


def test_no_categories_no_breakdown(tmp_path: Path) -> None:
    root, _ = _run(tmp_path / "run", None)
    build_report(root, figures=False, quiet=True)
    assert not (root / "tables" / "per_category.csv").exists()
    assert 'id="per-category"' not in (root / "index.html").read_text()

"""Issue #12 consumers: the report and the gate read metrics from the registry and libraries from their records.

A toy metric of each kind, registered from a test-only module, is reported (table, figure), exported (CSV,
LaTeX) and gated with no change to any other file; a toy library record is ordered and coloured by its record;
optimum-quanto and torch (the names records use) sort and colour right.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

import report_toy_metrics
from check_fixtures import write
from evalkit.quantizers import registry as libraries
from evalkit.cli import main
from evalkit.quantizers.base import REFERENCE_COLOUR, Library
from evalkit.quantizers.registry import LIBRARIES
from evalkit.report import build_report
from evalkit.report.data import load_report_data
from evalkit.rundir import write_summary
from report_fixtures import synthetic_run


@pytest.fixture
def toy_metrics():
    report_toy_metrics.register()
    yield report_toy_metrics.TOY_SPECS
    report_toy_metrics.unregister()


def _add_toy_records(root: Path) -> None:
    m = json.loads((root / "manifest.json").read_text())
    ids = [p["id"] for p in m["prompts"]]
    for k, name in enumerate(b for b in m["backends"] if b != "bf16"):
        path = root / "metrics" / f"{name}.json"
        rec = json.loads(path.read_text())
        rec["metrics"].update(report_toy_metrics.toy_records(ids, 0.1 * (k + 1)))
        path.write_text(json.dumps(rec))
    write_summary(root)


def test_toy_metric_of_each_kind_is_reported_exported_and_gated(toy_metrics, tmp_path: Path) -> None:
    root = synthetic_run(tmp_path, backends=["bf16", "bnb-nf4", "torchao-int8wo"])
    _add_toy_records(root)
    index = build_report(root, quiet=True)
    page = index.read_text(encoding="utf-8")
    for spec in toy_metrics:
        assert spec.label in page, spec.name  # the registry's label, not the key
    # The registry's facts: direction, unit, digits.
    assert re.search(r"Toy paired distance <span class=\"unit\">tu</span>\s*<span class=\"dir\">↓ lower is better", page)
    assert re.search(r"Toy alignment\s*<span class=\"dir\">↑ higher is better", page)
    for spec in toy_metrics:
        assert (root / "figures" / f"quality_vs_memory_{spec.name}.svg").exists(), spec.name
    rows = list(csv.DictReader((root / "tables" / "summary.csv").open()))
    bnb = next(r for r in rows if r["backend"] == "bnb-nf4")
    assert float(bnb["toy_paired"]) > 0 and float(bnb["toy_set"]) == pytest.approx(2.0)
    tex = (root / "tables" / "quality.tex").read_text()
    assert "Toy paired distance (tu) $\\downarrow$" in tex and "Toy alignment $\\uparrow$" in tex
    # digits=1 from the registry: the prompt metric's table cell has one decimal.
    assert re.search(r"<td[^>]*>2[0-9]\.\d <span", page)

    th = write(tmp_path / "t.toml", "[default]\ntoy_paired_max = 0.5\ntoy_prompt_min = 10\ntoy_set_max = 3.5\n")
    assert main(["check", str(root), "-t", str(th), "-q"]) == 0
    th = write(tmp_path / "t2.toml", "[default]\ntoy_set_max = 2.5\n")
    assert main(["check", str(root), "-t", str(th), "-q"]) == 1  # torchao's toy_set is 3.0


def test_unknown_metric_of_an_old_run_shows_under_its_own_name(tmp_path: Path) -> None:
    root = synthetic_run(tmp_path, backends=["bf16", "bnb-nf4"])
    path = root / "metrics" / "bnb-nf4.json"
    rec = json.loads(path.read_text())
    rec["metrics"]["retired_metric"] = {"status": "ok", "mean": 0.5, "n": 3, "higher_is_better": True}
    path.write_text(json.dumps(rec))
    data = load_report_data(root)
    info = next(m for m in data.metrics if m.key == "retired_metric")
    assert info.label == "retired metric" and info.higher_is_better is True and info.kind == "unknown"
    assert "retired metric" in build_report(root, quiet=True, figures=False).read_text()


def test_record_library_names_sort_and_colour_from_their_records(tmp_path: Path) -> None:
    # Records say "optimum-quanto" and "torch"; a table of "quanto"/"none" once sorted them last with shifted colours.
    root = synthetic_run(tmp_path, backends=["bf16", "gguf-q4_1", "quanto-int8", "bnb-nf4", "torchao-int8wo"])
    data = load_report_data(root)
    assert [b.name for b in data.backends] == ["bf16", "bnb-nf4", "torchao-int8wo", "quanto-int8", "gguf-q4_1"]
    from evalkit.report.figures import _styles

    styles = _styles(data)
    assert styles["bf16"]["color"] == REFERENCE_COLOUR
    for b in data.backends[1:]:
        assert styles[b.name]["color"] == LIBRARIES[b.library].colour, b.name
    assert data.backends[3].library == "optimum-quanto" and data.backends[0].library == "torch"


def test_toy_library_record_is_ordered_and_coloured(tmp_path: Path, monkeypatch) -> None:
    toy = Library("toylib", "toylib", "toylib", "Toy library", 0, "#123456")
    monkeypatch.setitem(libraries._libraries, "toylib", toy)  # one record: what adding a library means
    root = synthetic_run(tmp_path, backends=["bf16", "bnb-nf4", "toy-int3"])
    gen = root / "generation" / "toy-int3.json"
    rec = json.loads(gen.read_text())
    rec["recipe"]["library"] = "toylib"
    gen.write_text(json.dumps(rec))
    data = load_report_data(root)
    assert [b.name for b in data.backends] == ["bf16", "toy-int3", "bnb-nf4"]  # order 0: before bitsandbytes (1)
    build_report(root, quiet=True)
    svg = (root / "figures" / "quality_vs_memory_lpips_alex.svg").read_text()
    assert "#123456" in svg

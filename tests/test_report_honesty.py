"""The report presents what ran honestly (issue #13.7-9, #13.1 report side): partial quantization marked
everywhere and kept off cards/fronts, CPU memory by footprint, noisy latencies flagged, no unfounded "best",
indicative values, images left out, stale outputs removed, CSV cells that cannot run as formulas."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Callable

import pytest

from evalkit.cli import main
from evalkit.errors import EvalkitError
from evalkit.report import build_report
from evalkit.report.summary import best_backend
from evalkit.report.data import load_report_data
from evalkit.report.tables import csv_cell, to_csv
from report_fixtures import synthetic_run

PARTIAL = "transformer left in bf16 on CPU: diffusers' bitsandbytes quantizer needs a GPU"


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = synthetic_run(tmp_path_factory.mktemp("partial"), partial={"bnb-nf4": PARTIAL},
                         latency_spread={"torchao-int8wo": 3.0})
    build_report(root, quiet=True)
    return root


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open(encoding="utf-8")))


def test_partial_backend_is_marked_everywhere(partial_run: Path) -> None:
    page = (partial_run / "index.html").read_text()
    assert page.count("† partial") >= 2  # memory/speed table and quality table
    assert PARTIAL.replace("'", "&#39;") in page  # the reason, in Problems
    row = next(r for r in _csv(partial_run / "tables" / "summary.csv") if r["backend"] == "bnb-nf4")
    assert row["partial_reason"] == PARTIAL
    for tex in ("performance.tex", "quality.tex"):
        text = (partial_run / "tables" / tex).read_text()
        assert "bnb-nf4$^\\dagger$" in text and "Quantized less than its name says" in text, tex
    svg = (partial_run / "figures" / "quality_vs_memory_lpips_alex.svg").read_text()
    assert "bnb-nf4 †" in svg or "bnb-nf4 †" in svg.replace("&#8224;", "†")


def test_partial_backend_is_off_cards_and_fronts_unless_asked(partial_run: Path, tmp_path: Path) -> None:
    from evalkit.report.summary import highlights as _highlights

    data = load_report_data(partial_run)
    least = next(h for h in _highlights(data) if h["title"] == "Least memory")
    assert least["backend"] != "bnb-nf4"  # bnb-nf4 has the smallest footprint, for the wrong reason
    page = (partial_run / "index.html").read_text()
    caption = page.split("Pareto front:", 1)[1].split(".", 1)[0]
    assert "bnb-nf4" not in caption
    included = load_report_data(partial_run, include_partial=True)
    assert next(h for h in _highlights(included) if h["title"] == "Least memory")["backend"] == "bnb-nf4"
    assert main(["report", str(partial_run), "--include-partial", "--no-figures"]) == 0
    assert "Included in the summary cards and Pareto fronts" in (partial_run / "index.html").read_text()
    build_report(partial_run, quiet=True, figures=False)  # back to the default for the other tests


def test_partial_reason_read_from_summary_then_record_then_note(tmp_path: Path) -> None:
    root = synthetic_run(tmp_path, backends=["bf16", "bnb-nf4", "bnb-8bit"])
    gen = root / "generation" / "bnb-8bit.json"
    rec = json.loads(gen.read_text())
    rec["quantization"]["note"] = PARTIAL  # an older run: only the note says it
    gen.write_text(json.dumps(rec))
    data = load_report_data(root)
    views = {b.name: b for b in data.backends}
    assert views["bnb-8bit"].partial_reason == PARTIAL and not views["bnb-nf4"].partial
    views["bnb-nf4"].summary_entry["partial_reason"] = "from summary.json"
    assert views["bnb-nf4"].partial_reason == "from summary.json"


def test_cpu_memory_uses_footprint_and_noisy_latency_is_flagged(partial_run: Path) -> None:
    data = load_report_data(partial_run)
    assert data.memory_axis == "footprint"
    noisy = {b.name for b in data.backends if b.latency_noisy}
    assert noisy == {"torchao-int8wo"}
    page = (partial_run / "index.html").read_text()
    assert page.count(">noisy</span>") == 1
    row = next(r for r in _csv(partial_run / "tables" / "summary.csv") if r["backend"] == "torchao-int8wo")
    assert row["latency_noisy"] == "True"


def test_no_best_when_intervals_overlap(tmp_path: Path) -> None:
    root = synthetic_run(tmp_path, backends=["bf16", "bnb-nf4", "torchao-int8wo", "gguf-q4_1"])
    data = load_report_data(root)
    m = next(x for x in data.metrics if x.key == "lpips_alex")
    recs = {b.name: b.metrics["lpips_alex"] for b in data.backends if b.name != "bf16"}
    for name, (mean, lo, hi) in {"bnb-nf4": (0.30, 0.25, 0.35), "torchao-int8wo": (0.10, 0.08, 0.12),
                                 "gguf-q4_1": (0.20, 0.15, 0.25)}.items():
        recs[name].update(mean=mean, ci_low=lo, ci_high=hi)
    assert best_backend(data, m) == "torchao-int8wo"  # clear of every other interval
    recs["gguf-q4_1"].update(ci_low=0.11)
    assert best_backend(data, m) is None  # overlaps the best one: no claim
    recs["gguf-q4_1"].update(ci_low=0.15)
    recs["torchao-int8wo"].update(indicative=True)
    assert best_backend(data, m) is None
    fid = next(x for x in data.metrics if x.key == "fid")
    assert best_backend(data, fid) is None  # one number, no interval: nothing to back a "best"


def test_indicative_value_is_shown_as_such(tmp_path: Path) -> None:
    root = synthetic_run(tmp_path, backends=["bf16", "bnb-nf4"])
    path = root / "metrics" / "bnb-nf4.json"
    rec = json.loads(path.read_text())
    rec["metrics"]["fid"]["indicative"] = True
    rec["metrics"]["kid"] = {"status": "skipped", "reason": "KID needs more images than its subset size (n=3)"}
    path.write_text(json.dumps(rec))
    page = build_report(root, quiet=True, figures=False).read_text()
    assert "indicative only" in page and "KID needs more images than its subset size" in page
    assert "$^\\S$" in (root / "tables" / "quality.tex").read_text()


def test_images_left_out_are_listed(tmp_path: Path) -> None:
    """Score's metric record lists an image it left out; the report (which builds the summary in memory from the
    records, writing none of them) lists it."""
    root = synthetic_run(tmp_path, backends=["bf16", "bnb-nf4"])
    path = root / "metrics" / "bnb-nf4.json"
    rec = json.loads(path.read_text())
    rec["left_out"] = [{"prompt_id": "p00", "path": "images/bnb-nf4/p00_s1.png",
                        "reason": "sha256 differs from its record"}]
    path.write_text(json.dumps(rec))
    page = build_report(root, quiet=True, figures=False).read_text()
    assert "Images left out" in page and "images/bnb-nf4/p00_s1.png" in page and "sha256 differs" in page


def test_stale_outputs_removed_user_files_kept(tmp_path: Path) -> None:
    root = synthetic_run(tmp_path, backends=["bf16", "bnb-nf4", "torchao-int8wo"])
    build_report(root, quiet=True)
    fid = [root / "figures" / f"quality_vs_{k}_fid.{e}" for k in ("memory", "latency") for e in ("svg", "pdf", "png")]
    assert all(p.exists() for p in fid)
    user = root / "figures" / "my_notes.png"
    user.write_bytes(b"mine")
    for b in ("bnb-nf4", "torchao-int8wo"):  # rescored without FID (e.g. its weights went missing)
        path = root / "metrics" / f"{b}.json"
        rec = json.loads(path.read_text())
        del rec["metrics"]["fid"]
        path.write_text(json.dumps(rec))
    # A tampered list must not reach outside figures/ and tables/.
    listing = root / ".evalkit-report-outputs.json"
    files = json.loads(listing.read_text())["files"]
    listing.write_text(json.dumps({"files": files + ["manifest.json", "figures/../summary.json"]}))
    build_report(root, quiet=True)
    assert not any(p.exists() for p in fid)
    assert user.read_bytes() == b"mine"
    assert (root / "manifest.json").exists() and (root / "summary.json").exists()
    assert (root / "figures" / "quality_vs_memory_lpips_alex.svg").exists()


def test_csv_cells_cannot_run_as_formulas() -> None:
    assert csv_cell("=HYPERLINK(\"http://x\")") == "'=HYPERLINK(\"http://x\")"
    for text in ("+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"):
        assert csv_cell(text).startswith("'"), text
    assert csv_cell(-0.5) == -0.5 and csv_cell("-0.5") == "-0.5" and csv_cell("bnb-nf4") == "bnb-nf4"
    rows = list(csv.reader(io.StringIO(to_csv([{"reason": "=1+2", "value": -3.25, "n": None}]))))
    assert rows[1] == ["'=1+2", "-3.25", ""]


def test_hostile_reason_in_summary_csv(tmp_path: Path) -> None:
    root = synthetic_run(tmp_path, backends=["bf16", "bnb-nf4"], failed={"bnb-nf4": "=cmd|'/C calc'!A0"})
    build_report(root, quiet=True, figures=False)
    row = next(r for r in _csv(root / "tables" / "summary.csv") if r["backend"] == "bnb-nf4")
    assert row["reason"] == "'=cmd|'/C calc'!A0"


def _mangled(field: str, value: object) -> Callable[[str], str]:
    """The record as the run wrote it, with `field` (dotted) set to `value`."""
    def mangle(text: str) -> str:
        rec = json.loads(text)
        *path, last = field.split(".")
        node = rec
        for key in path:
            node = node[key]
        node[last] = value
        return json.dumps(rec)
    return mangle


@pytest.mark.parametrize("target, mangle, fragment", [
    ("manifest.json", lambda _: "[]", "manifest must be a JSON object"),
    ("generation/bnb-nf4.json", lambda _: "[1]", "record must be a JSON object, found list"),
    ("generation/bnb-nf4.json", _mangled("images", {"a": 1}), "record.images must be a JSON list, found dict"),
    ("metrics/bnb-nf4.json", _mangled("metrics.ssim", 0.9), "record.metrics.ssim must be a JSON object, found float"),
    ("metrics/bnb-nf4.json", _mangled("metrics.ssim.per_prompt", [1]),
     "record.metrics.ssim.per_prompt must be a JSON object, found list"),
    ("metrics/bnb-nf4.json", lambda _: '{"metrics": ', "invalid JSON"),
])
def test_mangled_record_is_a_one_line_error(tmp_path: Path, capsys, target, mangle, fragment) -> None:
    """Through the run directory's typed readers: one line naming the file and the field, exit 2."""
    root = synthetic_run(tmp_path, backends=["bf16", "bnb-nf4"])
    (root / target).write_text(mangle((root / target).read_text()))
    with pytest.raises(EvalkitError, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        load_report_data(root)
    assert main(["report", str(root)]) == 2
    err = capsys.readouterr().err
    assert target.split("/")[-1] in err and "Traceback" not in err

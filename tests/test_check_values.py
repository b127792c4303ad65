"""check and compare decide from values (Verdict, Outcome, Finding), never from the words they render (#23.3):
rewording every label leaves every exit code, count and section where it was."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from check_fixtures import make_run, write
from evalkit.check import results
from evalkit.check.results import CaseResult, Finding, Outcome, Report, Verdict
from evalkit.cli import main

# Every label swapped for a word that means its opposite, or that the old code searched cells for.
REWORDED_OUTCOMES = {Outcome.PASS: "FAIL regression", Outcome.FAIL: "pass", Outcome.SKIPPED: "regression"}
REWORDED_FINDINGS = {f: ("fine" if f.is_regression else "⚠ regression") for f in Finding}


@pytest.fixture
def reworded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "OUTCOME_LABELS", REWORDED_OUTCOMES)
    monkeypatch.setattr(results, "FINDING_LABELS", REWORDED_FINDINGS)


def test_verdict_values_are_the_exit_codes() -> None:
    assert [(v.name, v.exit_code) for v in Verdict] == [("PASS", 0), ("FAIL", 1), ("ERROR", 2)]
    assert str(Verdict.FAIL) == "FAIL"


def test_a_report_decides_from_outcomes_not_cells() -> None:
    # Cells that say the opposite of the outcome: the outcome wins everywhere.
    r = Report("compare", "t", ("a", "verdict"), [
        CaseResult("x", "m", Outcome.PASS, ("regression FAIL",), finding=Finding.NO_CHANGE),
        CaseResult("y", "m", Outcome.PASS, ("fine",), finding=Finding.REGRESSION),
    ])
    assert (r.verdict, r.exit_code, r.flagged, r.n_failed) == (Verdict.PASS, 0, 1, 0)
    assert r.verdict_text == "PASS WITH REGRESSIONS"
    assert results.error_report("check", "t", "bad file").exit_code == 2


def _compare_outputs(base: Path, cand: Path, capsys) -> tuple[int, str, str, ET.Element]:
    rc = main(["compare", str(base), str(cand), "--fail-on-regression"])
    out = capsys.readouterr().out
    md = (cand / "check" / "compare-summary.md").read_text()
    return rc, out, md, ET.parse(cand / "check" / "compare-junit.xml").getroot()


def test_rewording_labels_changes_no_compare_verdict(tmp_path: Path, capsys, monkeypatch) -> None:
    base = make_run(tmp_path / "base")
    cand = make_run(tmp_path / "cand", shift=0.02)  # 6 regressions (3 metrics x 2 backends)
    rc, out, md, root = _compare_outputs(base, cand, capsys)
    monkeypatch.setattr(results, "OUTCOME_LABELS", REWORDED_OUTCOMES)
    monkeypatch.setattr(results, "FINDING_LABELS", REWORDED_FINDINGS)
    rc2, out2, md2, root2 = _compare_outputs(base, cand, capsys)
    assert rc == rc2 == 1
    assert "⚠ regression" in out and "fine" in out2  # the words did change ...
    for text in (md, md2):  # ... the counts and sections did not
        assert "6 significant regression(s)" in text.splitlines()[0] and "### Regressions" in text
    assert root.get("failures") == root2.get("failures") == "6"
    # Identical runs: every cell now reads "⚠ regression", yet nothing is flagged.
    same = make_run(tmp_path / "same")
    rc3, out3, md3, root3 = _compare_outputs(base, same, capsys)
    assert rc3 == 0 and "⚠ regression" in out3 and "no significant regression" in md3.splitlines()[0]
    assert "### Regressions" not in md3 and root3.get("failures") == "0"


def test_rewording_labels_changes_no_check_verdict(tmp_path: Path, capsys, reworded) -> None:
    run = make_run(tmp_path / "run")
    assert main(["check", str(run), "-t", str(write(tmp_path / "ok.toml", "[default]\nssim_min = 0.5\n"))]) == 0
    out = capsys.readouterr().out
    assert "FAIL regression" in out and out.rstrip().splitlines()[-2].startswith("PASS: 2 passed, 0 failed")
    th = write(tmp_path / "bad.toml", "[default]\nssim_min = 0.99\n")
    assert main(["check", str(run), "-t", str(th), "-q"]) == 1
    assert ET.parse(run / "check" / "junit.xml").getroot().get("failures") == "2"

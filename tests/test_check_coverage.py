"""Nothing leaves the gate silently (#23.3 item 2): a partially quantized backend is marked † in the terminal, the
Markdown and the JUnit; a backend no bound covers and a section for a backend the run lacks are named in every
output (failing on request); a prompt missing from a generation record is said in check and is a mismatch in
compare; compare --fail-on-regression fails when the candidate lacks a backend the base has."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path


from check_fixtures import make_run, manifest, write
from evalkit.cli import main
from evalkit.rundir import write_summary

REPO = Path(__file__).resolve().parents[1]
REASON = "transformer left in bf16 on CPU: diffusers' bitsandbytes quantizer needs a GPU"


def outputs(run: Path, prefix: str = "") -> tuple[str, ET.Element]:
    return (run / "check" / f"{prefix}summary.md").read_text(), ET.parse(run / "check" / f"{prefix}junit.xml").getroot()


def make_partial(run: Path, backend: str = "bnb-nf4") -> None:
    rec = run / "generation" / f"{backend}.json"
    data = json.loads(rec.read_text())
    data["quantization"]["partial_reason"] = REASON
    rec.write_text(json.dumps(data))
    write_summary(run)


def suite(root: ET.Element, name: str) -> ET.Element:
    return next(s for s in root.iter("testsuite") if s.get("name") == name)


def test_partial_backend_is_marked_in_every_check_output(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run")
    make_partial(run)
    assert main(["check", str(run), "-t", str(write(tmp_path / "t.toml", "[default]\nssim_min = 0.5\n"))]) == 0
    out = capsys.readouterr().out
    assert "bnb-nf4 †" in out and f"† bnb-nf4: quantized less than its name says on this device: {REASON}" in out
    assert "torchao-int8wo †" not in out
    md, root = outputs(run)
    assert "| bnb-nf4 † | `ssim_min` |" in md and "- † bnb-nf4: quantized less" in md
    props = {p.get("name"): p.get("value") for p in suite(root, "evalkit.check.bnb-nf4").iter("property")}
    assert props["partial_reason"] == REASON
    assert "† partially quantized" in next(suite(root, "evalkit.check.bnb-nf4").iter("system-out")).text
    assert "partial_reason" not in {p.get("name") for p in suite(root, "evalkit.check.torchao-int8wo").iter("property")}


def test_partial_backend_is_marked_in_compare(tmp_path: Path, capsys) -> None:
    base, cand = make_run(tmp_path / "base"), make_run(tmp_path / "cand")
    make_partial(cand)
    assert main(["compare", str(base), str(cand)]) == 0
    out = capsys.readouterr().out
    assert "bnb-nf4 †" in out and "base: fully quantized; candidate: transformer left in bf16" in out
    md, root = outputs(cand, "compare-")
    assert "| bnb-nf4 † |" in md and "† bnb-nf4" in md
    assert "partial_reason" in {p.get("name") for p in suite(root, "evalkit.compare.bnb-nf4").iter("property")}


def test_uncovered_backend_is_named_everywhere_and_fails_on_request(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run")
    th = write(tmp_path / "t.toml", '[backends."bnb-nf4"]\nssim_min = 0.5\n')  # says nothing about torchao-int8wo
    assert main(["check", str(run), "-t", str(th)]) == 0
    out = capsys.readouterr().out
    assert "SKIPPED coverage (torchao-int8wo): no bound in t.toml applies to torchao-int8wo" in out
    md, root = outputs(run)
    assert "`coverage` **torchao-int8wo**" in md and "--require-coverage" in md
    case = next(c for c in root.iter("testcase") if c.get("name") == "coverage")
    assert case.get("classname") == "evalkit.check.torchao-int8wo" and case.find("skipped") is not None
    assert "bf16" not in {c.get("classname").rsplit(".", 1)[1] for c in root.iter("testcase")}  # the reference is not owed a bound
    assert main(["check", str(run), "-t", str(th), "-q", "--require-coverage"]) == 1
    assert "not judged: torchao-int8wo" in capsys.readouterr().err  # -q prints warnings only: this is one
    md, root = outputs(run)
    assert "`coverage` **torchao-int8wo**" in md.split("### Failures")[1] and root.get("failures") == "1"


def test_section_for_a_backend_the_run_lacks_is_listed_not_an_error(tmp_path: Path, capsys) -> None:
    """#24.4: one thresholds file serves a run with fewer backends (the example names bnb-nf4 and torchao-int8wo)."""
    run = make_run(tmp_path / "run", manifest(backends=("bf16", "torchao-int8wo")))
    th = write(tmp_path / "t.toml", '[default]\nssim_min = 0.5\n[backends."bnb-nf4"]\nssim_min = 0.9\n')
    assert main(["check", str(run), "-t", str(th)]) == 0
    out = capsys.readouterr().out
    assert "SKIPPED in_run (bnb-nf4)" in out and "t.toml:3" in out
    md, root = outputs(run)
    assert "`in_run` **bnb-nf4**" in md
    assert suite(root, "evalkit.check.bnb-nf4").find("testcase/skipped") is not None
    assert main(["check", str(run), "-t", str(th), "-q", "--require-backends"]) == 1
    assert "bounds backend(s) this run does not have, not judged: bnb-nf4" in capsys.readouterr().err
    # The shipped example on a two-backend run: judged, never "backend 'bnb-nf4' is not in this run" (exit 2).
    assert main(["check", str(run), "-t", str(REPO / "thresholds.example.toml"), "-q"]) == 1
    assert "in_run" in outputs(run)[0]
    # A name that is no backend at all is still a typo (exit 2).
    typo = write(tmp_path / "typo.toml", '[backends."bnb-nf44"]\nssim_min = 0.9\n')
    assert main(["check", str(run), "-t", str(typo), "-q"]) == 2
    assert "Did you mean" in capsys.readouterr().err


def _drop_prompt(run: Path, backend: str) -> str:
    rec = run / "generation" / f"{backend}.json"
    data = json.loads(rec.read_text())
    gone = data["images"].pop(3)
    rec.write_text(json.dumps(data))
    write_summary(run)
    return gone["prompt_id"]


def test_prompt_missing_from_a_generation_record_is_said_in_check(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run")
    pid = _drop_prompt(run, "bnb-nf4")
    th = write(tmp_path / "t.toml", "[default]\nssim_min = 0.5\n")
    assert main(["check", str(run), "-t", str(th)]) == 0
    out = capsys.readouterr().out
    assert f"generation/bnb-nf4.json has no image for 1 of the manifest's 12 prompts ({pid})" in out
    md, root = outputs(run)
    assert pid in md
    props = {p.get("name"): p.get("value") for p in suite(root, "evalkit.check.bnb-nf4").iter("property")}
    assert props["missing_prompts"] == pid
    assert main(["check", str(run), "-t", str(th), "-q", "--require-coverage"]) == 1
    failed = [c for c in outputs(run)[1].iter("testcase") if c.find("failure") is not None]
    assert [(c.get("classname"), c.get("name")) for c in failed] == [("evalkit.check.bnb-nf4", "prompts")]


def test_prompt_missing_from_a_generation_record_is_a_compare_mismatch(tmp_path: Path, capsys) -> None:
    base, cand = make_run(tmp_path / "base"), make_run(tmp_path / "cand")
    pid = _drop_prompt(cand, "torchao-int8wo")
    assert main(["compare", str(base), str(cand), "-q"]) == 2
    err = capsys.readouterr().err
    assert "not comparable" in err and f"candidate generation/torchao-int8wo.json has no image for 1 of its 12 prompts ({pid})" in err
    assert main(["compare", str(base), str(cand), "-q", "--force"]) == 0
    assert "FORCED" in capsys.readouterr().err


def test_compare_fails_when_the_candidate_lacks_a_backend(tmp_path: Path, capsys) -> None:
    base = make_run(tmp_path / "base")
    cand = make_run(tmp_path / "cand", manifest(backends=("bf16", "torchao-int8wo")))
    assert main(["compare", str(base), str(cand)]) == 0  # report only: flagged, exit 0
    out = capsys.readouterr().out
    assert "PASS WITH REGRESSIONS" in out and "bnb-nf4 is in the base run but not in the candidate" in out
    assert main(["compare", str(base), str(cand), "-q", "--fail-on-regression"]) == 1
    md, root = outputs(cand, "compare-")
    assert "**FAIL (1 significant regression(s))**" in md.splitlines()[0]
    f = next(root.iter("failure"))
    assert "not in the candidate" in f.get("message")
    assert suite(root, "evalkit.compare.bnb-nf4").get("failures") == "1"

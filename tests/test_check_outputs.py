"""check and compare write their outputs only after the inputs are validated, atomically, and never over a file
evalkit did not write (#23.3 item 4): a user's file at --junit/--markdown survives every exit code."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from check_fixtures import make_run, write
from evalkit.check.outputs import MARKER, why_not_ours
from evalkit.cli import main

GOOD = "[default]\nssim_min = 0.5\n"
USER_TEXT = "# my release notes\nDo not lose me.\n"


def check(run: Path, th: Path, *extra: str) -> int:
    return main(["check", str(run), "-t", str(th), "-q", *extra])


@pytest.mark.parametrize("bounds, rc", [(GOOD, 0), ("[default]\nssim_min = 0.99\n", 1), ("[default\n", 2)])
@pytest.mark.parametrize("flag", ["--junit", "--markdown"])
def test_a_users_file_at_an_output_path_survives_every_exit_code(tmp_path: Path, capsys, bounds, rc, flag) -> None:
    run = make_run(tmp_path / "run")
    mine = write(tmp_path / "notes.md", USER_TEXT)
    before = os.stat(mine)
    assert check(run, write(tmp_path / "t.toml", bounds), flag, str(mine)) == 2
    err = capsys.readouterr().err
    assert f"{mine}: refusing to overwrite" in err and "did not write" in err and len(err.strip().splitlines()) == 1
    assert mine.read_text() == USER_TEXT and os.stat(mine).st_mtime_ns == before.st_mtime_ns
    # Refused before any input is read: the other output was not written either.
    assert not (run / "check").exists()


def test_evalkit_outputs_are_replaced_and_carry_the_marker(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    junit, md = tmp_path / "out" / "j.xml", tmp_path / "out" / "s.md"
    args = ("--junit", str(junit), "--markdown", str(md))
    assert check(run, write(tmp_path / "t.toml", GOOD), *args) == 0
    assert MARKER in junit.read_text() and MARKER in md.read_text()
    assert md.read_text().startswith("## ")  # the verdict stays the first line a PR shows
    ET.parse(junit)  # the marker is an XML comment: still a valid document
    assert check(run, write(tmp_path / "f.toml", "[default]\nssim_min = 0.99\n"), *args) == 1
    assert "**FAIL**" in md.read_text() and ET.parse(junit).getroot().get("failures") == "2"


def test_an_error_never_deletes_and_leaves_an_error_verdict(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    assert check(run, write(tmp_path / "t.toml", GOOD)) == 0
    assert check(run, write(tmp_path / "bad.toml", "[default]\nssim_min = 'x'\n")) == 2
    md = (run / "check" / "summary.md").read_text()
    assert "**ERROR**" in md and "ssim_min must be a number" in md and MARKER in md
    assert next(ET.parse(run / "check" / "junit.xml").getroot().iter("error")) is not None


def test_an_error_creates_no_folder(tmp_path: Path) -> None:
    # A mistyped run path does not grow RUN/check/ (nor the run directory itself).
    assert check(tmp_path / "no-such-run", write(tmp_path / "t.toml", GOOD)) == 2
    assert not (tmp_path / "no-such-run").exists()
    run = make_run(tmp_path / "run")
    assert check(run, write(tmp_path / "bad.toml", "[default\n")) == 2
    assert not (run / "check").exists()


def test_empty_file_and_outputs_of_older_evalkits_are_replaced(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    empty = tmp_path / "empty.xml"
    empty.touch()  # as `mktemp` leaves it
    legacy = write(tmp_path / "old.md", "## ✅ evalkit check: old-run: **PASS**\n\n4 passed\n")
    assert check(run, write(tmp_path / "t.toml", GOOD), "--junit", str(empty), "--markdown", str(legacy)) == 0
    assert MARKER in empty.read_text() and "old-run" not in legacy.read_text()


@pytest.mark.parametrize("make, why", [
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.symlink_to(write(p.parent / "target.xml", "<x/>")), "symbolic link"),
    (lambda p: write(p, "<?xml version='1.0'?>\n<testsuites name=\"pytest\"/>\n"), "did not write"),
])
def test_things_evalkit_did_not_write_are_refused(tmp_path: Path, make, why: str) -> None:
    path = tmp_path / "out.xml"
    make(path)
    assert why in (why_not_ours(path) or "")


def test_both_outputs_at_one_path_is_refused(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run")
    same = str(tmp_path / "x")
    assert check(run, write(tmp_path / "t.toml", GOOD), "--junit", same, "--markdown", same) == 2
    assert "both name" in capsys.readouterr().err and not Path(same).exists()


def test_compare_refuses_a_users_file_too(tmp_path: Path, capsys) -> None:
    base, cand = make_run(tmp_path / "base"), make_run(tmp_path / "cand")
    mine = write(tmp_path / "report.xml", USER_TEXT)
    assert main(["compare", str(base), str(cand), "-q", "--junit", str(mine)]) == 2
    assert mine.read_text() == USER_TEXT and "refusing to overwrite" in capsys.readouterr().err

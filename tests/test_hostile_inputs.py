"""Inputs an attacker or a careless user hands evalkit (#23 item 7): each gets one line and exit 2, never a
traceback, never exit 1 (which the gate uses for "a bound was violated"), and nothing outside the run directory is
written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evalkit.cli import main

REPO = Path(__file__).resolve().parents[1]


def _one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    rc = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("evalkit: error:")]
    assert rc == 2 and len(err) == 1, (rc, err)
    return err[0]


@pytest.mark.parametrize("name, text, expect", [
    ("deep.json", "[" * 100_000, "nested too deeply"),
    ("deep.jsonl", "[" * 100_000 + "\n", "nested too deeply"),
    ("cut.json", '{"annotations"', "truncated"),
])
def test_a_malformed_prompt_set_is_one_line(tmp_path: Path, capsys, name: str, text: str, expect: str) -> None:
    f = tmp_path / name
    f.write_text(text, encoding="utf-8")
    line = _one_line_exit_2(["generate", str(f), "--model", "tiny", "--out", str(tmp_path / "run")], capsys)
    assert name in line and expect in line
    assert not (tmp_path / "run").exists()


def test_a_mangled_lock_file_is_judged_not_crashed_on(tmp_path: Path, three_prompts: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text("{}", encoding="utf-8")
    (run / ".evalkit.lock").write_text('{"pid": "abc", "host": 5, "stage": [], "started_utc": 0, "token": 1}')
    from evalkit.runlock import LOCK_NAME, holder_of

    assert LOCK_NAME == ".evalkit.lock" and holder_of(run) is None  # not a lock evalkit wrote: no holder
    from evalkit.runlock import UNREADABLE_LOCK_GRACE_S, RunLockError, acquire

    with pytest.raises(RunLockError, match="lock file is still being written"):  # young: maybe a writer mid-write
        with acquire(run, "score"):
            pass
    old = time.time() - UNREADABLE_LOCK_GRACE_S - 5
    os.utime(run / ".evalkit.lock", (old, old))
    with acquire(run, "score") as me:  # old: stale, taken over
        assert holder_of(run)["token"] == me.token


def _scored_tiny_run(tmp_path: Path, three_prompts: Path) -> Path:
    run = tmp_path / "run"
    assert main(["generate", str(three_prompts), "--model", "tiny", "--backends", "bf16", "--height", "32",
                 "--width", "32", "--steps", "2", "--warmup", "0", "--out", str(run)]) == 0
    return run


def test_a_name_in_the_manifest_that_leaves_its_folder_is_refused(tmp_path: Path, three_prompts: Path,
                                                                   capsys) -> None:
    run = _scored_tiny_run(tmp_path, three_prompts)
    m = json.loads((run / "manifest.json").read_text())
    m["backends"].append("../../outside")
    (run / "manifest.json").write_text(json.dumps(m))
    line = _one_line_exit_2(["score", str(run), "--metrics", "psnr", "--quiet"], capsys)
    assert "../../outside" in line and "not a plain name" in line
    assert not (tmp_path.parent / "outside.json").exists()


def test_a_link_out_of_the_run_directory_is_refused_before_any_write(tmp_path: Path, three_prompts: Path,
                                                                     capsys) -> None:
    run = _scored_tiny_run(tmp_path, three_prompts)
    elsewhere = tmp_path / "users-photos"
    elsewhere.mkdir()
    assert not (run / "metrics").exists()  # generate alone: no metrics folder yet
    (run / "metrics").symlink_to(elsewhere, target_is_directory=True)
    line = _one_line_exit_2(["score", str(run), "--metrics", "psnr", "--quiet"], capsys)
    assert "symbolic link out of the run directory" in line and "metrics" in line
    assert list(elsewhere.iterdir()) == []
    # generate refuses it too, before writing a byte (a backend to add: an unchanged rerun writes nothing at all)
    line = _one_line_exit_2(["generate", str(three_prompts), "--model", "tiny", "--backends", "bf16,fp8-layerwise", "--height",
                             "32", "--width", "32", "--steps", "2", "--warmup", "0", "--out", str(run)], capsys)
    assert "symbolic link out of the run directory" in line and list(elsewhere.iterdir()) == []


def test_an_append_never_follows_a_link(tmp_path: Path) -> None:
    from evalkit.errors import WriteError
    from evalkit.io import append_jsonl

    target = tmp_path / "users-file.txt"
    target.write_text("keep me\n")
    link = tmp_path / "x.partial.jsonl"
    link.symlink_to(target)
    with pytest.raises(WriteError):
        append_jsonl(link, {"a": 1})
    assert target.read_text() == "keep me\n"


def test_the_prompt_column_is_part_of_the_run_identity(tmp_path: Path, capsys) -> None:
    """Two columns of one prompt set are two studies: they never share a run directory."""
    f = tmp_path / "set.csv"
    f.write_text("prompt,other\nA red cube,A blue sphere\nA green cone,A yellow torus\n", encoding="utf-8")
    common = ["generate", str(f), "--model", "tiny", "--backends", "bf16", "--height", "32", "--width", "32",
              "--steps", "2", "--warmup", "0", "--out", str(tmp_path / "run")]
    assert main(common) == 0
    line = _one_line_exit_2([*common, "--prompt-column", "other"], capsys)
    assert "prompt_column" in line


def test_ranks_end_with_a_terminated_launcher() -> None:
    """`call_tied` (how --jobs/--gpus start torchrun) passes SIGTERM on, and its child dies with a SIGKILLed parent."""
    child = "import os, time; print(os.getpid(), flush=True); time.sleep(120)"
    parent = ("import sys; from evalkit.procs import call_tied\n"
              f"call_tied([sys.executable, '-c', {child!r}])")
    for how in (signal.SIGTERM, signal.SIGKILL):
        p = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
        pid = int(p.stdout.readline())
        p.send_signal(how)
        p.wait(timeout=30)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"the child outlived its launcher after {how.name}")

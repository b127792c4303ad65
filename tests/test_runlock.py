"""Run directory ownership and the lock a writing stage holds (evalkit/runlock.py), alone and wired into generate."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, run_evalkit
from evalkit.errors import EvalkitError
from evalkit.runlock import LOCK_NAME, RunLockError, acquire, check_ownership, holder_of


def _write_lock(root: Path, **fields) -> None:
    data = {"pid": os.getpid(), "host": socket.gethostname(), "stage": "score", "started_utc": "2026-11-28T00:00:00Z",
            "token": "theirs", "pid_start": None, **fields}
    root.mkdir(parents=True, exist_ok=True)
    (root / LOCK_NAME).write_text(json.dumps(data))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# --- ownership -----------------------------------------------------------------------------------------------------

def test_a_users_non_empty_directory_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("mine")
    with pytest.raises(EvalkitError) as e:
        check_ownership(tmp_path)
    assert "not an evalkit run directory" in str(e.value) and "thesis.tex" in str(e.value) and "\n" not in str(e.value)


def test_new_empty_and_evalkit_directories_are_accepted(tmp_path: Path) -> None:
    check_ownership(tmp_path / "new")
    check_ownership(tmp_path)
    (tmp_path / LOCK_NAME).write_text("{}")  # only evalkit's own lock: still empty
    check_ownership(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "manifest.json").write_text("{}")
    check_ownership(tmp_path)
    with pytest.raises(EvalkitError, match="not a directory"):
        check_ownership(tmp_path / "notes.txt")


def test_generate_into_a_users_directory_writes_nothing(tmp_path: Path, three_prompts: Path) -> None:
    user = tmp_path / "mine"
    user.mkdir()
    (user / "data.csv").write_text("a,b\n")
    r = run_evalkit("generate", str(three_prompts), "--model", "tiny", "--backends", "bf16", "--out", str(user))
    assert r.returncode == 2 and "not an evalkit run directory" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in user.iterdir()) == ["data.csv"] and (user / "data.csv").read_text() == "a,b\n"


# --- the lock ------------------------------------------------------------------------------------------------------

def test_lock_is_held_inside_and_released_after(tmp_path: Path) -> None:
    with acquire(tmp_path, stage="generate") as me:
        held = holder_of(tmp_path)
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname() and held["stage"] == "generate"
        assert held["token"] == me.token
        with pytest.raises(RunLockError) as e:  # a second holder, even in this process, is refused
            with acquire(tmp_path, stage="score"):
                pass
        msg = str(e.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in msg and "generate stage" in msg
        assert "--break-lock" in msg and "--lock-timeout" in msg and "\n" not in msg
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path: Path) -> None:
    _write_lock(tmp_path, pid=_dead_pid())
    with acquire(tmp_path, stage="generate"):
        assert holder_of(tmp_path)["pid"] == os.getpid()


def test_a_reused_pid_is_not_taken_for_the_holder(tmp_path: Path) -> None:
    # Our own (live) pid, but a different process start time: the holder died and its pid was reused.
    _write_lock(tmp_path, pid=os.getpid(), pid_start="1")
    with acquire(tmp_path, stage="generate"):
        assert holder_of(tmp_path)["token"] != "theirs"


def test_lock_from_another_host_is_refused_until_broken(tmp_path: Path) -> None:
    _write_lock(tmp_path, pid=4242, host="gpu-node-7")
    with pytest.raises(RunLockError) as e:
        with acquire(tmp_path, stage="generate"):
            pass
    assert "pid 4242 on host gpu-node-7" in str(e.value) and "another host" in str(e.value)
    assert "--break-lock" in str(e.value)
    with acquire(tmp_path, stage="generate", break_lock=True):
        assert holder_of(tmp_path)["host"] == socket.gethostname()


def test_waiting_for_the_lock_with_a_timeout(tmp_path: Path) -> None:
    _write_lock(tmp_path, pid=4242, host="gpu-node-7")
    t0 = time.monotonic()
    with pytest.raises(RunLockError, match="waited 0.6 s"):
        with acquire(tmp_path, stage="report", timeout_s=0.6):
            pass
    assert time.monotonic() - t0 >= 0.6
    threading.Timer(0.7, (tmp_path / LOCK_NAME).unlink).start()  # the holder finishes
    with acquire(tmp_path, stage="report", timeout_s=10):
        assert holder_of(tmp_path)["stage"] == "report"


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path: Path) -> None:
    with acquire(tmp_path, stage="generate"):
        _write_lock(tmp_path, token="someone-broke-ours")
    assert holder_of(tmp_path)["token"] == "someone-broke-ours"


def _contend(root: str, barrier, results, stale: bool) -> None:
    barrier.wait()
    try:
        with acquire(root, stage="generate"):
            results.put(os.getpid())
            time.sleep(1.0)  # everyone else tries while this one holds it
    except RunLockError:
        results.put(None)


@pytest.mark.parametrize("stale", [False, True])
def test_exactly_one_of_many_processes_gets_the_lock(tmp_path: Path, stale: bool) -> None:
    """O_EXCL creation (and the takeover of a stale lock) lets exactly one of racing processes in."""
    if stale:
        _write_lock(tmp_path, pid=_dead_pid())
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(str(tmp_path), barrier, results, stale)) for _ in range(4)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join()
    assert sum(g is not None for g in got) == 1, got
    assert not (tmp_path / LOCK_NAME).exists()


# --- wired into the generate stage ---------------------------------------------------------------------------------

def test_generate_refuses_a_run_directory_another_process_holds(tmp_path: Path, three_prompts: Path,
                                                                tiny_model_path: Path) -> None:
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from evalkit.runlock import acquire\n"
         "with acquire(sys.argv[1], stage='score'):\n    print('held', flush=True); time.sleep(120)", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        r = run_evalkit("generate", str(three_prompts), "--model", "tiny", "--height", "32", "--width", "32",
                        "--backends", "bf16", "--out", str(out))
        assert r.returncode == 2, r.stderr[-2000:]
        assert f"in use by the score stage, pid {holder.pid} on host {socket.gethostname()}" in r.stderr
        assert "Traceback" not in r.stderr and not (out / "manifest.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_two_commands_with_different_backends_keep_both_lists(tmp_path: Path, three_prompts: Path,
                                                              tiny_model_path: Path) -> None:
    from evalkit.generate.stage import GenerateOptions, prepare_run

    out = str(tmp_path / "run")
    common = dict(prompts_file=str(three_prompts), model="tiny", out=out, height=32, width=32)
    prepare_run(GenerateOptions(backends="fp8-layerwise,torchao-int8wo", **common))
    _, manifest, specs = prepare_run(GenerateOptions(backends="quanto-int8,fp8-layerwise", **common))
    assert manifest["backends"] == ["bf16", "fp8-layerwise", "torchao-int8wo", "quanto-int8"]
    assert [s.name for s in specs] == manifest["backends"]
    on_disk = json.loads((Path(out) / "manifest.json").read_text())
    assert on_disk["backends"] == manifest["backends"]


@pytest.mark.parametrize("stage", ["score", "report"])
def test_score_and_report_refuse_a_run_directory_another_stage_holds(fake_run_dir: Path, stage: str) -> None:
    """Score and report write into the run directory too: they take the same lock as generate."""
    from evalkit.score.stage import score_run
    from evalkit.report.build import build_report

    with acquire(fake_run_dir, "generate"):
        with pytest.raises(RunLockError) as e:
            if stage == "score":
                score_run(fake_run_dir, "psnr", progress=False)
            else:
                build_report(fake_run_dir, figures=False, quiet=True)
    msg = str(e.value)
    assert str(os.getpid()) in msg and socket.gethostname() in msg and "\n" not in msg
    assert not (fake_run_dir / LOCK_NAME).exists()
    # once released, the same call works and leaves no lock behind
    if stage == "score":
        score_run(fake_run_dir, "psnr", progress=False)
    else:
        build_report(fake_run_dir, figures=False, quiet=True)
    assert not (fake_run_dir / LOCK_NAME).exists()

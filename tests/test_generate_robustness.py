"""The generate stage under failure: dying parents, failed validation, full disks; plus what records carry for later
stages (partial quantization, file size and mtime) and the size check of large studies."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_evalkit
from evalkit.errors import EvalkitError
from evalkit.io import read_json, read_jsonl


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")  # a zombie has finished; only its parent's wait is missing


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.1)
    return False


# --- processes die with their parent ---------------------------------------------------------------------------------

def test_a_worker_dies_when_its_parent_is_killed() -> None:
    child = ("import os, sys, time; from evalkit.generate.worker.run import die_with_parent\n"
             "assert die_with_parent(int(os.environ['EVALKIT_PARENT_PID']))\n"
             "print(os.getpid(), flush=True); time.sleep(120)")
    parent = ("import os, subprocess, sys, time\n"
              "env = {**os.environ, 'EVALKIT_PARENT_PID': str(os.getpid())}\n"
              f"c = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.PIPE, text=True, env=env)\n"
              "print(c.stdout.readline().strip(), flush=True); time.sleep(120)")
    p = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    worker = int(p.stdout.readline())
    assert not _gone(worker)
    p.kill()
    p.wait()
    assert _wait_gone(worker, 10), "the worker outlived its killed parent"


def test_forked_worker_dies_when_the_stage_is_killed(tmp_path: Path, three_prompts: Path, tiny_model_path: Path) -> None:
    """SIGKILL the stage alone (not its process group): the forkserver sees its pipe close and exits, and the
    worker it forked follows by PR_SET_PDEATHSIG."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "evalkit", "generate", str(three_prompts), "--model", "tiny", "--height", "64",
           "--width", "64", "--steps", "40", "--backends", "bf16", "--warmup", "0", "--out", str(out)]
    stage = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "EVALKIT_WORKER_MODE": "forkserver"}, start_new_session=True)
    partial = out / "generation" / "shards" / "bf16" / "w1-r0.partial.jsonl"  # rank 0 of 1
    deadline = time.time() + 300
    while time.time() < deadline and stage.poll() is None and not read_jsonl(partial):
        time.sleep(0.05)
    assert stage.poll() is None, "the run ended before it could be killed"
    worker = read_jsonl(partial)[0]["pid"]
    try:
        stage.kill()
        stage.wait()
        assert _wait_gone(worker, 30), "the forked worker outlived the stage"
    finally:
        if not _gone(worker):
            os.kill(worker, signal.SIGKILL)
        os.killpg(stage.pid, signal.SIGKILL) if not _gone(stage.pid) else None


def test_failed_validation_leaves_no_forkserver(tmp_path: Path, three_prompts: Path, tiny_model_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The forkserver starts while the manifest is prepared; a validation that fails after that point (here the
    image size, checked once the model is known) must not leave it running."""
    from multiprocessing import forkserver

    from evalkit.generate import spawn
    from evalkit.generate.stage import GenerateOptions, run_generate

    monkeypatch.setenv("EVALKIT_WORKER_MODE", "forkserver")
    started: list[int] = []
    real_start = spawn.start_forkserver

    def start_and_note(*args: object) -> None:  # the stage passes the model family whose modules to preload
        real_start(*args)
        pid = spawn.forkserver_pid()
        if pid:
            started.append(pid)

    monkeypatch.setattr("evalkit.generate.stage.start_forkserver", start_and_note)
    with pytest.raises(EvalkitError, match="multiple of 8"):
        run_generate(GenerateOptions(prompts_file=str(three_prompts), model="tiny", backends="bf16", height=60,
                                     width=64, out=str(tmp_path / "run")))
    assert started, "the forkserver never started; nothing was tested"
    assert spawn.forkserver_pid() is None and spawn._FORKSERVER is None
    assert _wait_gone(started[0], 10)
    assert forkserver._forkserver._forkserver_pid is None


# --- full disk -------------------------------------------------------------------------------------------------------

TAG = "w1-r0"  # rank 0 of 1


def _prepared(tmp_path: Path, three_prompts: Path, backends: str = "bf16"):
    """A prepared run with bf16's unit file written, as the stage does before it starts the worker."""
    from evalkit.generate.ranks import write_unit
    from evalkit.generate.stage import GenerateOptions, prepare_run

    rd, manifest, specs = prepare_run(GenerateOptions(prompts_file=str(three_prompts), model="tiny",
                                                      backends=backends, height=32, width=32, warmup=0,
                                                      out=str(tmp_path / "run")))
    write_unit(rd, "bf16", TAG, 0, 1, [p["id"] for p in manifest["prompts"]])
    return rd, manifest, specs


def test_full_disk_mid_backend_fails_it_with_the_path_and_a_rerun_resumes(
        tmp_path: Path, three_prompts: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from evalkit.generate.worker import images
    from evalkit.generate.worker import run as worker

    rd, _, _ = _prepared(tmp_path, three_prompts)
    real = images.atomic_write_bytes
    calls: list[Path] = []

    def second_write_fills_the_disk(path, data) -> None:
        calls.append(Path(path))
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(images, "atomic_write_bytes", second_write_fills_the_disk)
    assert worker.run_worker(str(rd.root), "bf16", TAG) == 1
    rec = read_json(rd.shard_record("bf16", TAG))
    assert rec["status"] == "failed"
    assert rec["reason"] == f"cannot write {calls[1]}: No space left on device"
    assert [e["path"] for e in read_jsonl(rd.shard_partial("bf16", TAG))] == [rd.relative(calls[0])]
    assert not calls[1].exists() and not list(rd.root.rglob("*.tmp"))

    monkeypatch.setattr(images, "atomic_write_bytes", real)
    assert worker.run_worker(str(rd.root), "bf16", TAG) == 0
    rec = read_json(rd.shard_record("bf16", TAG))
    assert rec["status"] == "ok" and rec["resumed_images"] == 1 and len(rec["images"]) == 3


def test_a_record_that_cannot_be_written_is_reported_not_torn(
        tmp_path: Path, three_prompts: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from evalkit.generate.worker import run as worker

    rd, _, _ = _prepared(tmp_path, three_prompts)
    events: list[dict] = []
    monkeypatch.setattr(worker, "emit", lambda event, **data: events.append({"event": event, **data}))

    def full(path, obj, sort_keys=True) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(worker, "atomic_write_json", full)
    assert worker.run_worker(str(rd.root), "bf16", TAG) == 1
    assert not rd.shard_record("bf16", TAG).exists()
    assert events[-1]["status"] == "failed" and "No space left on device" in events[-1]["reason"]
    assert str(rd.shard_record("bf16", TAG)) in events[-1]["reason"]
    assert len(read_jsonl(rd.shard_partial("bf16", TAG))) == 3  # the images stay for a rerun


def test_stage_turns_a_full_disk_into_one_line(tmp_path: Path, three_prompts: Path, tiny_model_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from evalkit.generate import ranks, stage

    out = tmp_path / "run"

    def full(root):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(root) / "summary.json"))

    monkeypatch.setattr(ranks, "write_summary", full)  # rank 0 writes the summary after the merge
    with pytest.raises(EvalkitError) as e:
        stage.run_generate(stage.GenerateOptions(prompts_file=str(three_prompts), model="tiny", backends="bf16",
                                                 height=32, width=32, warmup=0, out=str(out)))
    msg = str(e.value)
    assert msg.startswith(f"{out / 'summary.json'}: cannot write (No space left on device)") and "\n" not in msg
    assert "rerun" in msg and read_json(out / "generation" / "bf16.json")["status"] == "ok"
    assert not (out / ".evalkit.lock").exists()  # the lock is released on the way out


# --- what records carry ----------------------------------------------------------------------------------------------

def test_image_entries_carry_size_and_mtime(tiny_run: Path) -> None:
    for name in ("bf16", "torchao-int8wo"):
        for img in read_json(tiny_run / "generation" / f"{name}.json")["images"]:
            st = (tiny_run / img["path"]).stat()
            assert (img["size_bytes"], img["mtime_ns"]) == (st.st_size, st.st_mtime_ns)


def test_partial_reason_says_what_was_left_unquantized() -> None:
    from evalkit.quantizers.registry import BACKENDS
    from evalkit.generate.worker.run import partial_reason

    assert partial_reason(BACKENDS["bf16"], {"note": None}) is None
    full = {"note": None, "components_quantized": ["transformer"], "quantized_linear_count": {"transformer": 7}}
    assert partial_reason(BACKENDS["torchao-int8wo"], full) is None
    narrowed = {"note": "transformer left in bf16 on CPU: diffusers' bitsandbytes quantizer needs a GPU",
                "components_quantized": ["text_encoder_2"], "quantized_linear_count": {"text_encoder_2": 4}}
    assert partial_reason(BACKENDS["bnb-nf4"], narrowed) == narrowed["note"]
    nothing = {"note": None, "components_quantized": ["transformer"], "quantized_linear_count": {"transformer": 0}}
    assert partial_reason(BACKENDS["quanto-int8"], nothing) == "transformer: no layer was quantized"


def test_partial_reason_is_in_the_generation_record(tiny_run: Path) -> None:
    rec = read_json(tiny_run / "generation" / "torchao-int8wo.json")
    assert "partial_reason" in rec["quantization"] and rec["quantization"]["partial_reason"] is None


# --- study size ------------------------------------------------------------------------------------------------------

def test_max_images_refuses_a_larger_study_before_writing(tmp_path: Path, three_prompts: Path) -> None:
    out = tmp_path / "run"
    r = run_evalkit("generate", str(three_prompts), "--model", "tiny", "--height", "32", "--width", "32",
                    "--backends", "bf16,fp8-layerwise", "--max-images", "5", "--out", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--max-images 5: this command would generate 6 images (2 backends x up to 3 prompts)" in r.stderr
    assert not (out / "manifest.json").exists()


def test_a_large_study_prints_its_size_and_an_estimate(tmp_path: Path, three_prompts: Path, tiny_model_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from evalkit.generate import ranks, stage

    monkeypatch.setattr(ranks, "LARGE_STUDY_IMAGES", 2)  # 3 prompts x 1 backend counts as large here (rank 0 plans)
    console = Console(record=True, width=400)
    out = stage.run_generate(stage.GenerateOptions(prompts_file=str(three_prompts), model="tiny", backends="bf16",
                                                   height=32, width=32, warmup=0, out=str(tmp_path / "run")), console)
    text = console.export_text()
    assert "large study: 3 images to generate (1 backends x up to 3 prompts), estimated ~0 s" in text
    assert "rough: tiny Flux" in text
    # Rerun: nothing is left to generate, so nothing is announced.
    console = Console(record=True, width=400)
    stage.run_generate(stage.GenerateOptions(prompts_file=str(three_prompts), model="tiny", backends="bf16",
                                             height=32, width=32, warmup=0, out=str(out)), console)
    assert "large study" not in console.export_text()


def test_estimate_prefers_the_runs_own_latency(tiny_run: Path) -> None:
    from evalkit.generate.plan import seconds_per_image
    from evalkit.rundir import RunDir

    manifest = json.loads((tiny_run / "manifest.json").read_text())
    per_image, basis = seconds_per_image(RunDir(tiny_run), manifest)
    medians = [read_json(tiny_run / "generation" / f"{b}.json")["latency"]["median_s"]
               for b in ("bf16", "torchao-int8wo", "fp8-layerwise")]
    assert per_image == pytest.approx(sum(medians) / 3) and "3 backend(s) already run here" in basis


# --- resume checks what it resumes -----------------------------------------------------------------------------------

def _hashes(run: Path, backend: str) -> dict[str, str]:
    return {i["prompt_id"]: i["sha256"] for i in read_json(run / "generation" / f"{backend}.json")["images"]}


def test_rerun_regenerates_only_missing_truncated_or_replaced_images(tiny_run: Path, three_prompts: Path,
                                                                     tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "damaged"
    shutil.copytree(tiny_run, out)  # copy2 keeps sizes and mtimes: the untouched images are not re-hashed
    bf16 = read_json(out / "generation" / "bf16.json")["images"]
    fp8 = read_json(out / "generation" / "fp8-layerwise.json")["images"]
    (out / bf16[0]["path"]).unlink()
    data = (out / bf16[1]["path"]).read_bytes()
    (out / bf16[1]["path"]).write_bytes(data[: len(data) // 2])
    # A valid image, but not the one generated: the reference's for the same prompt.
    (out / fp8[2]["path"]).write_bytes((out / bf16[2]["path"]).read_bytes())

    r = run_evalkit("generate", str(three_prompts), "--model", "tiny", "--height", "64", "--width", "64",
                    "--backends", "bf16,torchao-int8wo,fp8-layerwise,torchao-fp8dq", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "bf16: regenerating 2 image(s)" in r.stderr and "fp8-layerwise: regenerating 1 image(s)" in r.stderr
    log = (out / "logs" / "bf16.log").read_text()
    assert f"regenerating {bf16[0]['prompt_id']}: {bf16[0]['path']}: missing" in log
    assert f"regenerating {bf16[1]['prompt_id']}: {bf16[1]['path']}: undecodable: truncated or corrupt" in log
    assert f"regenerating {fp8[2]['prompt_id']}: {fp8[2]['path']}: replaced: sha256" in (
        out / "logs" / "fp8-layerwise.log").read_text()
    assert read_json(out / "generation" / "bf16.json")["resumed_images"] == 1
    assert read_json(out / "generation" / "fp8-layerwise.json")["resumed_images"] == 2
    # The int8 backend was intact: not rerun. Every image is the same bytes as before the damage.
    assert "torchao-int8wo: regenerating" not in r.stderr
    for b in ("bf16", "fp8-layerwise", "torchao-int8wo"):
        assert _hashes(out, b) == _hashes(tiny_run, b), b
        for img in read_json(out / "generation" / f"{b}.json")["images"]:
            assert (out / img["path"]).stat().st_size == img["size_bytes"]

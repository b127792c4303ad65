"""Sharded generation (#14) on CPU with gloo: ranks started by torchrun (and by `--jobs`) make byte-identical
images to one process, the merge records who made what, a killed rank's holes are named and filled by a rerun,
and a constructed duplicate or missing unit is refused by `evalkit merge`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evalkit.io import read_json, read_jsonl

from conftest import REPO, run_evalkit

pytestmark = pytest.mark.slow

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "evalkit"]


def _hashes(run: Path, backend: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((run / "images" / backend).glob("*.png"))}


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _torchrun(*args: str, stderr_path: Path, timeout: float = 600) -> int:
    with open(stderr_path, "w") as err:
        return subprocess.run([*TORCHRUN, *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
                              timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode


def test_two_ranks_make_the_one_process_images_and_the_merge_names_each_rank(
        tiny_run: Path, three_prompts: Path, tmp_path: Path) -> None:
    out = tmp_path / "two"
    log = tmp_path / "stderr.txt"
    rc = _torchrun("generate", str(three_prompts), "--model", "tiny", "--height", "64", "--width", "64",
                   "--backends", "bf16,torchao-int8wo", "--schedule", "prompts", "--out", str(out), stderr_path=log)
    text = log.read_text()
    assert rc == 0, text[-3000:]
    for backend in ("bf16", "torchao-int8wo"):
        assert _hashes(out, backend) == _hashes(tiny_run, backend), backend  # byte-identical PNGs
        rec = read_json(out / "generation" / f"{backend}.json")
        assert rec["status"] == "ok" and len(rec["images"]) == 3
        assert sorted(r["tag"] for r in rec["ranks"]) == ["w2-r0", "w2-r1"]
        assert sum(r["n_images"] for r in rec["ranks"]) == 3
        assert rec["latency"]["n"] == 3
    merge = read_json(out / "merge.json")
    assert merge["schema"] == "evalkit.merge/1"
    units = merge["backends"]["bf16"]["units"]
    assert [u["rank"] for u in units] == [0, 0, 1] and {u["world_size"] for u in units} == {2}
    assert [u["sha256"] for u in units] == [i["sha256"] for i in read_json(out / "generation" / "bf16.json")["images"]]
    assert not (out / "generation" / "shards").exists()  # complete backends' shard files are gone
    # Off a terminal: plain progress lines per rank, no ANSI escapes, no rich bars.
    assert "\x1b[" not in text
    assert re.search(r"^\[rank 1/2 w2-r1\] bf16 1/1 images \(this unit\) [\d.?]+ img/s ETA", text, re.M), text[-2000:]
    # each phase line ends with the study-wide progress (" | backend k of N, ...") or with nothing
    assert re.search(r"^\[rank 0/2 w2-r0\] torchao-int8wo loaded in [\d.]+ s( \| backend \d+ of \d+.*)?$", text, re.M)
    assert re.search(r"^\[rank 0/2 w2-r0\] bf16 done( \| backend \d+ of \d+.*)?$", text, re.M)
    assert "schedule prompts on 2 rank(s)" in text
    assert read_json(out / "manifest.json")["config"]["schedule"]["policy"] == "prompts"


def test_jobs_launches_ranks_through_torchrun(tiny_run: Path, three_prompts: Path, tmp_path: Path) -> None:
    out = tmp_path / "jobs"
    r = run_evalkit("generate", str(three_prompts), "--model", "tiny", "--height", "64", "--width", "64",
                    "--backends", "bf16,fp8-layerwise", "--jobs", "2", "--schedule", "backends", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "starting 2 ranks on this machine" in r.stderr
    units = read_json(out / "merge.json")["backends"]
    # whole backends: each backend made by one rank, the two by different ranks
    assert len({u["rank"] for u in units["bf16"]["units"]}) == 1
    assert {u["rank"] for u in units["bf16"]["units"]} != {u["rank"] for u in units["fp8-layerwise"]["units"]}
    for backend in ("bf16", "fp8-layerwise"):
        assert _hashes(out, backend) == _hashes(tiny_run, backend), backend
    # An unchanged rerun is instant whatever --jobs says: no ranks are started.
    again = run_evalkit("generate", str(three_prompts), "--model", "tiny", "--height", "64", "--width", "64",
                        "--backends", "bf16,fp8-layerwise", "--jobs", "2", "--out", str(out))
    assert again.returncode == 0 and "nothing to do" in again.stderr and "starting 2 ranks" not in again.stderr
    # A shard file awaiting a merge is work: the rerun must not call itself unchanged, and its merge clears it.
    stray = out / "generation" / "shards" / "bf16" / "w2-r1.unit.json"
    stray.parent.mkdir(parents=True)
    stray.write_text(json.dumps({"prompt_ids": []}))
    third = run_evalkit("generate", str(three_prompts), "--model", "tiny", "--height", "64", "--width", "64",
                        "--backends", "bf16,fp8-layerwise", "--out", str(out))
    assert third.returncode == 0, third.stderr[-2000:]
    assert "nothing to do" not in third.stderr and not stray.exists()
    for backend in ("bf16", "fp8-layerwise"):
        assert _hashes(out, backend) == _hashes(tiny_run, backend), backend


def test_a_killed_rank_is_named_by_merge_and_a_rerun_fills_exactly_its_holes(tmp_path: Path,
                                                                             tiny_model_path: Path) -> None:
    prompts = tmp_path / "four.txt"
    prompts.write_text("A cat in a hat\nA lighthouse at dusk\nAn owl on a branch\nA bowl of ramen\n",
                       encoding="utf-8")
    # 400 steps: an image takes long enough (~2 s at 64x64) that rank 1 is killed before its second one even when
    # the machine is loaded (at 150 steps a loaded CI machine once let it finish both before the kill landed)
    common = ["--model", "tiny", "--height", "64", "--width", "64", "--steps", "400", "--backends", "bf16",
              "--warmup", "0"]
    one = tmp_path / "one"
    r = run_evalkit("generate", str(prompts), *common, "--out", str(one))
    assert r.returncode == 0, r.stderr[-2000:]

    out = tmp_path / "killed"
    log = open(tmp_path / "stderr.txt", "w")
    proc = subprocess.Popen([*TORCHRUN, "generate", str(prompts), *common, "--schedule", "prompts", "--out", str(out)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    partial = out / "generation" / "shards" / "bf16" / "w2-r1.partial.jsonl"
    unit = out / "generation" / "shards" / "bf16" / "w2-r1.unit.json"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None and not read_jsonl(partial):
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before a rank could be killed; nothing was tested"
        worker = read_jsonl(partial)[0]["pid"]
        os.kill(read_json(unit)["pid"], signal.SIGKILL)  # rank 1 alone; its worker follows by PDEATHSIG
        assert proc.wait(timeout=120) != 0  # torchrun stops the other rank and fails
        assert _wait_gone(worker, 30), "the killed rank's worker outlived it"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    made = {p: p.stat().st_mtime_ns for p in (out / "images" / "bf16").glob("*.png")}
    assert 1 <= len(made) < 4
    assert not (out / "generation" / "bf16.json").exists()

    m = run_evalkit("merge", str(out))
    assert m.returncode == 1, m.stderr[-2000:]
    assert "bf16:" in m.stderr and f"{4 - len(made)} of 4 prompt(s) have no valid image" in m.stderr
    owner = {pid: tag for tag in ("w2-r0", "w2-r1")
             for pid in read_json(out / "generation" / "shards" / "bf16" / f"{tag}.unit.json")["prompt_ids"]}
    have = {p.name.rsplit("_s", 1)[0] for p in made}
    missing = [pid for pid in owner if pid not in have]
    for pid in missing[:3]:  # each missing prompt is named with the tag of the rank that was to make it
        assert f"{pid} ({owner[pid]})" in m.stderr, m.stderr[-1500:]
    assert read_json(out / "merge.json")["backends"]["bf16"]["status"] == "incomplete"

    again = run_evalkit("generate", str(prompts), *common, "--out", str(out))  # one process is fine
    assert again.returncode == 0, again.stderr[-2000:]
    assert _hashes(out, "bf16") == _hashes(one, "bf16")
    assert {p: p.stat().st_mtime_ns for p in made} == made  # what the ranks made was not rewritten
    rec = read_json(out / "generation" / "bf16.json")
    assert rec["status"] == "ok" and len(rec["images"]) == 4
    assert not (out / "generation" / "shards").exists()


def _shard(rec: dict, images: list[dict], tag: str) -> dict:
    rank = int(tag.split("-r")[1])
    return {**rec, "images": images, "shard": {"tag": tag, "rank": rank, "world_size": 2, "host": "h",
                                                "gpu": None, "prompt_ids": [i["prompt_id"] for i in images]}}


def test_merge_refuses_a_duplicate_and_names_a_missing_unit(tiny_run: Path, tmp_path: Path) -> None:
    from evalkit.generate.ranks import write_unit
    from evalkit.rundir import RunDir

    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)  # copy2 keeps mtimes: the images' stat fingerprints still match
    rec = read_json(out / "generation" / "bf16.json")
    (out / "generation" / "bf16.json").unlink()
    shards = out / "generation" / "shards" / "bf16"
    shards.mkdir(parents=True)
    imgs = rec["images"]
    (shards / "w2-r0.json").write_text(json.dumps(_shard(rec, imgs[:2], "w2-r0")))
    (shards / "w2-r1.json").write_text(json.dumps(_shard(rec, imgs[1:], "w2-r1")))
    m = run_evalkit("merge", str(out))
    assert m.returncode == 1
    dup = imgs[1]["prompt_id"]
    assert re.search(rf"bf16: prompt {dup} is claimed by two shards, \S*w2-r0.json and \S*w2-r1.json", m.stderr), m.stderr
    assert "delete the shard file" in m.stderr
    assert not (out / "generation" / "bf16.json").exists()

    (shards / "w2-r1.json").unlink()
    write_unit(RunDir(out), "bf16", "w2-r1", 1, 2, [i["prompt_id"] for i in imgs[2:]])  # as the rank writes it
    m = run_evalkit("merge", str(out))
    assert m.returncode == 1
    assert f"1 of 3 prompt(s) have no valid image: {imgs[2]['prompt_id']} (w2-r1)" in m.stderr, m.stderr
    assert not (out / "generation" / "bf16.json").exists()

    (shards / "w2-r1.json").write_text(json.dumps(_shard(rec, imgs[2:], "w2-r1")))
    m = run_evalkit("merge", str(out))
    assert m.returncode == 0, m.stderr[-2000:]
    merged = read_json(out / "generation" / "bf16.json")
    assert [i["sha256"] for i in merged["images"]] == [i["sha256"] for i in imgs]
    assert [u["tag"] for u in read_json(out / "merge.json")["backends"]["bf16"]["units"]] == ["w2-r0", "w2-r0", "w2-r1"]
    assert not shards.exists()

"""Distributed scoring (issue #14.4): two CPU ranks over gloo give exactly one process's numbers, a failing rank
stops every rank quickly, and the chunk split and plain progress lines behave."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, run_evalkit
from evalkit.score.common import PlainProgress
from evalkit.score.distributed import assign_chunks

# KID needs 10 images per set; 64x64 keeps the tiny model fast. Two batch-size-2 chunks of 4 per backend and a
# leftover chunk: both the round-robin and the leftover deal are exercised.
METRICS = "lpips,ssim,psnr,fid,kid"
SCORE_ARGS = ("--metrics", METRICS, "--metrics-batch-size", "2", "--quiet")
# The same intra-op thread count on both sides: float32 reductions on CPU depend on it (the values then differ by
# ~1e-8 relative, not by the split). torchrun gives each of several ranks one thread by default.
ENV = {"OMP_NUM_THREADS": "1", "EVALKIT_DIST_TIMEOUT": "120"}
SHARED = re.compile(r"score: rank (\d) of 2 computed (\d+) of (\d+) chunks")


@pytest.fixture(scope="module")
def run10(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Path:
    folder = tmp_path_factory.mktemp("dist")
    prompts = folder / "ten.txt"
    prompts.write_text("".join(f"prompt {i}: a {'red' if i % 2 else 'blue'} house by a lake, style {i}\n"
                               for i in range(10)), encoding="utf-8")
    out = folder / "run"
    r = run_evalkit("generate", str(prompts), "--model", "tiny", "--height", "64", "--width", "64",
                    "--backends", "bf16,fp8-layerwise", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def _torchrun(*args: str, nproc: int = 2, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {**os.environ, **ENV, **(env or {})}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                           "-m", "evalkit", *args], cwd=REPO, env=e, text=True, capture_output=True, timeout=600)


def _close(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two JSON values differ beyond 1e-9 (floats) or at all (anything else)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        return [d for k in a for d in _close(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: lengths {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _close(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-9) else [f"{path}: {a!r} != {b!r}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_ranks_score_exactly_what_one_process_scores(run10: Path, tmp_path: Path) -> None:
    one, two = _copy(run10, tmp_path / "one"), _copy(run10, tmp_path / "two")
    r1 = run_evalkit("score", str(one), *SCORE_ARGS, env=ENV)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = _torchrun("score", str(two), *SCORE_ARGS)
    assert r2.returncode == 0, r2.stderr[-3000:]

    # Each rank says what it computed: rank 1 really scored a share, and the shares cover the plan once.
    shares = {int(m[0]): (int(m[1]), int(m[2])) for m in SHARED.findall(r2.stderr)}
    assert set(shares) == {0, 1}, r2.stderr[-2000:]
    assert shares[1][0] > 0 and shares[0][0] > 0
    assert shares[0][0] + shares[1][0] == shares[0][1] == shares[1][1]

    assert (two / "metrics" / "per_image.csv").read_bytes() == (one / "metrics" / "per_image.csv").read_bytes()
    for b in ("bf16", "fp8-layerwise"):
        a = json.loads((one / "metrics" / f"{b}.json").read_text())
        c = json.loads((two / "metrics" / f"{b}.json").read_text())
        assert _close(a, c) == [], b
    rec = json.loads((two / "metrics" / "fp8-layerwise.json").read_text())["metrics"]
    for m in ("lpips_alex", "ssim", "psnr", "fid", "kid"):  # compared above: they must be real numbers, not skips
        assert rec[m]["status"] == "ok", (m, rec[m])
    assert len(rec["psnr"]["per_prompt"]) == 10 and rec["kid"]["n"] == 10

    # Rank 0 saved every rank's cache entries (tables and features): the same cache as one process, so a rerun
    # computes nothing; and no rank wrote anything else.
    assert _tree(two / "metrics" / "cache") == _tree(one / "metrics" / "cache")
    assert sorted(_tree(two)) == sorted(_tree(one))

    # The unchanged shortcut is rank 0's decision, shared by every rank; --jobs launches through torchrun.
    r3 = run_evalkit("score", str(two), *SCORE_ARGS, "--jobs", "2", env=ENV)
    assert r3.returncode == 0, r3.stderr[-3000:]
    assert r3.stderr.count("score: nothing to do") == 1, r3.stderr[-2000:]
    assert not SHARED.search(r3.stderr)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Rank 1's scoring raises as soon as its share starts: the test wraps the CLI, production code has no switch for it.
FAILING_RANK = """
import os, sys
import evalkit.score.stage as stage
from evalkit.cli import main
from evalkit.errors import EvalkitError

def fail(*args, **kwargs):
    raise EvalkitError("this rank fails on purpose")

if os.environ["RANK"] == "1":
    stage.run_work = fail  # what evalkit.score.distributed.compute_share runs for the rank's share
sys.exit(main(sys.argv[1:]))
"""


def test_a_failing_rank_stops_every_rank_quickly(run10: Path, tmp_path: Path) -> None:
    """Two ranks started by hand (not torchrun, which would also kill the survivor): each must exit on its own."""
    run = _copy(run10, tmp_path / "run")
    base = {**os.environ, **ENV, "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(_free_port())}
    procs = [subprocess.Popen([sys.executable, "-c", FAILING_RANK, "score", str(run), *SCORE_ARGS], cwd=REPO,
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in (0, 1)]
    t0 = time.monotonic()
    try:
        outs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert time.monotonic() - t0 < 120
    codes = [p.returncode for p in procs]
    assert codes == [2, 2], (codes, [o[1][-1500:] for o in outs])
    err0, err1 = outs[0][1], outs[1][1]
    assert "evalkit: error: rank 1 of 2" in err0 and "fails on purpose" in err0
    assert "fails on purpose" in err1 and "Traceback" not in err0 + err1
    assert not (run / "metrics" / "per_image.csv").exists()  # nothing half-written


def test_assign_chunks_gives_every_chunk_one_rank_and_balances_leftovers() -> None:
    counts = [5, 1, 1, 3, 0, 2]
    for n in (1, 2, 3, 4):
        owners = assign_chunks(counts, n)
        assert [len(row) for row in owners] == counts
        load = [sum(row.count(r) for row in owners) for r in range(n)]
        assert max(load) - min(load) <= 1, (n, owners)
        for count, row in zip(counts, owners):  # whole rounds: chunk j of every backend on rank j % n
            assert row[:count - count % n] == [j % n for j in range(count - count % n)]
    assert assign_chunks([1, 1, 1], 2) == [[0], [1], [0]]


def test_plain_progress_prints_at_most_every_ten_seconds() -> None:
    now = [0.0]
    out = io.StringIO()
    bar = PlainProgress(stream=out, clock=lambda: now[0])
    a, b = bar.add_task("bf16", total=10), bar.add_task("q", total=10)
    for step in range(19):
        now[0] = step * 2.0  # an image every 2 s: a line at t=10, 20, 30 and at the end
        bar.advance(a if step < 10 else b, 1)
    now[0] = 40.0
    bar.advance(b, 1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4, lines
    assert lines[0] == "score: bf16 6/10, all backends 6/20 images, 0.6 images/s, ETA 23 s"
    assert lines[-1].startswith("score: q 10/10, all backends 20/20 images") and "ETA" not in lines[-1]


def test_peer_watch_stops_a_rank_once_another_posted_its_failure() -> None:
    """The early stop between chunks (the two-rank failure test above covers the agreement that follows)."""
    from evalkit.score.distributed import PeerFailed, PeerWatch

    class Store:  # the part of torch's key-value store the watch uses
        def __init__(self) -> None:
            self.kv: dict[str, bytes] = {}

        def set(self, k: str, v: str) -> None:
            self.kv[k] = v.encode()

        def check(self, keys: list[str]) -> bool:
            return all(k in self.kv for k in keys)

        def get(self, k: str) -> bytes:
            return self.kv[k]

    store = Store()
    failing, other = PeerWatch(store), PeerWatch(store)
    other.key = failing.key  # one score call seen from two ranks
    other.check()  # nothing posted: goes on
    failing.post("rank 1 of 2 (host h): bad image x.png")
    with pytest.raises(PeerFailed, match=r"^rank 1 of 2 \(host h\): bad image x.png$"):
        other.check()
    assert PeerWatch(store).key != failing.key  # the next score call in the same job starts clean


def test_ranks_that_would_score_differently_stop_before_scoring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plans are compared across ranks (here rank 1's answer is faked): different work or different unavailable
    metrics stop every rank with the difference named; the same metrics missing for host-specific reasons do not."""
    from types import SimpleNamespace

    from evalkit import dist
    from evalkit.score import distributed as dsc
    from evalkit.metrics import registry as reg

    state: Any = SimpleNamespace(opts=SimpleNamespace(created={"ssim": reg.MetricUnavailable("on /a")}), items={})
    mine = ("plan", dsc._plan_digest(state, []))
    monkeypatch.setattr(dist, "world", lambda: dist.World(0, 2, 0, 2, "torchrun"))

    def rank1_says(work: str, missing: dict[str, str]) -> None:
        monkeypatch.setattr(dist, "all_gather", lambda obj: [obj, ("plan", (work, missing))])
        dsc._agree_on_plans(state, [], None)

    rank1_says(mine[1][0], {"ssim": "on /b"})  # same metric missing, its own path: agreed
    with pytest.raises(dsc.EvalkitError, match=r"on rank 1, lpips_alex: no weights here"):
        rank1_says(mine[1][0], {"ssim": "on /b", "lpips_alex": "no weights here"})
    with pytest.raises(dsc.EvalkitError, match="planned different work"):
        rank1_says("another plan", {"ssim": "on /b"})

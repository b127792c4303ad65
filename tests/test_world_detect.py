"""evalkit.dist: reading the launcher's environment, and the collectives over a real 2-process gloo group."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from evalkit import dist
from evalkit.errors import EvalkitError


def test_torchrun_and_accelerate_variables() -> None:
    w = dist.detect_world({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"})
    assert (w.rank, w.world_size, w.local_rank, w.local_world_size, w.launcher) == (3, 8, 1, 4, "torchrun")
    assert w.tag() == "w8-r3" and w.distributed and not w.is_main


def test_no_launcher_is_a_world_of_one() -> None:
    w = dist.detect_world({})
    assert (w.rank, w.world_size, w.distributed, w.is_main, w.tag()) == (0, 1, False, True, "w1-r0")


def test_slurm_counts_only_inside_a_job_step() -> None:
    # An sbatch script's own shell has SLURM_PROCID/SLURM_NTASKS too; taken as rank 0 of 4 it would wait forever.
    batch_shell = {"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0"}
    assert not dist.detect_world(batch_shell).distributed
    step = {**batch_shell, "SLURM_PROCID": "2", "SLURM_LOCALID": "0", "SLURM_STEP_ID": "0",
            "SLURM_TASKS_PER_NODE": "2(x2)"}
    w = dist.detect_world(step)
    assert (w.rank, w.world_size, w.local_rank, w.local_world_size, w.launcher) == (2, 4, 0, 2, "slurm")


def test_torchrun_variables_win_over_slurm() -> None:
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_STEP_ID": "0", "RANK": "1", "WORLD_SIZE": "2"}
    assert dist.detect_world(env).launcher == "torchrun"


@pytest.mark.parametrize("env, needle", [
    ({"RANK": "2", "WORLD_SIZE": "2"}, "rank 2 of world size 2"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x'"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}, "local rank 2 of 2"),
])
def test_bad_launcher_variables_are_named(env: dict[str, str], needle: str) -> None:
    with pytest.raises(EvalkitError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        dist.detect_world(env)


@pytest.mark.parametrize("nodes, first", [("gpu[03-05,9]", "gpu03"), ("a1,b2", "a1"), ("n7", "n7"),
                                          ("node[12,15-16]", "node12")])
def test_slurm_master_is_the_first_node(nodes: str, first: str) -> None:
    assert dist.slurm_master_addr({"SLURM_JOB_NODELIST": nodes}) == first


def test_launch_options_are_stripped() -> None:
    argv = ["run", "p.txt", "--gpus", "0,1", "--model", "tiny", "--jobs=2", "--out", "o"]
    assert dist.strip_launch_options(argv) == ["run", "p.txt", "--model", "tiny", "--out", "o"]


def test_local_gpu_maps_local_rank_to_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist, "_WORLD", dist.World(rank=5, world_size=8, local_rank=1, local_world_size=4))
    assert dist.local_gpu("4,5,6,7") == "5"
    monkeypatch.setattr(dist, "_WORLD", dist.World(rank=5, world_size=8, local_rank=3, local_world_size=4))
    with pytest.raises(EvalkitError, match="2 visible GPU"):
        dist.local_gpu("0,1")
    monkeypatch.setattr(dist, "_WORLD", dist.World())
    assert dist.local_gpu("0,1") is None  # a world of one leaves the workers' devices alone


def test_collectives_over_two_gloo_ranks(tmp_path: Path) -> None:
    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent("""
        import json, pathlib, sys
        from evalkit import dist
        from evalkit.errors import EvalkitError
        w = dist.world()
        out = {"plan": dist.broadcast({"units": [1, 2]} if w.is_main else None),
               "gathered": dist.gather(w.rank * 10), "tags": dist.all_gather(w.tag())}
        try:
            dist.agree("disk full on rank 1" if w.rank == 1 else None)
        except EvalkitError as e:
            out["agree"] = str(e)
        dist.barrier()
        # one file per rank: two ranks printing at once can interleave on a shared stdout
        (pathlib.Path(sys.argv[1]) / f"rank{w.rank}.json").write_text(json.dumps(out))
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    main, other = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert main["plan"] == other["plan"] == {"units": [1, 2]}
    assert main["gathered"] == [0, 10] and other["gathered"] is None
    assert main["tags"] == other["tags"] == ["w2-r0", "w2-r1"]
    # every rank stops, and the others say which rank could not go on
    assert main["agree"] == "rank 1: disk full on rank 1" and other["agree"] == "disk full on rank 1"


def test_backend_workers_get_no_launcher_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker is one process on one GPU, not a rank. On 2 H200s (2026-11-29) a worker that inherited torchrun's
    LOCAL_RANK=1 had transformers load onto cuda:1 while it saw a single GPU: 'invalid device ordinal'."""
    from evalkit.generate.ranks import worker_env

    for k, v in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "h",
                 "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x", "SLURM_PROCID": "1", "KEEP_ME": "yes"}.items():
        monkeypatch.setenv(k, v)
    env = worker_env("3")
    assert env["CUDA_VISIBLE_DEVICES"] == "3" and env["KEEP_ME"] == "yes"
    leaked = {k for k in env if k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                                      "MASTER_PORT", "SLURM_PROCID") or k.startswith("TORCHELASTIC_")}
    assert not leaked

"""install.sh's torch choice (tools/install_torch.py): CPU build from PyTorch's CPU index without a GPU, falling back
with a message when that index is unreachable; a CUDA machine keeps its torch. The GPU probe is mocked."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("install_torch", REPO / "tools" / "install_torch.py")
it = importlib.util.module_from_spec(_spec)
sys.modules["install_torch"] = it  # dataclasses look their module up
_spec.loader.exec_module(it)  # type: ignore[union-attr]


def _done(rc: int, out: str = "") -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess([], rc, stdout=out, stderr="")


def test_probe_sees_a_gpu_through_nvidia_smi(tmp_path: Path) -> None:
    run = lambda cmd, **kw: _done(0, "GPU 0: NVIDIA H200 (UUID: GPU-1)\n")  # noqa: E731
    assert it.has_nvidia_gpu(which=lambda n: "/usr/bin/nvidia-smi", run=run, proc=tmp_path / "none")


def test_probe_without_driver_or_with_a_failing_nvidia_smi(tmp_path: Path) -> None:
    assert not it.has_nvidia_gpu(which=lambda n: None, run=None, proc=tmp_path / "none")  # type: ignore[arg-type]
    failing = lambda cmd, **kw: _done(9, "NVIDIA-SMI has failed because it couldn't communicate with the driver")  # noqa: E731
    assert not it.has_nvidia_gpu(which=lambda n: "/usr/bin/nvidia-smi", run=failing, proc=tmp_path / "none")
    gpus = tmp_path / "gpus"
    (gpus / "0000:00:1e.0").mkdir(parents=True)
    assert it.has_nvidia_gpu(which=lambda n: None, run=None, proc=gpus)  # type: ignore[arg-type]


def test_pin_is_read_from_constraints() -> None:
    text = (REPO / "constraints.txt").read_text()
    assert f"torch=={it.pinned_torch()}" in text.replace(" ", "")


def test_cpu_machine_installs_the_cpu_build_from_pytorchs_index() -> None:
    plan = it.make_plan("py", gpu=False, current=None, pin="2.13.0", keep=False)
    first, fallback = plan.commands
    assert first[first.index("--index-url") + 1] == it.CPU_INDEX and "torch==2.13.0" in first
    assert "--timeout" in first  # an unreachable index fails fast, not after pip's 180 s default
    assert "--index-url" not in fallback and "torch==2.13.0" in fallback
    assert plan.constrain


def test_cpu_machine_replaces_a_cuda_torch_but_keeps_the_pinned_cpu_build() -> None:
    assert it.make_plan("py", gpu=False, current="2.13.0", pin="2.13.0", keep=False).commands  # PyPI's CUDA build
    assert not it.make_plan("py", gpu=False, current="2.13.0+cpu", pin="2.13.0", keep=False).commands


def test_gpu_machine_keeps_its_torch_and_is_not_constrained() -> None:
    plan = it.make_plan("py", gpu=True, current="2.11.0+cu130", pin="2.13.0", keep=False)
    assert not plan.commands and not plan.constrain and "keeping" in plan.why
    fresh = it.make_plan("py", gpu=True, current=None, pin="2.13.0", keep=False)
    assert fresh.commands == [["py", "-m", "pip", "install", "-q", "torch"]] and not fresh.constrain
    assert not it.make_plan("py", gpu=False, current=None, pin="2.13.0", keep=True).commands


def test_unreachable_cpu_index_falls_back_with_a_message() -> None:
    plan = it.make_plan("py", gpu=False, current=None, pin="2.13.0", keep=False)
    ran: list[list[str]] = []
    said: list[str] = []

    def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
        ran.append(cmd)
        return _done(1 if "--index-url" in cmd else 0)

    assert it.execute(plan, run=run, say=said.append) == 0
    assert ran == plan.commands
    assert any("could not be reached" in s for s in said)
    ran.clear()
    assert it.execute(plan, run=lambda cmd, **kw: _done(1), say=said.append) == 1


def test_script_decides_from_a_fake_nvidia_smi_on_path(tmp_path: Path) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\necho "GPU 0: NVIDIA H200 (UUID: GPU-1)"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    env.pop("EVALKIT_KEEP_TORCH", None)
    r = subprocess.run([sys.executable, str(REPO / "tools" / "install_torch.py"), "--dry-run"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "NVIDIA GPU found" in r.stdout and r.stdout.strip().endswith("torch-constraint: no")


@pytest.mark.skipif(Path("/proc/driver/nvidia/gpus").exists(), reason="this machine has an NVIDIA GPU")
def test_script_on_this_cpu_machine_chooses_the_cpu_build(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "EVALKIT_KEEP_TORCH"}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not (Path(p) / "nvidia-smi").exists())
    r = subprocess.run([sys.executable, str(REPO / "tools" / "install_torch.py"), "--dry-run"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "no NVIDIA GPU" in r.stdout and r.stdout.strip().endswith("torch-constraint: yes")

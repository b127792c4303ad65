"""install.sh's torch choice (tools/install_torch.py): CPU build from PyTorch's CPU index without a GPU, falling back
with one line when that index is unreachable; a CUDA machine keeps its torch. The GPU probe is mocked; install.sh
runs with a stub python so that its log handling is tested without installing anything."""

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
    assert plan.probe == it.CPU_INDEX
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


def _recorder(fail_cpu_index: bool) -> tuple[list[list[str]], object]:
    ran: list[list[str]] = []

    def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
        ran.append(cmd)
        return _done(1 if fail_cpu_index and "--index-url" in cmd else 0)

    return ran, run


def test_pip_never_retries_against_the_cpu_index() -> None:
    """One warning per package per retry is what buried the fallback line: the probe decides, pip gets no retry."""
    first = it.make_plan("py", gpu=False, current=None, pin="2.13.0", keep=False).commands[0]
    assert first[first.index("--retries") + 1] == "0"
    assert int(first[first.index("--timeout") + 1]) <= 15


def test_unreachable_cpu_index_falls_back_at_once_with_one_line() -> None:
    plan = it.make_plan("py", gpu=False, current=None, pin="2.13.0", keep=False)
    ran, run = _recorder(fail_cpu_index=False)  # pip would "succeed" from find-links: it must not even be asked
    said: list[str] = []
    probed: list[str] = []

    def probe(url: str) -> str | None:
        probed.append(url)
        return "Name or service not known"

    assert it.execute(plan, run=run, say=said.append, probe=probe) == 0
    assert probed == [it.CPU_INDEX]
    assert ran == [plan.commands[-1]]  # straight to pip's own index: no attempt that retries against the dead one
    lines = [s for s in said if "falling back" in s]
    assert len(lines) == 1 and "cannot be reached (Name or service not known)" in lines[0] and "torch==2.13.0" in lines[0]


def test_reachable_index_says_so_and_a_failed_install_still_falls_back_with_one_line() -> None:
    plan = it.make_plan("py", gpu=False, current=None, pin="2.13.0", keep=False)
    ran, run = _recorder(fail_cpu_index=False)
    said: list[str] = []
    assert it.execute(plan, run=run, say=said.append, probe=lambda url: None) == 0
    assert ran == plan.commands[:1]
    assert any("is reachable: installing from it" in s for s in said) and not any("falling back" in s for s in said)

    ran, run = _recorder(fail_cpu_index=True)  # reachable by the probe, then pip fails against it after all
    said.clear()
    assert it.execute(plan, run=run, say=said.append, probe=lambda url: None) == 0
    assert ran == plan.commands
    assert sum("falling back" in s for s in said) == 1
    said.clear()
    assert it.execute(plan, run=lambda cmd, **kw: _done(1), say=said.append, probe=lambda url: None) == 1
    assert "could not install torch" in said[-1]


def test_probe_of_an_address_nothing_listens_on_fails_fast() -> None:
    import socket
    import time

    with socket.socket() as s:  # a free port on loopback, closed again: connection refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    why = it.probe_index(f"http://127.0.0.1:{port}/whl/cpu", timeout=2)
    assert why and time.monotonic() - t0 < 3


def test_probe_of_a_live_index_says_reachable(tmp_path: Path) -> None:
    import http.server
    import threading

    (tmp_path / "whl" / "cpu" / "torch").mkdir(parents=True)
    (tmp_path / "whl" / "cpu" / "torch" / "index.html").write_text("<a>torch-2.13.0+cpu.whl</a>")
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert it.probe_index(f"http://127.0.0.1:{server.server_port}/whl/cpu", timeout=5) is None
        assert it.probe_index(f"http://127.0.0.1:{server.server_port}/nothing", timeout=5) == "HTTP 404"
    finally:
        server.shutdown()
        server.server_close()


def _stub_python(tmp_path: Path) -> Path:
    """A `python` for install.sh that runs tools/install_torch.py for real (EVALKIT_KEEP_TORCH: installs nothing)
    and stands in for pip, saying on stderr that it ran, as pip's warnings do."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "python"
    stub.write_text(f'#!/bin/sh\nif [ "$1" = tools/install_torch.py ]; then exec {sys.executable} "$@"; fi\n'
                    'echo "stub pip: $*" >&2\n')
    stub.chmod(0o755)
    return bin_dir


def test_install_sh_log_redirected_to_a_file_keeps_every_line(tmp_path: Path) -> None:
    """`./install.sh > log 2>&1`: a `tee /dev/stderr` reopened the log with O_TRUNC mid-run, which dropped what
    pip had written and left NUL bytes where it had been."""
    env = {**os.environ, "PATH": f"{_stub_python(tmp_path)}{os.pathsep}{os.environ['PATH']}",
           "VIRTUAL_ENV": str(tmp_path / "venv"), "EVALKIT_KEEP_TORCH": "1"}
    log = tmp_path / "install.log"
    with log.open("wb") as fh:
        r = subprocess.run(["bash", str(REPO / "install.sh")], stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=120)
    text = log.read_bytes()
    assert r.returncode == 0, text
    assert b"\0" not in text
    lines = text.decode().splitlines()
    assert lines[0].startswith("stub pip: -m pip install -q --upgrade pip")  # written before install_torch ran
    assert any(line.startswith("install: EVALKIT_KEEP_TORCH is set") for line in lines)
    assert not any(line.startswith("torch-constraint") for line in lines)  # the decision is read, not logged
    assert lines[-1] == f"evalkit installed in {tmp_path / 'venv'}"


def test_script_decides_from_a_fake_nvidia_smi_on_path(tmp_path: Path) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\necho "GPU 0: NVIDIA H200 (UUID: GPU-1)"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    env.pop("EVALKIT_KEEP_TORCH", None)
    r = subprocess.run([sys.executable, str(REPO / "tools" / "install_torch.py"), "--dry-run"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "NVIDIA GPU found" in r.stderr and r.stdout == "torch-constraint: no\n"  # stdout: the decision alone


@pytest.mark.skipif(Path("/proc/driver/nvidia/gpus").exists(), reason="this machine has an NVIDIA GPU")
def test_script_on_this_cpu_machine_chooses_the_cpu_build(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "EVALKIT_KEEP_TORCH"}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not (Path(p) / "nvidia-smi").exists())
    r = subprocess.run([sys.executable, str(REPO / "tools" / "install_torch.py"), "--dry-run"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "no NVIDIA GPU" in r.stderr and r.stdout == "torch-constraint: yes\n"

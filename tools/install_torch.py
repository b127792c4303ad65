"""Choose and install the right torch build before evalkit's own install (stdlib only: runs before anything else).

    python tools/install_torch.py [--dry-run]

The rule (README, "Install"):
  * EVALKIT_KEEP_TORCH=1, or a machine with an NVIDIA GPU that already has torch: keep the installed torch.
  * A machine with an NVIDIA GPU and no torch: install torch from pip's configured index (PyPI's default build is the
    CUDA one).
  * A machine without an NVIDIA GPU: install the CPU build of the pinned torch from PyTorch's CPU wheel index,
    whatever pip's configuration points at: an unpinned or PyPI torch is a several-GB CUDA build. The index is
    probed once first (a few seconds, no retries): when it cannot be reached (an offline mirror, a firewall), one
    line says so and pip installs the pin from its own index instead; pip never retries against it.
What it says goes to stderr, pip's output too. Its only stdout is the last line, `torch-constraint: yes|no`: whether
later installs should be constrained by constraints.txt (not on a GPU machine, whose torch may be any CUDA build).
install.sh reads that line from a pipe and never copies the rest (a `tee /dev/stderr` there reopened and truncated
a redirected log).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Short: an unreachable index must fail fast (pip's default timeout here is 180 s, with 5 retries, each one a
# warning per package). The probe decides reachability once; pip then gets no retries against that index.
PROBE_TIMEOUT_S = 5
INDEX_TIMEOUT_S = 15

Runner = Callable[..., subprocess.CompletedProcess]


def pinned_torch(constraints: Path = REPO / "constraints.txt") -> str:
    """The `torch==X` line of constraints.txt (the one place the pin is written)."""
    for line in constraints.read_text(encoding="utf-8").splitlines():
        m = re.fullmatch(r"\s*torch\s*==\s*([^\s#]+)\s*(#.*)?", line)
        if m:
            return m.group(1)
    raise SystemExit(f"{constraints}: no 'torch==VERSION' line")


def has_nvidia_gpu(which: Callable[[str], str | None] = shutil.which, run: Runner = subprocess.run,
                   proc: Path = Path("/proc/driver/nvidia/gpus")) -> bool:
    """True when an NVIDIA GPU is visible: `nvidia-smi -L` lists one, or the driver exposes one under /proc."""
    smi = which("nvidia-smi")
    if smi:
        try:
            r = run([smi, "-L"], capture_output=True, text=True, timeout=20)
            if r.returncode == 0 and "GPU" in (r.stdout or ""):
                return True
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        return proc.is_dir() and any(proc.iterdir())
    except OSError:
        return False


def installed_torch(python: str, run: Runner = subprocess.run) -> str | None:
    """The torch version installed for `python` (e.g. '2.13.0+cpu'), or None."""
    r = run([python, "-c", "import importlib.metadata as m; print(m.version('torch'))"],
            capture_output=True, text=True)
    out = (r.stdout or "").strip()
    return out if r.returncode == 0 and out else None


def probe_index(url: str = CPU_INDEX, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when `url`'s torch page answers within `timeout` seconds (one try), else why not, in a few words.
    Honours the proxy variables (urllib does) and pip's certificate bundle (PIP_CERT), as pip would."""
    ctx = ssl.create_default_context(cafile=os.environ.get("PIP_CERT") or None)
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{url}/torch/", method="HEAD"), timeout=timeout,
                                    context=ctx) as r:
            return None if r.status < 400 else f"HTTP {r.status}"
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return str(reason) or type(e).__name__


@dataclass
class Plan:
    why: str
    commands: list[list[str]] = field(default_factory=list)  # tried in order until one succeeds
    fallback_note: str = ""  # said once, before the fallback (the last command) runs
    constrain: bool = True
    probe: str = ""  # an index the first command needs: probed first; unreachable -> straight to the fallback


def make_plan(python: str, gpu: bool, current: str | None, pin: str, keep: bool) -> Plan:
    pip = [python, "-m", "pip", "install", "-q"]
    if keep:
        return Plan(f"EVALKIT_KEEP_TORCH is set: keeping torch {current or '(none installed)'}", constrain=False)
    if gpu:
        if current:
            return Plan(f"NVIDIA GPU found: keeping the installed torch {current}", constrain=False)
        return Plan("NVIDIA GPU found and no torch installed: installing torch from pip's index (a CUDA build)",
                    [pip + ["torch"]], constrain=False)
    if current and current.split("+")[0] == pin and current.endswith("+cpu"):
        return Plan(f"no NVIDIA GPU: torch {current} (CPU build) is already installed")
    cpu = pip + ["--index-url", CPU_INDEX, "--timeout", str(INDEX_TIMEOUT_S), "--retries", "0", f"torch=={pin}"]
    fallback = pip + ["-c", str(REPO / "constraints.txt"), f"torch=={pin}"]
    return Plan(f"no NVIDIA GPU: installing the CPU build of torch {pin} from PyTorch's CPU wheel index",
                [cpu, fallback], probe=CPU_INDEX,
                fallback_note=(f"falling back to pip's configured index for torch=={pin} (on public PyPI that is a CUDA "
                               "build of several GB)"))


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _run_to_stderr(cmd: list[str]) -> subprocess.CompletedProcess:
    # pip's stdout joins our messages on stderr: stdout carries only the torch-constraint line install.sh reads.
    return subprocess.run(cmd, stdout=sys.stderr)


def execute(plan: Plan, run: Runner = _run_to_stderr, say: Callable[[str], None] = _say,
            probe: Callable[[str], str | None] = probe_index) -> int:
    """Run the plan's commands in order until one succeeds, saying in one line which index torch comes from."""
    say(f"install: {plan.why}")
    commands = plan.commands
    if plan.probe and len(commands) > 1:
        why_not = probe(plan.probe)
        if why_not is None:
            say(f"install: PyTorch's CPU wheel index ({plan.probe}) is reachable: installing from it")
        else:
            say(f"install: PyTorch's CPU wheel index ({plan.probe}) cannot be reached ({why_not}); {plan.fallback_note}")
            commands = commands[-1:]
    for i, cmd in enumerate(commands):
        if i > 0:
            say(f"install: installing from PyTorch's CPU wheel index failed (pip's messages above); {plan.fallback_note}")
        if run(cmd).returncode == 0:
            return 0
    if commands:
        say("install: could not install torch; see pip's messages above")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=sys.executable, help="the interpreter to install for")
    ap.add_argument("--dry-run", action="store_true", help="print the decision and the commands; install nothing")
    args = ap.parse_args(argv)
    plan = make_plan(args.python, has_nvidia_gpu(), installed_torch(args.python), pinned_torch(),
                     keep=bool(os.environ.get("EVALKIT_KEEP_TORCH")))
    if args.dry_run:
        _say(f"install: {plan.why}")
        if plan.probe:
            _say(f"  would probe: {plan.probe} (one try, {PROBE_TIMEOUT_S} s); unreachable: only the last command")
        for cmd in plan.commands:
            _say("  would run: " + " ".join(cmd))
        rc = 0
    else:
        rc = execute(plan)
    print(f"torch-constraint: {'yes' if plan.constrain else 'no'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())

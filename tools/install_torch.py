"""Choose and install the right torch build before evalkit's own install (stdlib only: runs before anything else).

    python tools/install_torch.py [--dry-run]

The rule (README, "Install"):
  * EVALKIT_KEEP_TORCH=1, or a machine with an NVIDIA GPU that already has torch: keep the installed torch.
  * A machine with an NVIDIA GPU and no torch: install torch from pip's configured index (PyPI's default build is the
    CUDA one).
  * A machine without an NVIDIA GPU: install the CPU build of the pinned torch from PyTorch's CPU wheel index,
    whatever pip's configuration points at: an unpinned or PyPI torch is a several-GB CUDA build. If that index
    cannot be reached (an offline mirror, a firewall), fall back, saying so, to what pip resolves for the pin.
The last line printed is `torch-constraint: yes|no`: whether later installs should be constrained by
constraints.txt (not on a GPU machine, whose torch may be any CUDA build).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Short: an unreachable index must fail fast (pip's default timeout here is 180 s, with 5 retries).
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


@dataclass
class Plan:
    why: str
    commands: list[list[str]] = field(default_factory=list)  # tried in order until one succeeds
    fallback_note: str = ""
    constrain: bool = True


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
    cpu = pip + ["--index-url", CPU_INDEX, "--timeout", str(INDEX_TIMEOUT_S), "--retries", "1", f"torch=={pin}"]
    fallback = pip + ["-c", str(REPO / "constraints.txt"), f"torch=={pin}"]
    return Plan(f"no NVIDIA GPU: installing the CPU build of torch {pin} from PyTorch's CPU wheel index",
                [cpu, fallback],
                fallback_note=(f"install: PyTorch's CPU wheel index ({CPU_INDEX}) could not be reached; installing "
                               f"torch=={pin} from pip's configured index instead (on public PyPI that is a CUDA "
                               "build of several GB)"))


def execute(plan: Plan, run: Runner = subprocess.run, say: Callable[[str], None] = print) -> int:
    say(f"install: {plan.why}")
    for i, cmd in enumerate(plan.commands):
        if i > 0 and plan.fallback_note:
            say(plan.fallback_note)
        if run(cmd).returncode == 0:
            return 0
    if plan.commands:
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
        print(f"install: {plan.why}")
        for cmd in plan.commands:
            print("  would run: " + " ".join(cmd))
        rc = 0
    else:
        rc = execute(plan)
    print(f"torch-constraint: {'yes' if plan.constrain else 'no'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())

"""Which device a run uses: the one probe behind `--device auto|cpu|cuda` for the generate stage, `evalkit
backends` and the Python API.

A worker reads its GPU's compute capability itself (evalkit/generate/worker/run.py): it is pinned to one GPU with
CUDA_VISIBLE_DEVICES, which need not be the GPU the stage's process sees first. Scoring's `--device` also takes
`cuda:N` and keeps its own check (evalkit/score/common.py resolve_device).
"""

from __future__ import annotations

import os
from pathlib import Path

from evalkit.errors import EvalkitError

DEVICES = ("auto", "cpu", "cuda")


def choose_device(requested: str, option: str = "--device", hint: str = "") -> str:
    """"cpu" or "cuda" for `requested` (auto: CUDA when torch can use it). One-line EvalkitError, naming `option`,
    when `requested` is none of auto, cpu, cuda, or asks for CUDA torch cannot use (`hint` is added to it).
    `cpu` imports no torch."""
    if requested not in DEVICES:
        raise EvalkitError(f"{option} {requested!r}: expected auto, cpu or cuda")
    if requested == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise EvalkitError(f"{option} cuda: no CUDA device is available to torch (torch {torch.__version__}, CUDA "
                           f"build: {torch.version.cuda or 'no'}){hint}")
    return "cpu"


def device_capability(requested: str, option: str = "--device",
                      hint: str = "") -> tuple[str, tuple[int, int] | None]:
    """The chosen device (choose_device) and, on CUDA, the first GPU's compute capability."""
    device = choose_device(requested, option, hint)
    if device == "cpu":
        return "cpu", None
    import torch

    return "cuda", tuple(torch.cuda.get_device_capability())


def device_without_torch(requested: str) -> str | None:
    """The device choose_device would pick, where that is certain without importing torch ("cpu"); None otherwise
    (whether torch can use a GPU takes torch to say)."""
    if requested == "cpu" or (requested == "auto" and not nvidia_gpu_present()):
        return "cpu"
    return None


def nvidia_gpu_present() -> bool:
    """Whether this machine has an NVIDIA GPU, judged from the driver's device nodes (no CUDA call, no torch)."""
    return os.path.exists("/dev/nvidiactl") or any(Path("/dev").glob("nvidia[0-9]*"))


def available_memory_bytes(device: str) -> int | None:
    """Memory a computation on `device` ("cpu", "cuda", "cuda:N") can still take: the kernel's MemAvailable on a
    CPU, the GPU's free memory plus what torch's caching allocator holds unused on CUDA; None when unknown."""
    if device.startswith("cuda"):
        import torch

        dev = torch.device(device)
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev))
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        return kib * 1024
    except (OSError, StopIteration, ValueError):
        return None

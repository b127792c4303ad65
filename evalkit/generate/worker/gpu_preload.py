"""The forkserver's preload on a machine with an NVIDIA GPU: the run's family modules, transformers, the quantization
libraries and the tokenizers, imported once instead of in every backend's process (#25 item 7: a unit's start-up).

Why this needs care: a process forked after CUDA was initialized cannot use CUDA. On a GPU machine the family's
pipeline module imports diffusers' and transformers' quantizers, which import bitsandbytes (whose import asks every
GPU's compute capability, `bitsandbytes/cuda_specs.py`) and torchao's prototype kernels (which ask torch whether
triton can run here, and torch reads the device's properties), and torch creates a CUDA context to answer either
(benchmarks/results/gpu-2026-11-21.md: "diffusers.pipelines.flux.pipeline_flux: CUDA initialized"). So until now
these imports ran in every backend's process: 7.6-8.7 s a unit on an H100 (benchmarks/results/
startup-h100-2026-12-06.md). While this module imports them, both questions are answered from NVML instead
(`capability_from`): the same (major, minor) the CUDA runtime reports, read without a CUDA context. It does so only
when every GPU NVML sees has the same capability (then which index is asked does not matter); otherwise it imports
nothing and each worker imports for itself, as before. Afterwards torch's own functions are back, and if CUDA was
initialized all the same the stage learns it from the first forked worker (evalkit.generate.spawn: it restarts the
forkserver without this preload) and remembers it for these package versions (`known_to_poison`), so that later
runs start without it.

One decision moves from the worker to the forkserver: bitsandbytes picks at import whether to switch devices around
each kernel (`bitsandbytes/functional.py`: when torch counts more than one GPU). A worker sees its one GPU; the
forkserver of a rank on a multi-GPU host sees them all, so forked bnb workers there make that switch (a
cudaGetDevice per kernel call; the images are the same). On a one-GPU machine nothing differs.

The forkserver imports evalkit.generate.worker.preload_gpu, which runs `preload_from_environment`: the stage passes
the request in GPU_PRELOAD_ENV (the modules, and the tokenizers of evalkit.generate.worker.tokenizers).
EVALKIT_GPU_PRELOAD=narrow turns it off (benchmarks compare both; docs/environment.md).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

GPU_PRELOAD_ENV = "EVALKIT_GPU_PRELOAD_REQUEST"
MODE_ENV = "EVALKIT_GPU_PRELOAD"  # "full" (default) or "narrow"
MODES = ("full", "narrow")


def mode() -> str:
    """The GPU preload asked for: EVALKIT_GPU_PRELOAD, "full" unless set; anything else is an error."""
    value = os.environ.get(MODE_ENV, "full") or "full"
    if value not in MODES:
        raise ValueError(f"{MODE_ENV}={value!r}: expected one of {', '.join(MODES)}")
    return value


def nvml_capabilities() -> list[tuple[int, int]] | None:
    """Every GPU's CUDA compute capability as NVML reports it (no CUDA context is created); None when NVML cannot
    be asked (no driver library, an error from it)."""
    from ctypes import CDLL, byref, c_int, c_uint, c_void_p

    try:
        nvml = CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    if nvml.nvmlInit_v2() != 0:
        return None
    try:
        count = c_uint(0)
        if nvml.nvmlDeviceGetCount_v2(byref(count)) != 0:
            return None
        caps = []
        for i in range(count.value):
            handle, major, minor = c_void_p(), c_int(-1), c_int(-1)
            if (nvml.nvmlDeviceGetHandleByIndex_v2(c_uint(i), byref(handle)) != 0
                    or nvml.nvmlDeviceGetCudaComputeCapability(handle, byref(major), byref(minor)) != 0):
                return None
            caps.append((major.value, minor.value))
        return caps
    finally:
        nvml.nvmlShutdown()


def uniform_capability(caps: list[tuple[int, int]] | None) -> tuple[int, int] | None:
    """The one capability every GPU has, or None (no GPU, NVML unavailable, or GPUs that differ)."""
    return caps[0] if caps and len(set(caps)) == 1 else None


@contextlib.contextmanager
def capability_from(capability: tuple[int, int], torch: Any) -> Iterator[None]:
    """Within the block, the two import-time questions that create a CUDA context are answered from `capability`:
    `torch.cuda.get_device_capability(any device)` (bitsandbytes/cuda_specs.py) and
    `torch.utils._triton.has_triton()` (torchao's prototype kernels, e.g. torchao/prototype/mx_formats/kernels.py,
    through dynamo's device properties; found on an H100, benchmarks/results/startup-h100-2026-12-06.md). has_triton
    is torch's own answer for a CUDA device: the triton package importable and a capability of at least 7.0 (the
    caller preloads nothing below that). A module that binds has_triton by name keeps this constant answer, which
    is what torch's cached function would have returned."""
    import torch.utils._triton as triton_utils

    original: Callable[..., tuple[int, int]] = torch.cuda.get_device_capability
    original_has_triton = triton_utils.has_triton
    answer = bool(triton_utils.has_triton_package()) and capability >= (7, 0)

    def from_nvml(device: Any = None) -> tuple[int, int]:
        return capability

    @functools.cache
    def has_triton() -> bool:
        return answer

    torch.cuda.get_device_capability = from_nvml
    triton_utils.has_triton = has_triton
    try:
        yield
    finally:
        torch.cuda.get_device_capability = original
        triton_utils.has_triton = original_has_triton


def deciding_packages() -> tuple[str, ...]:
    """The distributions whose import-time behaviour decides whether the preload leaves CUDA alone: every backend
    library's (its Library record's `versioned`: torch, diffusers and the quantization libraries), transformers and
    triton. More than the preload imports: a version change in any of them only means trying the preload again."""
    from evalkit.quantizers.registry import library_list

    return tuple(sorted({p for lib in library_list() for p in lib.versioned} | {"transformers", "triton"}))


def _outcome_file(family: str | None) -> Path:
    from evalkit.inputs_key import package_versions
    from evalkit.paths import cache_dir

    key = json.dumps([family, package_versions(deciding_packages())], sort_keys=True)
    return cache_dir() / "gpu-preload" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def known_to_poison(family: str | None) -> str | None:
    """When an earlier run with these package versions and this family found that the preload left CUDA initialized:
    when and why (the stage then starts with the narrow preload, instead of paying a poisoned fork and a restarted
    forkserver again in every run). None otherwise."""
    try:
        data = json.loads(_outcome_file(family).read_text(encoding="utf-8"))
        return f"{data['when']}: {data['why']}"
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember_poisoned(family: str | None, why: str) -> None:
    """Record that the preload poisoned forks with these package versions (a new version of any of them tries it
    again). Best effort: a cache that cannot be written costs only the next run's restart."""
    from evalkit.io import atomic_write_json
    from evalkit.inputs_key import package_versions
    from evalkit.timeutil import utc_now

    try:
        path = _outcome_file(family)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"when": utc_now(), "why": why, "family": family,
                                 "versions": package_versions(deciding_packages())})
    except OSError:
        pass


def request(modules: list[str], tokenizers: tuple[str, tuple[str, ...]] | None) -> str:
    """The value of GPU_PRELOAD_ENV for these modules and (pipeline directory, tokenizer components)."""
    return json.dumps({"modules": list(modules),
                       "tokenizers": None if tokenizers is None else [tokenizers[0], list(tokenizers[1])]})


def preload(asked: dict[str, Any], capability: tuple[int, int] | None,
            say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> list[str]:
    """Import `asked["modules"]` and load its tokenizers under `capability_from`; returns the modules imported.
    Nothing when `capability` is None. An import that fails is left to the worker, which imports it itself and
    records the error against its backend."""
    import torch

    if capability is None or capability < (7, 0):
        why = ("no single compute capability for every GPU" if capability is None
               else f"capability {capability}, below what triton supports")
        say(f"gpu preload: skipped (NVML gave {why})")
        return []
    done = []
    with capability_from(capability, torch):
        for name in asked.get("modules") or []:
            try:
                importlib.import_module(name)
                done.append(name)
            except Exception as e:  # noqa: BLE001 - see the docstring
                say(f"gpu preload: {name} not imported: {type(e).__name__}: {str(e)[:200]}")
        tok = asked.get("tokenizers")
        if tok:
            from evalkit.generate.worker.tokenizers import load_tokenizers

            try:
                load_tokenizers(tok[0], tok[1])
            except Exception as e:  # noqa: BLE001 - the worker loads them and reports it
                say(f"gpu preload: tokenizers not loaded: {type(e).__name__}: {str(e)[:200]}")
    say(f"gpu preload: {len(done)} modules at capability {capability}; CUDA initialized: "
        f"{torch.cuda.is_initialized()}")
    return done


def preload_from_environment() -> list[str]:
    """In the forkserver: do what GPU_PRELOAD_ENV asks (nothing without it)."""
    raw = os.environ.get(GPU_PRELOAD_ENV)
    if not raw:
        return []
    return preload(json.loads(raw), uniform_capability(nvml_capabilities()))

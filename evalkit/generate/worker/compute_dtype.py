"""Which dtype each component of the pipeline computes in: chosen once per run from whether this CPU has native bf16
kernels, written to the manifest (`compute`), and applied alike by every backend's worker.

Why: on a CPU without native bf16 (x86 without AVX-512 or AMX, i.e. most AMD and consumer Intel parts) torch has no
fast bf16 matmul or convolution and falls back to generic loops 30-70x slower than float32. The tiny model's image
then took 8.6 s instead of 0.14 s, nearly all of it in the VAE (benchmarks/results/tiny-run-avx2-2026-12-05.md).

The rule (`plan_compute`):

- CUDA, or a CPU with native bf16: every component computes in bf16, as always.
- A CPU without native bf16:
  - components no backend quantizes (the VAE role) compute in float32, for any model. They are the same module in
    every backend, so the reference and each backend still differ by quantization alone.
  - the tiny model computes in float32 throughout: loaded in float32, quantizing backends quantize those weights and
    their compute dtypes (GGUF's, layerwise casting's, bitsandbytes') follow the plan, so every backend, the
    reference included, computes in float32. Its images carry no quality information (random weights); it exists
    to run every backend in seconds, and bf16 made the README's run 14x slower.
  - a real model's denoiser and text encoders stay bf16: that bf16 path is what such a study measures (each
    library's bf16 kernels, and memory that float32 would double); the run says at its start that it will be slow.

Where the plan has float32 components on a CPU, the worker also turns oneDNN off (`thread_invariant_convolutions`):
its float32 convolutions round differently at different thread counts, and a `--jobs` rank runs at fewer threads
than one process, whose images it must reproduce bit for bit.

The choice comes from torch's own test for oneDNN's bf16 kernels (the one torch makes before using them), not from
a timed probe: a timing on a loaded machine could flip the choice, and with it the images. `EVALKIT_CPU_BF16=native`
or `=slow` overrides the test (to reproduce another machine's choice). A run keeps the plan its manifest holds, so a
resumed or extended run never mixes dtypes; a run made before plans were recorded keeps bf16 throughout.

Importing this module imports no torch.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Mapping

from evalkit.errors import EvalkitError

ENV = "EVALKIT_CPU_BF16"  # auto (default) | native | slow
BF16 = "bfloat16"
FP32 = "float32"
VAE_ROLE = "vae"  # evalkit.families.base.VAE: never quantized by any backend
NO_ONEDNN = ("; float32 convolutions run without oneDNN (thread_invariant_convolutions), so images are "
             "byte-identical at any thread count and number of ranks")


def cpu_bf16() -> dict[str, Any]:
    """This CPU's bf16 facts: torch's capability name, whether oneDNN's bf16 kernels are used, and on what basis."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    forced = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if forced not in ("auto", "native", "slow"):
        raise EvalkitError(f"{ENV}={os.environ[ENV]!r}: expected auto, native or slow")
    if forced != "auto":
        return {"capability": capability, "native_bf16": forced == "native", "basis": f"{ENV}={forced}"}
    try:
        # True on AVX-512 (BW/VL/DQ), AMX and Arm bf16; false on AVX2-only x86, where torch uses generic loops.
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        basis = "torch.ops.mkldnn._is_mkldnn_bf16_supported()"
    except (AttributeError, RuntimeError):
        native = capability.upper().startswith(("AVX512", "AMX"))
        basis = "torch.backends.cpu.get_cpu_capability()"
    return {"capability": capability, "native_bf16": native, "basis": basis}


def plan_compute(device: str, model_kind: str, components: Mapping[str, str],
                 cpu: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest's `compute` record for a new run. `components`: component name -> role (the family's).
    `cpu`: `cpu_bf16()`'s facts (asked for when None and the device is a CPU)."""
    dtypes = {name: BF16 for name in components}
    if device != "cpu":
        return {"dtypes": dtypes, "reason": f"{device}: bf16 throughout", "cpu": None, "summary": ""}
    cpu = dict(cpu or cpu_bf16())
    if cpu["native_bf16"]:
        return {"dtypes": dtypes, "reason": f"CPU with native bf16 kernels ({cpu['capability']}): bf16 throughout",
                "cpu": cpu, "summary": ""}
    why = f"this CPU has no native bf16 kernels ({cpu['capability']}; {cpu['basis']})"
    if model_kind == "tiny":
        dtypes = {name: FP32 for name in components}
        return {"dtypes": dtypes, "cpu": cpu,
                "reason": f"{why}: the tiny model computes in float32 throughout, in every backend alike (its images "
                          "carry no quality information; bf16 there is 30-70x slower than float32)" + NO_ONEDNN,
                "summary": f"float32 compute throughout (CPU without native bf16: {cpu['capability']})"}
    fp32 = [n for n, role in components.items() if role == VAE_ROLE]
    for n in fp32:
        dtypes[n] = FP32
    bf16 = [n for n in components if n not in fp32]
    return {"dtypes": dtypes, "cpu": cpu,
            "reason": f"{why}: {', '.join(fp32) or 'no component'} (never quantized) computes in float32 in every "
                      f"backend alike; {', '.join(bf16)} stay bf16, the path the study measures"
                      + (NO_ONEDNN if fp32 else ""),
            "summary": f"{', '.join(fp32)} in float32, the rest in bf16 (CPU without native bf16: "
                       f"{cpu['capability']})"}


def legacy_compute(components: Mapping[str, str]) -> dict[str, Any]:
    """The plan of a run whose manifest has none (made before plans were recorded): bf16 throughout, as it was."""
    return {"dtypes": {name: BF16 for name in components}, "cpu": None, "summary": "",
            "reason": "kept from a run started before evalkit chose compute dtypes: bf16 throughout, so its images "
                      "stay comparable with those already made"}


def dtypes_of(manifest: Mapping[str, Any]) -> dict[str, str]:
    """Component -> dtype name from a manifest (empty: bf16 throughout)."""
    return dict(((manifest.get("compute") or {}).get("dtypes")) or {})


def load_dtype(dtypes: Mapping[str, str]) -> Any:
    """What `from_pretrained(dtype=...)` takes for the plan: one torch dtype, or {component: dtype, "default": ...}."""
    import torch

    names = set(dtypes.values()) or {BF16}
    if len(names) == 1:
        return getattr(torch, names.pop())
    return {"default": torch.bfloat16, **{n: getattr(torch, d) for n, d in dtypes.items() if d != BF16}}


def cast_inputs(pipe: Any, dtypes: Mapping[str, str]) -> list[str]:
    """Components computing in another dtype than the rest receive the pipeline's tensors in the rest's dtype (Flux
    passes bf16 latents straight to `vae.decode`): cast their floating inputs at the component's entry points
    (`forward`, and a VAE's `decode`/`encode`). Returns the components so wrapped."""
    import torch

    if len(set(dtypes.values())) <= 1:
        return []
    wrapped = []
    for name, dname in dtypes.items():
        if dname == BF16:
            continue
        module = getattr(pipe, name, None)
        if not isinstance(module, torch.nn.Module):
            continue
        dtype = getattr(torch, dname)
        module.register_forward_pre_hook(lambda m, args, kwargs, d=dtype: (_cast(args, d), _cast(kwargs, d)),
                                         with_kwargs=True)
        for method in ("decode", "encode"):
            fn = getattr(module, method, None)
            if callable(fn):
                setattr(module, method, _casting(fn, dtype))
        wrapped.append(name)
    return wrapped


def thread_invariant_convolutions(device: str, dtypes: Mapping[str, str]) -> bool:
    """On a CPU plan with float32 components, turn oneDNN off for this worker, so that float32 convolutions take
    torch's own im2col + GEMM path. Returns whether it did.

    Why: oneDNN's float32 convolution partitions its work by the intra-op thread count, and its sums then round
    differently: the tiny VAE's 1x1 `conv_shortcut` (64 -> 32 channels at 32x32) gave results 5e-7 apart at 1 and 2
    threads, enough to flip a pixel of one image in three. A rank of `--jobs 2` runs at half the threads of one
    process, so its images were no longer byte-identical to one process's (docs/distributed.md promises they are).
    torch's own path gives the same bits at any thread count (VAE decode about 1.3x slower on the tiny model).
    Only float32 convolutions are affected: torch uses oneDNN for bf16 ones only on a CPU with native bf16, where
    the plan is bf16 throughout and this changes nothing; linears never go through this flag (MKL GEMM)."""
    import torch

    if device != "cpu" or FP32 not in set(dtypes.values()):
        return False
    torch.backends.mkldnn.enabled = False
    return True


def _casting(fn: Any, dtype: Any) -> Any:
    import functools

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(*_cast(args, dtype), **_cast(kwargs, dtype))

    return call


def _cast(x: Any, dtype: Any) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        return x.to(dtype) if x.is_floating_point() and x.dtype != dtype else x
    if isinstance(x, tuple):
        return tuple(_cast(v, dtype) for v in x)
    if isinstance(x, list):
        return [_cast(v, dtype) for v in x]
    if isinstance(x, dict):
        return {k: _cast(v, dtype) for k, v in x.items()}
    return x


@contextlib.contextmanager
def observe_activations(pipe: Any, names: list[str]) -> Iterator[dict[str, set[str]]]:
    """While open, collect the floating dtypes of the outputs of each component's layers that hold parameters:
    {component: {"float32", ...}}. What the record states the component computed in, observed, not assumed."""
    import torch

    seen: dict[str, set[str]] = {n: set() for n in names}
    handles = []

    def hook(name: str) -> Any:
        def record(_m: Any, _args: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                seen[name].add(str(out.dtype).replace("torch.", ""))
        return record

    for name in names:
        module = getattr(pipe, name, None)
        if not isinstance(module, torch.nn.Module):
            continue
        for m in module.modules():
            if next(m.children(), None) is None and next(m.parameters(recurse=False), None) is not None:
                handles.append(m.register_forward_hook(hook(name)))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


# Bits of mantissa: a layer computing with fewer than the plan's is a library forcing its own, lower dtype. More is
# fine (transformers keeps T5's `wo` layers in float32 in a bf16 model, by design).
_MANTISSA = {"float64": 52, "float32": 23, "float16": 10, "bfloat16": 7}


def mismatch(planned: Mapping[str, str], observed: Mapping[str, Any]) -> str | None:
    """Why a backend computed below the run's plan (a library that forces its own dtype), or None."""
    bad = []
    for name, want in planned.items():
        lower = sorted(d for d in observed.get(name) or () if _MANTISSA.get(d, 99) < _MANTISSA.get(want, 0))
        if lower:
            bad.append(f"{name} computed partly in {'/'.join(lower)}, the run's plan says {want}")
    return "; ".join(bad) or None


def record_activations(record: dict[str, Any], planned: Mapping[str, str], seen: Mapping[str, set[str]]) -> str | None:
    """Write what each component computed in (`numerics.activation_dtypes`) into a generation record; a dtype below
    the plan's is added to `quantization.partial_reason` (the backend is then not comparable as it stands) and
    returned."""
    record["numerics"]["activation_dtypes"] = {n: sorted(d) for n, d in seen.items() if d}
    below = mismatch(planned, seen)
    if below:
        q = record["quantization"]
        q["partial_reason"] = "; ".join(r for r in (q.get("partial_reason"), below) if r)
    return below

"""Load a pipeline with one backend recipe and its modifiers, and inspect what the load produced.

Runs inside the worker process only (imports torch and diffusers).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Callable

import torch

from evalkit.generate.worker.compute_dtype import cast_inputs, load_dtype, thread_invariant_convolutions
from evalkit.quantizers.base import BuildContext
from evalkit.families.base import ModelFamily
from evalkit.quantizers.registry import BackendSpec, quantizer_for, resolve_components


def _describe_config(cfg: Any) -> Any:
    """A JSON-able description of a quantization config (for the record)."""
    for attr in ("to_dict", "to_json_string"):
        if hasattr(cfg, attr):
            try:
                d = cfg.to_dict() if attr == "to_dict" else cfg.to_json_string()
                return _jsonable(d)
            except Exception:  # some configs (torchao objects inside) don't serialise; fall back to repr
                break
    return repr(cfg)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return repr(x)


def _distribution_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def load_pipeline(spec: BackendSpec, ctx: BuildContext, family: ModelFamily,
                  requested_components: tuple[str, ...] | None,
                  loaded: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Load the family's pipeline for `spec` (not yet moved to the device). Returns (pipe, quantization info).
    `loaded`: components already built (the run's tokenizers), passed to `from_pretrained` as they are.

    The backend's quantizer gives a config per component (one `PipelineQuantizationConfig(quant_mapping=...)`), or
    loads a component itself (a GGUF file), or transforms the pipeline after loading (layerwise casting)."""
    import diffusers
    from diffusers import PipelineQuantizationConfig

    b = spec.backend
    quantizer = quantizer_for(b)
    components, note = resolve_components(b, family, requested_components, ctx.device)
    info: dict[str, Any] = {"components_quantized": [c.name for c in components], "resolved_config": {}, "note": note,
                            "library": b.library.key, "library_version": _distribution_version(b.library.pip_name)}
    # bf16, or the run's compute plan (float32 on a CPU without native bf16: evalkit/generate/worker/compute_dtype.py)
    kwargs: dict[str, Any] = {"dtype": load_dtype(ctx.compute_dtypes), **(loaded or {})}

    mapping: dict[str, Any] = {}
    for c in components:
        loaded = quantizer.load_component(b, c, ctx, family, info)
        if loaded is not None:
            kwargs[c.name] = loaded
            continue
        cfg = quantizer.config(b, c, ctx)
        if cfg is not None:
            mapping[c.name] = cfg
    if mapping:
        info["resolved_config"].update({c: {"class": f"{type(cfg).__module__}.{type(cfg).__name__}",
                                            "config": _describe_config(cfg),
                                            # torchao's config version picks its tensor path; serialised configs hide it
                                            "config_version": getattr(getattr(cfg, "quant_type", None), "version", None)}
                                        for c, cfg in mapping.items()})
        kwargs["quantization_config"] = PipelineQuantizationConfig(quant_mapping=mapping)

    if ctx.device == "cuda" and b.library.quantize_on_gpu and not spec.modifiers_offload:
        # Quantize each layer on the GPU as it loads, not on the CPU before a .to("cuda"). torchao packs int4
        # weights with CUDA-only ops, and optimum-quanto's freeze() on the CPU takes minutes at full size
        # (benchmarks/results/gpu-2026-11-21.md). The price is
        # headroom for one layer's bf16 and quantized weights at once while loading ("load peak reserved").
        kwargs["device_map"] = "cuda"
        info["device_map"] = "cuda"
    # What the family loads itself (ModelFamily.supplied_components) goes in after from_pretrained skipped it.
    supplied = family.supplied_components(ctx.model_path) if family.supplied_components else {}
    pipe = getattr(diffusers, family.pipeline_class).from_pretrained(
        ctx.model_path, **kwargs, **{name: None for name in supplied if name not in kwargs})
    if supplied:
        pipe.register_modules(**supplied)
    cast_inputs(pipe, ctx.compute_dtypes)
    thread_invariant_convolutions(ctx.device, ctx.compute_dtypes)  # images independent of --jobs/--threads

    done = quantizer.post_load(b, pipe, components, ctx)
    if done is not None:
        info["post_load"] = done
        if not info["resolved_config"]:  # a transform that is the whole recipe (layerwise casting); else it completes one
            info["resolved_config"] = {c.name: {"class": f"post-load transform of {b.library.display}", "config": done}
                                       for c in components}
    return pipe, info


def place_pipeline(pipe: Any, spec: BackendSpec, device: str) -> dict[str, Any]:
    """Move to the device, or set up offloading instead. Returns what was done, for the record."""
    mods = set(spec.modifiers)
    if "offload" in mods:
        pipe.enable_model_cpu_offload(device=device)
        return {"placement": "model_cpu_offload"}
    if "group-offload" in mods:
        onload = torch.device(device)
        pipe.enable_group_offload(onload_device=onload, offload_device=torch.device("cpu"),
                                  offload_type="leaf_level", use_stream=True)
        return {"placement": "group_offload", "offload_type": "leaf_level", "use_stream": True}
    pipe.to(device)
    return {"placement": device}


def apply_compile(pipe: Any, spec: BackendSpec, compile_config: dict[str, Any] | None,
                  cache_root: str, family: ModelFamily) -> dict[str, Any] | None:
    """`+compile`: compile as the run's `[compile]` settings say, with the compile caches under evalkit's cache dir
    (set before anything compiles: compilation itself happens lazily, in the warm-up)."""
    if "compile" not in spec.modifiers:
        return None
    from evalkit.generate.worker.compile_options import apply_compile as compile_component
    from evalkit.generate.worker.compile_options import prepare_compile_cache, resolve_compile

    settings = resolve_compile(compile_config, spec.backend.name, family.denoiser.name)
    cache = prepare_compile_cache(cache_root)
    blocks = family.compile_blocks if settings.component == family.denoiser.name else ()
    return {**compile_component(pipe, settings, blocks), "cache": cache, "torch": torch.__version__}


# ---------------------------------------------------------------------------------------------------------------
# Inspection: proof that quantization happened, and what the weights cost.


def _tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a (possibly subclassed, quantized) tensor really holds: flatten tensor subclasses to their parts."""
    if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, torch.nn.Parameter):
        try:
            names, _ = t.__tensor_flatten__()
            return sum(_tensor_bytes(getattr(t, n)) for n in names if isinstance(getattr(t, n, None), torch.Tensor))
        except Exception:
            pass
    total = t.numel() * t.element_size()
    qs = getattr(t, "quant_state", None)  # bitsandbytes 4-bit keeps absmax etc. beside the packed data
    if qs is not None:
        for name in ("absmax", "code"):
            v = getattr(qs, name, None)
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
        nested = getattr(qs, "state2", None)
        if nested is not None and isinstance(getattr(nested, "absmax", None), torch.Tensor):
            total += nested.absmax.numel() * nested.absmax.element_size()
    scb = getattr(t, "SCB", None)  # bitsandbytes 8-bit row scales
    if isinstance(scb, torch.Tensor):
        total += scb.numel() * scb.element_size()
    return total


def component_footprint(module: torch.nn.Module) -> dict[str, Any]:
    params = 0
    nbytes = 0
    dtypes: Counter[str] = Counter()
    seen: set[int] = set()
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        params += t.numel()
        nbytes += _tensor_bytes(t)
        dtypes[str(t.dtype)] += t.numel()
    return {"params": params, "bytes": nbytes, "gib": nbytes / 2**30, "dtypes": dict(dtypes)}


def pipeline_footprint(pipe: Any, family: ModelFamily) -> dict[str, Any]:
    out: dict[str, Any] = {}
    total = 0
    for name in (c.name for c in family.components):
        m = getattr(pipe, name, None)
        if isinstance(m, torch.nn.Module):
            out[name] = component_footprint(m)
            total += out[name]["bytes"]
    out["total_bytes"] = total
    out["total_gib"] = total / 2**30
    return out


_FLOAT = {torch.float32, torch.float16, torch.bfloat16}


def layer_types(module: torch.nn.Module) -> tuple[dict[str, int], int, int]:
    """Counts of `ModuleClass[WeightClass:dtype]` over Linear-like layers (a 2-D weight, or an nn.Linear subclass
    whose packed weight is flat, or a packed `qweight` with no float `weight`: AutoRound/GPTQ and Nunchaku layers),
    plus how many of those are quantized (a subclassed weight or a non-float weight dtype; a wrapper class around a
    plain bf16 weight is a layer its library left unquantized, e.g. ModelOpt's excluded proj_out) and how many
    there are in all."""
    counts: Counter[str] = Counter()
    quantized = 0
    total = 0
    for m in module.modules():
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor):
            w = getattr(m, "qweight", None)
        if not isinstance(w, torch.Tensor) or isinstance(m, torch.nn.Embedding):
            continue
        if w.dim() != 2 and not (isinstance(m, torch.nn.Linear) and w.dim() >= 1):
            continue
        total += 1
        wcls = type(w).__name__
        key = f"{type(m).__name__}[{wcls}:{str(w.dtype).replace('torch.', '')}]"
        counts[key] += 1
        plain = type(w) in (torch.Tensor, torch.nn.Parameter) and w.dtype in _FLOAT
        if not plain:
            quantized += 1
    return dict(counts), quantized, total


def inspect_quantization(pipe: Any, family: ModelFamily) -> dict[str, Any]:
    out: dict[str, Any] = {"layer_types": {}, "quantized_linear_count": {}, "linear_count": {}}
    for name in (c.name for c in family.quantizable()):
        m = getattr(pipe, name, None)
        if isinstance(m, torch.nn.Module):
            types, q, total = layer_types(m)
            out["layer_types"][name] = types
            out["quantized_linear_count"][name] = q
            out["linear_count"][name] = total
    return out


def timed(fn: Callable[[], Any], device: str) -> tuple[Any, float]:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0

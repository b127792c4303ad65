"""BFL: Black Forest Labs' own fp8 row-wise (`fp8r`) and NVFP4 checkpoints, read by diffusers'
`BFLQuantizationConfig` (in diffusers itself: no extra package).

diffusers loads them only through `from_single_file` (its BFL quantizer pairs each `<layer>.weight` with its
`weight_scale` from the whole state dict, which only that route passes; `from_pretrained` fails on serialising the
config's dtype). So a BFL backend is a file, as GGUF is: evalkit writes one from the bf16 weights in BFL's layout
with diffusers' own `quantize_fp8r` / `quantize_nvfp4` (once, cached under `<cache>/bfl/`, content-keyed and atomic,
as a `prepare` step off the load clock), or reads one given with `--backend NAME=FILE.safetensors`.

Layout (diffusers/quantizers/bfl/utils.py): fp8r = `weight` float8_e4m3fn [N, K] + `weight_scale` fp32 [N];
nvfp4 = `weight` uint8 [N, K/2] (two E2M1 codes) + `weight_scale` float8_e4m3fn [N, K/16] + `weight_scale_2` fp32
scalar + `input_scale` fp32 scalar (activation amax / (448*6), calibrated here on the study's prompts with the bf16
model; only Blackwell's kernel reads it). As in BFL's checkpoints only the linears inside the repeated blocks are
quantized; embedders and the final projection stay unquantized. The file is the same on every machine (written from
the bf16 weights, calibrated in bf16); loading follows the run's compute plan: the quantized linears dequantize to,
and the unquantized layers are loaded in, the plan's dtype (float32 for the tiny model on a CPU without native bf16,
evalkit/generate/worker/compute_dtype.py), as the reference computes.

Runtime: fp8r takes `torch._scaled_mm` on CUDA SM >= 8.9 (a real FP8 W8A8 GEMM, per-row scales on both sides), else
dequantizes per forward; nvfp4 needs SM >= 10 and flashinfer, else dequantizes per forward (a quality row only).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import time
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

from evalkit.quantizers.base import DENOISER_ROLE, Backend, BuildContext, Library, Quantizer, release_device_memory

if TYPE_CHECKING:
    from evalkit.families.base import Component

LIBRARY = Library("bfl", "diffusers", "diffusers", "BFL (diffusers)", 9, "#332288", layer_marker="BFL",
                  versioned=("diffusers",), quant_methods=("bfl",))

WRITER_VERSION = "1"  # bump when the written bytes would change
IN_A_BLOCK = re.compile(r"(^|\.)\d+\.")  # a layer inside a repeated block (a ModuleList index in its name)
SCALE_SUFFIXES = (".weight_scale", ".weight_scale_2", ".input_scale")
# Run when named or with `--backends all`, not with `default`: #26's libraries cost the tiny headline run minutes of
# CPU (docs/quantizers.md, "default and all"); one field to flip once their GPU rows stand.
IN_DEFAULT = False


def _quantized_here(name: str, shape: list[int], scheme: str) -> bool:
    if not name.endswith(".weight") or len(shape) != 2 or not IN_A_BLOCK.search(name):
        return False
    return scheme == "fp8r" or shape[1] % 16 == 0  # NVFP4 blocks are 16 wide


def cache_path(ctx: BuildContext, component: str, scheme: str) -> Path:
    from evalkit.quantizers.checkpoint import content_key

    key = content_key(Path(ctx.model_path) / component)
    calib = len(ctx.prompts[: int(ctx.options.get("calibration_prompts", 4))]) if scheme == "nvfp4" else 0
    extra = json.dumps([WRITER_VERSION, scheme, calib, list(ctx.prompts[:calib]), dict(ctx.generation) if calib else {}],
                       sort_keys=True)
    return Path(ctx.cache_dir) / "bfl" / f"{component}-{scheme}-{key}-{hashlib.sha256(extra.encode()).hexdigest()[:8]}" \
                                         ".safetensors"


def _input_amax(ctx: BuildContext, component: str) -> tuple[dict[str, float], int]:
    """Per-linear max |input| of `component` over the bf16 pipeline run on the study's first prompts."""
    import diffusers
    import torch

    from evalkit.families.registry import get_family

    family = get_family(ctx.family)
    pipe = getattr(diffusers, family.pipeline_class).from_pretrained(ctx.model_path, dtype=torch.bfloat16)
    pipe.to(ctx.device)
    pipe.set_progress_bar_config(disable=True)
    amax: dict[str, float] = {}

    def hook(name: str) -> Any:
        def fn(module: Any, args: Any) -> None:
            amax[name] = max(amax.get(name, 0.0), float(args[0].detach().abs().max().float()))
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in getattr(pipe, component).named_modules()
               if isinstance(m, torch.nn.Linear)]
    prompts = list(ctx.prompts[: int(ctx.options.get("calibration_prompts", 4))]) or ["a photograph"]
    args = family.call_arguments(ctx.generation) if ctx.generation else {}
    with torch.inference_mode():
        for i, text in enumerate(prompts):
            pipe(prompt=text, generator=torch.Generator("cpu").manual_seed(i), output_type="latent", **args)
    for h in handles:
        h.remove()
    return amax, len(prompts)


def write_checkpoint(ctx: BuildContext, component: str, scheme: str, out: Path) -> dict[str, Any]:
    """Write `component`'s bf16 weights as a BFL `scheme` safetensors at `out` (atomically). Returns its facts."""
    import torch
    from diffusers.quantizers.bfl.utils import E2M1_MAX, FP8_MAX, quantize_fp8r, quantize_nvfp4
    from safetensors.torch import load_file, save_file

    t0 = time.perf_counter()
    amax, n_prompts = _input_amax(ctx, component) if scheme == "nvfp4" else ({}, 0)
    t_calib = time.perf_counter() - t0
    tensors: dict[str, torch.Tensor] = {}
    quantized = 0
    for f in sorted((Path(ctx.model_path) / component).glob("*.safetensors")):
        for name, w in load_file(str(f)).items():
            if not _quantized_here(name, list(w.shape), scheme):
                tensors[name] = w.contiguous()
                continue
            layer = name[: -len(".weight")]
            quantized += 1
            w = w.to(ctx.device)  # the same arithmetic, on the GPU where there is one (minutes on a CPU at full size)
            if scheme == "fp8r":
                q, s = quantize_fp8r(w)
                tensors[name], tensors[layer + ".weight_scale"] = q.cpu(), s.cpu()
            else:
                q, s, s2 = quantize_nvfp4(w)
                tensors[name], tensors[layer + ".weight_scale"] = q.cpu(), s.cpu()
                tensors[layer + ".weight_scale_2"] = s2.reshape(()).cpu()
                tensors[layer + ".input_scale"] = torch.tensor(max(amax.get(layer, 1.0), 1e-6) / (FP8_MAX * E2M1_MAX),
                                                               dtype=torch.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    save_file({k: t.contiguous() for k, t in tensors.items()}, str(tmp), metadata={"bfl_scheme": scheme})
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    facts = {"scheme": scheme, "quantized_linears": quantized, "calibration_prompts": n_prompts,
             "calibration_seconds": t_calib, "seconds": time.perf_counter() - t0, "writer_version": WRITER_VERSION}
    out.with_name(out.name + ".json").write_text(json.dumps(facts, indent=1), encoding="utf-8")
    return facts


def load_bfl_file(path: str, ctx: BuildContext, component: str) -> Any:
    """`component` from a BFL file, computing in the run's planned dtype (bf16, or float32 for the tiny model on a
    CPU without native bf16): BFL's linears dequantize their weights to `compute_dtype` whatever the input, and the
    layers BFL leaves unquantized (embedders, proj_out) take `dtype`, so both follow the plan, as the reference does.
    A fixed bf16 here met the float32 plan's activations ("mat1 and mat2 must have the same dtype")."""
    from diffusers import BFLQuantizationConfig

    from evalkit.quantizers.checkpoint import pipeline_entry

    compute = ctx.compute_dtype(component)
    lib, cls_name = pipeline_entry(ctx.model_path, component)
    cls = getattr(importlib.import_module(lib), cls_name)
    return cls.from_single_file(path, config=ctx.model_path, subfolder=component, local_files_only=True,
                                quantization_config=BFLQuantizationConfig(compute_dtype=compute), dtype=compute)


class BFLQuantizer(Quantizer):
    library = LIBRARY

    def prepare(self, backend: Backend, ctx: BuildContext) -> dict[str, Any] | None:
        from evalkit.io import file_lock

        from evalkit.families.registry import get_family

        component = get_family(ctx.family).denoiser.name
        path = cache_path(ctx, component, backend.kind)
        t0 = time.perf_counter()
        made = False
        if not path.exists():
            with file_lock(path):
                if not path.exists():
                    write_checkpoint(ctx, component, backend.kind, path)
                    made = True
        if made:
            release_device_memory()  # the calibration pipeline's and the writer's GPU blocks are not the backend's
        meta = json.loads(path.with_name(path.name + ".json").read_text(encoding="utf-8"))
        return {"what": f"BFL {backend.kind} checkpoint of the {component}, written by evalkit from the bf16 weights "
                        "with diffusers' quantize_" + backend.kind, "path": str(path), "cached": not made,
                "seconds": time.perf_counter() - t0, "checkpoint": meta}

    def load_component(self, backend: Backend, component: "Component", ctx: BuildContext, family: Any,
                       info: dict[str, Any]) -> Any:
        path = cache_path(ctx, component.name, backend.kind)
        info["bfl_file"] = str(path)
        compute = str(ctx.compute_dtype(component.name)).replace("torch.", "")  # as load_bfl_file loads it
        info["resolved_config"] = {component.name: {"class": "diffusers.BFLQuantizationConfig", "config": {
            "compute_dtype": compute, "scheme": backend.kind, "source": "written by evalkit (prepare)"}}}
        return load_bfl_file(str(path), ctx, component.name)

    def read_file(self, path: str) -> dict[str, Any] | None:
        """A safetensors file whose quantized linears carry `weight_scale`: fp8r (float8 weights) or nvfp4 (uint8)."""
        from evalkit.quantizers.checkpoint import safetensors_header

        if not path.endswith(".safetensors"):
            return None
        header = safetensors_header(path)
        scaled = {k[: -len(".weight_scale")] for k in header if k.endswith(".weight_scale")}
        if not scaled:
            return None
        dtypes = {header.get(layer + ".weight", {}).get("dtype") for layer in scaled}
        scheme = "nvfp4" if "U8" in dtypes else "fp8r"
        params = 0
        for name, info in header.items():
            if name.endswith(SCALE_SUFFIXES):
                continue
            n = 1
            for d in info["shape"]:
                n *= int(d)
            params += 2 * n if info["dtype"] == "U8" and name[: -len(".weight")] in scaled else n
        return {"scheme": scheme, "component": "", "params": params, "quantized_linears": len(scaled)}

    def load_checkpoint(self, backend: Backend, component: "Component", ctx: BuildContext, family: Any,
                        info: dict[str, Any], checkpoint: Mapping[str, Any]) -> Any:
        path = checkpoint["path"]
        if os.path.isdir(path):  # a folder whose config.json says quant_method "bfl": its one safetensors file
            files = sorted(Path(path).glob("*.safetensors"))
            if len(files) != 1:
                from evalkit.errors import EvalkitError

                raise EvalkitError(f"{path}: a BFL folder needs exactly one .safetensors file (found {len(files)})")
            path = str(files[0])
        info["bfl_file"] = path
        return load_bfl_file(path, ctx, component.name)


def _bfl(name: str, scheme: str, description: str) -> Backend:
    return Backend(name, LIBRARY, description, kind=scheme, roles=(DENOISER_ROLE,), supported_roles=(DENOISER_ROLE,),
                   in_seed_study=False, in_default=IN_DEFAULT,
                   options=MappingProxyType({"calibration_prompts": 4} if scheme == "nvfp4" else {}))


BACKENDS = (
    _bfl("bfl-fp8r", "fp8r", "BFL fp8 row-wise checkpoint written by evalkit (block linears float8 e4m3, per-row "
         "scales; a real FP8 GEMM on CUDA SM >= 8.9, dequantized elsewhere)"),
    _bfl("bfl-nvfp4", "nvfp4", "BFL NVFP4 checkpoint written by evalkit (block linears E2M1 with fp8 block scales; "
         "its GEMM needs SM >= 10 and flashinfer, dequantized elsewhere)"),
)
QUANTIZER = BFLQuantizer()

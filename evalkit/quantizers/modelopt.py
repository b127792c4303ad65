"""NVIDIA Model Optimizer (`nvidia-modelopt` on PyPI): FP8, INT8, INT4, NF4 and NVFP4 weights (optionally FP8
activations) through diffusers' `NVIDIAModelOptConfig`. Denoiser only: transformers has no ModelOpt quantizer, so
there is no config for a text encoder.

diffusers 0.42.1 with modelopt 0.47 is broken as shipped in three plain-Python ways (probed on CPU, the same code
runs on CUDA; docs/quantizers.md); evalkit works around each, here only:
1. `NVIDIAModelOptConfig(quant_type=...)` spreads `mtq.config._default_disabled_quantizer_cfg` with `**`, which
   modelopt 0.4x made a list: `TypeError: 'list' object is not a mapping`. The list is turned back into the legacy
   dict (which modelopt 0.47 still accepts) while the config is built, then put back.
2. Block-quantized types (INT4/NF4/NVFP4) mix int and str keys in `block_sizes`; `from_pretrained` dumps the config
   with `sort_keys=True` for its user agent: `TypeError: '<' not supported between 'str' and 'int'`. A subclass
   stringifies the keys in `to_dict()` only (the live config keeps its int axis keys).
3. diffusers calls `mtq.compress(leaf_linear)` per layer; modelopt 0.47 converts only a module's *children*, so
   every layer stays a bf16 `QuantLinear` whose weight quantizer now returns a packed QTensor, and the first forward
   fails (`linear(): argument 'weight' must be Tensor, not FP8QTensor`). `post_load` compresses each quantized
   component once from its root, which packs the weights into `QTensorWrapper`s: the census marker.
modelopt's default exclusions keep every `proj_out` in bf16 (2 of the tiny transformer's 30 linears; 39 of 504 in
FLUX.1-dev). NF4 with double-quantized scales fails in modelopt's CPU dequantize, so modelopt-nf4 keeps fp scales.

On a GPU: FP8_FP8 has a real FP8 GEMM (SM >= 8.9); NVFP4's GEMM needs SM >= 10.0; the rest (and NVFP4 on Hopper)
dequantize each weight per forward: memory saved, not time.
"""

from __future__ import annotations

import time
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from evalkit.quantizers.base import DENOISER_ROLE, Backend, BuildContext, Library, Quantizer

if TYPE_CHECKING:
    from evalkit.families.base import Component

LIBRARY = Library("nvidia-modelopt", "nvidia-modelopt", "modelopt", "NVIDIA ModelOpt", 6, "#117733",
                  quantize_on_gpu=True, layer_marker="QTensorWrapper", versioned=("nvidia-modelopt",),
                  quant_methods=("modelopt",))

# evalkit's own options (not NVIDIAModelOptConfig arguments): leave out linears whose row length is not a multiple of
# this block (NF4 blocks of 128: Flux's x_embedder has 64 inputs).
SKIP_INDIVISIBLE = "skip_indivisible_by"
# Run when named or with `--backends all`, not with `default`: #26's libraries cost the tiny headline run minutes of
# CPU (docs/quantizers.md, "default and all"); one field to flip once their GPU rows stand.
IN_DEFAULT = False


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _legacy_disabled_cfg(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """modelopt >= 0.4x's list of {"quantizer_name", "enable", ["parent_class"]} entries as the legacy flat dict
    diffusers 0.42.1 spreads (workaround 1)."""
    out: dict[str, Any] = {}
    for e in entries:
        e = dict(e)
        name, parent = e.pop("quantizer_name"), e.pop("parent_class", None)
        e.pop("cfg", None)
        (out.setdefault(parent, {}) if parent else out)[name] = e
    return out


def modelopt_config(**kwargs: Any) -> Any:
    """`NVIDIAModelOptConfig(**kwargs)` that builds and serialises with modelopt 0.47 (workarounds 1 and 2)."""
    import modelopt.torch.quantization.config as mcfg
    from diffusers import NVIDIAModelOptConfig

    class JsonSafeNVIDIAModelOptConfig(NVIDIAModelOptConfig):  # workaround 2
        def to_dict(self) -> dict[str, Any]:
            return _json_safe(super().to_dict())

    saved = mcfg._default_disabled_quantizer_cfg
    if isinstance(saved, list):
        mcfg._default_disabled_quantizer_cfg = _legacy_disabled_cfg(saved)
    try:
        return JsonSafeNVIDIAModelOptConfig(**kwargs)
    finally:
        mcfg._default_disabled_quantizer_cfg = saved


def _packed(module: Any) -> tuple[int, int]:
    """(linears with a packed QTensorWrapper weight, modelopt quant linears in all) under `module`."""
    from modelopt.torch.quantization.qtensor.base_qtensor import QTensorWrapper

    packed = total = 0
    for m in module.modules():
        if type(m).__name__.endswith("QuantLinear"):
            total += 1
            packed += isinstance(getattr(m, "weight", None), QTensorWrapper)
    return packed, total


class ModelOptQuantizer(Quantizer):
    library = LIBRARY

    def config(self, backend: Backend, component: "Component", ctx: BuildContext) -> Any:
        from evalkit.quantizers.torchao import indivisible_linears  # a safetensors-header helper, no torchao import

        kw = dict(ctx.options)
        block = kw.pop(SKIP_INDIVISIBLE, None)
        if block:
            kw["modules_to_not_convert"] = [*kw.get("modules_to_not_convert", []),
                                            *indivisible_linears(ctx.model_path, component.name, int(block))]
        return modelopt_config(**kw)

    def post_load(self, backend: Backend, pipe: Any, components: tuple["Component", ...],
                  ctx: BuildContext) -> dict[str, Any] | None:
        """Workaround 3: compress each component from its root where diffusers' per-layer compress left weights
        unpacked (skipped where a fixed diffusers already packed them)."""
        import modelopt.torch.quantization as mtq

        done: dict[str, Any] = {}
        for c in components:
            module = getattr(pipe, c.name)
            before, total = _packed(module)
            t0 = time.perf_counter()
            if before < total:
                mtq.compress(module)
            after, total = _packed(module)
            done[c.name] = {"packed_before": before, "packed_after": after, "quant_linears": total,
                            "compressed_from_root": before < total, "seconds": time.perf_counter() - t0}
        return {"modelopt_compress": done, "why": "diffusers 0.42.1's per-layer mtq.compress leaves modelopt 0.47's "
                                                  "weights unpacked; compressing from the root packs them"}


def _mo(name: str, kind: str, description: str, **options: Any) -> Backend:
    return Backend(name, LIBRARY, description, kind=kind, roles=(DENOISER_ROLE,), supported_roles=(DENOISER_ROLE,),
                   options=MappingProxyType({"quant_type": kind, **options}), in_seed_study=False, in_default=IN_DEFAULT)


BACKENDS = (
    _mo("modelopt-fp8", "FP8", "ModelOpt FP8 (e4m3) weights, per-tensor scale; dequantized per forward"),
    _mo("modelopt-fp8-fp8", "FP8_FP8", "ModelOpt FP8 weights and FP8 activations (per-tensor; a real FP8 GEMM on "
        "SM >= 8.9)", weight_only=False),
    _mo("modelopt-int8", "INT8", "ModelOpt INT8 weights, per-channel scales; dequantized per forward"),
    _mo("modelopt-int4", "INT4", "ModelOpt INT4 weights, blocks of 128; dequantized per forward",
        block_quantize=128, channel_quantize=-1, disable_conv_quantization=True),
    _mo("modelopt-nf4", "NF4", "ModelOpt NF4 weights, blocks of 128 (layers narrower than a block stay bf16); "
        "dequantized per forward", block_quantize=128, channel_quantize=-1, **{SKIP_INDIVISIBLE: 128}),
    _mo("modelopt-nvfp4", "NVFP4", "ModelOpt NVFP4 weights (16-wide blocks, fp8 block scales); its GEMM needs "
        "SM >= 10.0, elsewhere dequantized per forward", block_quantize=16, channel_quantize=-1,
        scale_block_quantize=8, scale_channel_quantize=-1),
)
QUANTIZER = ModelOptQuantizer()

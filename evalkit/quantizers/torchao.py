"""torchao: int4/int8/float8 weight-only and dynamic-activation configs, and the NVFP4/MX prototypes, through
diffusers' and transformers' TorchAoConfig (which take AOBaseConfig instances since diffusers 0.38: strings were
removed).

int4 on CUDA picks its kernel by packing format: MSLK's CUTLASS W4A16 kernels ("preshuffled", "plain"; the
`mslk-cuda` wheel, SM90) where mslk imports, else core torch's tinygemm ("tile_packed_to_4d"), a small-M kernel that
is slow at Flux's ~4,608 activation rows. The record's `post_load.int4_kernel` says which one the weights really use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from evalkit.quantizers.base import Backend, BuildContext, Library, Quantizer

from evalkit.families.base import DIFFUSERS

if TYPE_CHECKING:
    from evalkit.families.base import Component

LIBRARY = Library("torchao", "torchao", "torchao", "torchao", 2, "#E69F00", quantize_on_gpu=True,
                  preload_modules=("torchao",), layer_marker="Tensor", versioned=("torchao", "mslk-cuda"),
                  quant_methods=("torchao",))

# The weight tensor subclass an int4 recipe produced -> the kernel its linear runs (torchao 0.17/0.18,
# torchao/quantization/quantize_/workflows/int4/ and intx/).
INT4_KERNELS = {
    "Int4PreshuffledTensor": "mslk bf16i4bf16_shuffled (CUTLASS W4A16, SM90)",
    "Int4Tensor": "mslk bf16i4bf16_rowwise (CUTLASS W4A16, SM90)",
    "Int4TilePackedTo4dTensor": "tinygemm aten._weight_int4pack_mm (a small-M kernel: slow at Flux's ~4,608 rows)",
    "IntxUnpackedToInt8Tensor": "dequantize to bf16, then F.linear (int4 values stored one per int8 byte)",
}
# The `int4_packing_format` option's value for IntxWeightOnlyConfig on CUDA too (int4 codes one per int8 byte,
# dequantized to bf16 for a cuBLAS GEMM): the int4 quality row at bf16-GEMM speed once compiled, without MSLK.
INTX = "intx"
# The NVFP4/MX prototypes: what torchao needs to run each one's matmul, said on machines that lack it.
SM100_REASONS = {
    "nvfp4": "NVFP4 dynamic activation quantization needs an SM100 (Blackwell) GPU (torchao asserts \"NVFP4 DYNAMIC "
             "mode is only supported on sm100+ machines\")",
    "mxfp8": "the MX block-scaled matmul (e8m0 scales) needs an SM100 (Blackwell) GPU; torch._scaled_mm refuses the "
             "scales elsewhere",
    "mxfp4": "the MX block-scaled matmul (e8m0 scales) needs an SM100 (Blackwell) GPU (on CPU torchao raises \"CPU does "
             "not support swizzle\")",
}

# torchao's config versions pick the tensor path: version 2 is the current one (torchao 0.18 has removed 1, while 0.17
# still defaults Int8WeightOnlyConfig to the deprecated version 1). Stating it makes every machine take one path.
TORCHAO_CONFIG_VERSION = 2


def torchao_config(cls: Any, **kwargs: Any) -> Any:
    """`cls(**kwargs)` with `version=TORCHAO_CONFIG_VERSION` and `set_inductor_config=False` where the installed
    torchao's signature takes them.

    torchao's configs default to `set_inductor_config=True`: quantizing then switches on inductor's coordinate-descent
    tuning in all directions for the whole process (torchao 0.17 also sets float32 matmul precision to "high", i.e.
    TF32). At full size that tuning kept `torchao-int8wo+compile` compiling for minutes on an H200 while bf16 and
    bnb compiled in seconds (benchmarks/results/compile-probe-h200-2026-11-29.md), and it made quantizing change how
    *other* code computes. evalkit keeps loading free of global side effects; the `[compile]` setting
    `coordinate_descent_tuning` (on in the "seed" preset) turns the tuning on where it is wanted."""
    import inspect

    params = inspect.signature(cls).parameters
    if "version" in params:
        kwargs["version"] = TORCHAO_CONFIG_VERSION
    if "set_inductor_config" in params:
        kwargs["set_inductor_config"] = False
    return cls(**kwargs)


def indivisible_linears(model_path: str, component: str, group: int) -> list[str]:
    """Names of 2-D weights in a component's safetensors whose row length is not a multiple of `group`
    (read from the headers only; no weights are loaded)."""
    import glob
    import os

    from safetensors import safe_open

    names = []
    for f in sorted(glob.glob(os.path.join(model_path, component, "*.safetensors"))):
        with safe_open(f, "pt") as st:
            for key in st.keys():
                if key.endswith(".weight"):
                    shape = st.get_slice(key).get_shape()
                    if len(shape) == 2 and shape[1] % group:
                        names.append(key[: -len(".weight")])
    return names


def mslk_int4_unusable(capability: tuple[int, int] | None) -> str | None:
    """Why MSLK's CUTLASS int4 kernels cannot serve this GPU (None: they can): the `mslk` module missing (PyPI's
    `mslk` is an empty placeholder; the wheel is `mslk-cuda`), a torch it was not built for (an undefined symbol
    at import), or a GPU other than SM90 (MSLK registers these kernels for SM90 only)."""
    import importlib.util

    if capability is None or capability[0] != 9:
        return f"MSLK's int4 CUTLASS kernels are built for SM90 only (this GPU: {capability})"
    if importlib.util.find_spec("mslk") is None:
        return "the mslk module is not installed (pip install mslk-cuda, built for your torch)"
    try:
        import mslk  # noqa: F401 - registers torch.ops.mslk
        import torch

        if not hasattr(torch.ops.mslk, "bf16i4bf16_shuffled"):
            return "mslk imports but registers no bf16i4bf16_shuffled op"
    except Exception as e:  # noqa: BLE001 - an ABI mismatch shows here as an undefined symbol in mslk.so
        return f"import mslk failed: {type(e).__name__}: {str(e)[:200]}"
    return None


class TorchAoQuantizer(Quantizer):
    library = LIBRARY

    def config(self, backend: Backend, component: "Component", ctx: BuildContext) -> Any:
        import torch
        from torchao import quantization as q

        kind = backend.kind
        skip = None
        if kind == "int4wo":
            group = int(ctx.options.get("group_size", 128 if ctx.device == "cuda" else 32))
            fmt = self._int4_cuda_format(ctx) if ctx.device == "cuda" else None
            if fmt is not None and fmt != INTX:
                quant = torchao_config(q.Int4WeightOnlyConfig, group_size=group, int4_packing_format=fmt)
            else:
                # Int4WeightOnlyConfig has no CPU kernel; the intx path stores int4 values with per-group scales.
                quant = torchao_config(q.IntxWeightOnlyConfig, weight_dtype=torch.int4, granularity=q.PerGroup(group))
            # Group-wise int4 needs in_features divisible by the group size (Flux's x_embedder has 64 inputs).
            skip = indivisible_linears(ctx.model_path, component.name, group) or None
        elif kind == "int8wo":
            quant = torchao_config(q.Int8WeightOnlyConfig)
        elif kind == "fp8wo":
            quant = torchao_config(q.Float8WeightOnlyConfig)
        elif kind == "int8dq":
            quant = torchao_config(q.Int8DynamicActivationInt8WeightConfig)
        elif kind == "fp8dq":
            quant = torchao_config(q.Float8DynamicActivationFloat8WeightConfig, granularity=q.PerRow())
        elif kind == "nvfp4":
            from torchao.prototype.mx_formats import NVFP4DynamicActivationNVFP4WeightConfig

            quant = NVFP4DynamicActivationNVFP4WeightConfig()
        elif kind in ("mxfp8", "mxfp4"):
            from torchao.prototype.mx_formats import MXDynamicActivationMXWeightConfig

            dt = torch.float8_e4m3fn if kind == "mxfp8" else torch.float4_e2m1fn_x2
            quant = MXDynamicActivationMXWeightConfig(activation_dtype=dt, weight_dtype=dt)
            skip = indivisible_linears(ctx.model_path, component.name, 32) or None  # MX blocks are 32 wide
        else:  # pragma: no cover - a recipe typo
            raise ValueError(f"{backend.name}: unknown torchao kind {kind!r}")
        if component.config_library == DIFFUSERS:
            from diffusers import TorchAoConfig
        else:
            from transformers import TorchAoConfig
        return TorchAoConfig(quant_type=quant, modules_to_not_convert=skip)

    def _int4_cuda_format(self, ctx: BuildContext) -> str:
        """The int4 packing format on CUDA: the `int4_packing_format` option if given, else MSLK's "preshuffled"
        where MSLK serves this GPU, else tinygemm's "tile_packed_to_4d" (the reason is kept for the record)."""
        asked = ctx.options.get("int4_packing_format")
        self._int4_why = "the int4_packing_format option" if asked else mslk_int4_unusable(ctx.capability)
        if asked:
            return str(asked)
        return "tile_packed_to_4d" if self._int4_why else "preshuffled"

    def post_load(self, backend: Backend, pipe: Any, components: tuple["Component", ...],
                  ctx: BuildContext) -> dict[str, Any] | None:
        """For int4: which kernel the quantized weights really run, read from their tensor subclasses."""
        if backend.kind != "int4wo":
            return None
        from collections import Counter

        types: Counter[str] = Counter()
        for c in components:
            for m in getattr(pipe, c.name).modules():
                w = getattr(m, "weight", None)
                if w is not None and type(w).__name__ in INT4_KERNELS:
                    types[type(w).__name__] += 1
        why = getattr(self, "_int4_why", None)
        return {"int4_kernel": {INT4_KERNELS[t]: n for t, n in types.items()},
                "int4_format_reason": (f"tinygemm fallback: {why}" if why and ctx.device == "cuda"
                                       and why != "the int4_packing_format option" else why)}

    def unavailable(self, backend: Backend, device: str, capability: tuple[int, int] | None,
                    family: Any = None) -> str | None:
        if backend.kind in SM100_REASONS and device == "cuda" and (capability is None or capability < (10, 0)):
            return SM100_REASONS[backend.kind] + (f" (this GPU: {capability[0]}.{capability[1]})" if capability else "")
        return None

    def known_incompatible(self) -> Mapping[tuple[str, frozenset[str]], str]:
        # Seen on an H100 with torchao 0.17 (benchmarks/results/gpu-2026-11-21.md): group offloading's stream path
        # calls aten.is_pinned, which torchao's quantized tensor subclass does not implement.
        return {("torchao-int8wo", frozenset({"group-offload"})):
                "torchao quantized tensors do not implement aten.is_pinned, which group offloading with streams calls "
                "(seen with torchao 0.17)"}


def _sm100(name: str, kind: str, description: str) -> Backend:
    return Backend(name, LIBRARY, description, kind=kind, in_seed_study=False, devices=("cuda",),
                   cpu_unsupported_reason=SM100_REASONS[kind])


BACKENDS = (
    Backend("torchao-int4wo", LIBRARY, "torchao int4 weight-only, group size 128 (CUDA: MSLK's CUTLASS preshuffled "
            "kernel where mslk-cuda is installed, else tinygemm; CPU: IntxWeightOnly int4, group 32)", kind="int4wo"),
    Backend("torchao-int8wo", LIBRARY, "torchao int8 weight-only, per-row scales", kind="int8wo"),
    Backend("torchao-fp8wo", LIBRARY, "torchao float8 (e4m3) weight-only", kind="fp8wo"),
    Backend("torchao-int8dq", LIBRARY, "torchao int8 dynamic activation + int8 weight", kind="int8dq",
            in_seed_study=False),
    Backend("torchao-fp8dq", LIBRARY, "torchao float8 dynamic activation + float8 weight, per-row", kind="fp8dq",
            in_seed_study=False, devices=("cuda",), min_capability=(8, 9),
            cpu_unsupported_reason="float8 dynamic activation needs CUDA compute capability >= 8.9"),
    _sm100("torchao-nvfp4", "nvfp4", "torchao NVFP4 dynamic activation + NVFP4 weight (W4A4, 16-wide blocks, fp8 "
           "scales; prototype)"),
    _sm100("torchao-mxfp8", "mxfp8", "torchao MXFP8 dynamic activation + MXFP8 weight (e4m3, 32-wide blocks, e8m0 "
           "scales; prototype)"),
    _sm100("torchao-mxfp4", "mxfp4", "torchao MXFP4 dynamic activation + MXFP4 weight (e2m1, 32-wide blocks, e8m0 "
           "scales; prototype)"),
)
# torchao-fp8dq has always been per-row (Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())); #26 names
# that recipe torchao-fp8dq-row. One recipe, two names: the new one parses to the old, so a run never holds it twice.
ALIASES = {"torchao-fp8dq-row": "torchao-fp8dq"}
QUANTIZER = TorchAoQuantizer()

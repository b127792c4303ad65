"""torchao: int4/int8/float8 weight-only and dynamic-activation configs, through diffusers' and transformers'
TorchAoConfig (which take AOBaseConfig instances since diffusers 0.38: strings were removed)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from evalkit.quantizers.base import Backend, BuildContext, Library, Quantizer

from evalkit.families.base import DIFFUSERS

if TYPE_CHECKING:
    from evalkit.families.base import Component

LIBRARY = Library("torchao", "torchao", "torchao", "torchao", 2, "#E69F00", quantize_on_gpu=True,
                  preload_modules=("torchao",), layer_marker="Tensor", versioned=("torchao",))

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


class TorchAoQuantizer(Quantizer):
    library = LIBRARY

    def config(self, backend: Backend, component: "Component", ctx: BuildContext) -> Any:
        import torch
        from torchao import quantization as q

        kind = backend.kind
        skip = None
        if kind == "int4wo":
            group = int(ctx.options.get("group_size", 128 if ctx.device == "cuda" else 32))
            if ctx.device == "cuda":
                # The default int4 packing needs the CUDA-only `mslk` package; the tinygemm layout runs on
                # core torch's _weight_int4pack_mm on Ampere/Hopper.
                quant = torchao_config(q.Int4WeightOnlyConfig, group_size=group, int4_packing_format="tile_packed_to_4d")
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
        else:  # pragma: no cover - a recipe typo
            raise ValueError(f"{backend.name}: unknown torchao kind {kind!r}")
        if component.config_library == DIFFUSERS:
            from diffusers import TorchAoConfig
        else:
            from transformers import TorchAoConfig
        return TorchAoConfig(quant_type=quant, modules_to_not_convert=skip)

    def known_incompatible(self) -> Mapping[tuple[str, frozenset[str]], str]:
        # Seen on an H100 with torchao 0.17 (benchmarks/results/gpu-2026-11-21.md): group offloading's stream path
        # calls aten.is_pinned, which torchao's quantized tensor subclass does not implement.
        return {("torchao-int8wo", frozenset({"group-offload"})):
                "torchao quantized tensors do not implement aten.is_pinned, which group offloading with streams calls "
                "(seen with torchao 0.17)"}


BACKENDS = (
    Backend("torchao-int4wo", LIBRARY, "torchao int4 weight-only, group size 128 (CUDA: tinygemm tile layout; "
            "CPU: IntxWeightOnly int4, group 32)", kind="int4wo"),
    Backend("torchao-int8wo", LIBRARY, "torchao int8 weight-only, per-row scales", kind="int8wo"),
    Backend("torchao-fp8wo", LIBRARY, "torchao float8 (e4m3) weight-only", kind="fp8wo"),
    Backend("torchao-int8dq", LIBRARY, "torchao int8 dynamic activation + int8 weight", kind="int8dq",
            in_seed_study=False),
    Backend("torchao-fp8dq", LIBRARY, "torchao float8 dynamic activation + float8 weight, per-row", kind="fp8dq",
            in_seed_study=False, devices=("cuda",), min_capability=(8, 9),
            cpu_unsupported_reason="float8 dynamic activation needs CUDA compute capability >= 8.9"),
)
QUANTIZER = TorchAoQuantizer()

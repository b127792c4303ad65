"""diffusers' layerwise casting: the denoiser's weights stored in float8_e4m3fn and cast to bf16 layer by layer for
compute. Not a quantizer in diffusers' sense (no config): a transform applied after loading."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from evalkit.quantizers.base import DENOISER_ROLE, Backend, BuildContext, Library, Quantizer

if TYPE_CHECKING:
    from evalkit.families.base import Component

LIBRARY = Library("diffusers", "diffusers", "diffusers", "diffusers (layerwise casting)", 5, "#CC79A7",
                  layer_marker="float8_e4m3fn", versioned=("diffusers",))


class LayerwiseQuantizer(Quantizer):
    library = LIBRARY

    def post_load(self, backend: Backend, pipe: Any, components: tuple["Component", ...],
                  ctx: BuildContext) -> dict[str, Any] | None:
        import torch

        cfg = {}
        for c in components:
            # the run's compute dtype (bf16, or float32 on a CPU without native bf16), as the reference computes
            compute = ctx.compute_dtype(c.name)
            getattr(pipe, c.name).enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute)
            cfg[c.name] = {"storage_dtype": "float8_e4m3fn", "compute_dtype": str(compute).replace("torch.", "")}
        first = next(iter(cfg.values()), {"storage_dtype": "float8_e4m3fn", "compute_dtype": "bfloat16"})
        return {"enable_layerwise_casting": first, "components": [c.name for c in components]}


BACKENDS = (
    Backend("fp8-layerwise", LIBRARY, "layerwise casting: denoiser weights stored float8_e4m3fn, computed in bf16 "
            "(text encoders stay bf16)", kind="float8_e4m3fn", roles=(DENOISER_ROLE,), supported_roles=(DENOISER_ROLE,)),
)
QUANTIZER = LayerwiseQuantizer()

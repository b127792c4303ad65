"""A toy quantization library, registered from this one test-only module: what adding a library takes.

`toy-int6`: each Linear of the denoiser becomes a `ToyInt6Linear` holding int8 storage of round-to-nearest 6-bit
values with one scale per output row (a post-load transform, like layerwise casting). `ghost-int8` belongs to a
library that is not installed, so it is skipped with the pip line.
"""

from __future__ import annotations

from typing import Any

from evalkit.quantizers.base import DENOISER_ROLE, Backend, BuildContext, Library, Quantizer
from evalkit.quantizers.registry import register_library, unregister_library

TOY = Library("toylib", "toylib-pip", "json", "Toy library", 50, "#56B4E9", preload_modules=("json",),
              layer_marker="ToyInt6", versioned=("toylib-pip",))
GHOST = Library("ghostlib", "ghostlib-pip", "ghostlib_not_installed", "Ghost", 51, "#F0E442", layer_marker="x",
                versioned=("ghostlib-pip",))


def _int6_linear() -> type:
    import torch

    class ToyInt6Linear(torch.nn.Module):
        def __init__(self, linear: torch.nn.Linear) -> None:
            super().__init__()
            w = linear.weight.detach().float()
            scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 31
            self.register_buffer("qweight", torch.round(w / scale).clamp(-32, 31).to(torch.int8))
            self.register_buffer("scale", scale.to(linear.weight.dtype))
            self.bias = linear.bias
            # the census reads a 2-D `weight`: expose the stored int8 values under that name
            self.weight = self.qweight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            w = self.qweight.to(x.dtype) * self.scale.to(x.dtype)
            return torch.nn.functional.linear(x, w, self.bias)

    return ToyInt6Linear


class ToyQuantizer(Quantizer):
    library = TOY

    def post_load(self, backend: Backend, pipe: Any, components: tuple, ctx: BuildContext) -> dict[str, Any]:
        import torch

        cls = _int6_linear()
        replaced = 0
        for c in components:
            module = getattr(pipe, c.name)
            for name, child in list(module.named_modules()):
                for attr, sub in list(child.named_children()):
                    if type(sub) is torch.nn.Linear:
                        setattr(child, attr, cls(sub))
                        replaced += 1
        return {"method": "round-to-nearest int6, per-row scales", "replaced_linears": replaced}


class GhostQuantizer(Quantizer):
    library = GHOST


def register() -> None:
    register_library(TOY, ToyQuantizer(), [Backend("toy-int6", TOY, "toy: int6 round-to-nearest weights", kind="int6",
                                                   roles=(DENOISER_ROLE,), supported_roles=(DENOISER_ROLE,))])
    register_library(GHOST, GhostQuantizer(), [Backend("ghost-int8", GHOST, "a library that is not installed")])


def unregister() -> None:
    unregister_library(TOY.key)
    unregister_library(GHOST.key)


if __name__.startswith("evalkit_plugin_"):  # loaded with --plugin: register on import
    register()

"""A test-only quantization library whose backends break their output on purpose, one tripwire each (#27 item 1;
evalkit.tripwires). Loaded with --plugin by tests/test_tripwires_study.py.

Every backend but `broken-noquant` replaces each Linear of the denoiser by a layer the census counts as quantized
(an int8 `weight` decoy) that still computes with the original weights, so each trips only its own tripwire:

  broken-nan        the denoiser outputs NaN: NaN latents and pixels (generate's non-finite tripwire)
  broken-black      the VAE decodes to -1 everywhere: an all-black image
  broken-grid       a checkerboard of +-8 levels added to the decoded image
  broken-unrelated  the decoded image replaced by a fixed random pattern, whatever the prompt
  broken-noquant    quantizes nothing: the census finds no quantized layer
  broken-identical  the decoy layers only: every image byte-identical to bf16's
"""

from __future__ import annotations

from typing import Any

from evalkit.quantizers.base import DENOISER_ROLE, Backend, BuildContext, Library, Quantizer
from evalkit.quantizers.registry import register_library, unregister_library

BROKEN = Library("brokenlib", "brokenlib-pip", "json", "Broken toy library", 52, "#D55E00", preload_modules=("json",),
                 layer_marker="BrokenDecoy", versioned=("brokenlib-pip",))
KINDS = ("nan", "black", "grid", "unrelated", "noquant", "identical")


def _decoy(linear: Any) -> Any:
    import torch

    class BrokenDecoyLinear(torch.nn.Module):
        def __init__(self, lin: torch.nn.Linear) -> None:
            super().__init__()
            self.register_buffer("w_float", lin.weight.detach().clone())
            self.register_buffer("weight", torch.zeros(lin.weight.shape, dtype=torch.int8))  # what the census reads
            self.bias = lin.bias

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.linear(x, self.w_float.to(x.dtype), self.bias)

    return BrokenDecoyLinear(linear)


def _decoded_hook(kind: str) -> Any:
    import torch

    def hook(module: Any, args: Any, out: Any) -> Any:
        if kind == "black":
            return torch.full_like(out, -1.0)
        if kind == "grid":
            h, w = out.shape[-2:]
            y = torch.arange(h).view(h, 1)
            x = torch.arange(w).view(1, w)
            board = torch.where((y + x) % 2 == 0, 1.0, -1.0).to(out.dtype) * (2 * 8 / 255)  # +-8 levels
            return out + board
        if kind == "unrelated":
            g = torch.Generator().manual_seed(1234)
            small = torch.randn(out.shape[0], out.shape[1], 8, 8, generator=g)
            big = torch.nn.functional.interpolate(small, size=out.shape[-2:], mode="bilinear", align_corners=False)
            return torch.tanh(big).to(out.dtype)
        return out

    return hook


def _nan_hook(module: Any, args: Any, out: Any) -> Any:
    import torch

    if isinstance(out, tuple):
        return (torch.full_like(out[0], float("nan")),) + tuple(out[1:])
    out.sample = torch.full_like(out.sample, float("nan"))
    return out


class BrokenQuantizer(Quantizer):
    library = BROKEN

    def post_load(self, backend: Backend, pipe: Any, components: tuple, ctx: BuildContext) -> dict[str, Any]:
        import torch

        kind = backend.kind
        replaced = 0
        if kind != "noquant":
            for c in components:
                module = getattr(pipe, c.name)
                for _name, child in list(module.named_modules()):
                    for attr, sub in list(child.named_children()):
                        if type(sub) is torch.nn.Linear:
                            setattr(child, attr, _decoy(sub))
                            replaced += 1
        if kind == "nan":
            pipe.transformer.register_forward_hook(_nan_hook)
        elif kind in ("black", "grid", "unrelated"):
            pipe.vae.decoder.register_forward_hook(_decoded_hook(kind))
        return {"method": f"broken on purpose: {kind}", "replaced_linears": replaced}


def backends() -> list[Backend]:
    return [Backend(f"broken-{k}", BROKEN, f"test-only: {k}", kind=k, roles=(DENOISER_ROLE,),
                    supported_roles=(DENOISER_ROLE,)) for k in KINDS]


def register() -> None:
    register_library(BROKEN, BrokenQuantizer(), backends())


def unregister() -> None:
    unregister_library(BROKEN.key)


if __name__.startswith("evalkit_plugin_"):  # loaded with --plugin: register on import
    register()

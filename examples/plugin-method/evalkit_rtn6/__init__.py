"""evalkit-rtn6: an example evalkit plugin adding the `rtn6` library and its `rtn6-g64` backend.

Installed, its entry point (`evalkit.backends`: `rtn6 = "evalkit_rtn6:register"`) makes every evalkit process, the
backend workers included, call `register()` when evalkit's backend registry loads. Nothing here imports torch at
import time: `evalkit backends` and `--help` stay fast.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from evalkit.quantizers.base import DENOISER_ROLE, Backend, BuildContext, Library, Quantizer

__version__ = "0.1.0"

LIBRARY = Library(
    key="rtn6",  # what run records call it (recipe.library)
    pip_name="evalkit-rtn6",  # `evalkit backends` says `pip install evalkit-rtn6` where it is missing
    import_name="evalkit_rtn6",
    display="RTN int6 (example plugin)",
    order=60,  # after evalkit's own libraries in reports
    colour="#F0E442",
    layer_marker="RTN6Linear",  # the census proof: layer types containing it are this method's layers
    versioned=("evalkit-rtn6",),  # the manifest records this package's version
)


class RTN6Quantizer(Quantizer):
    """Quantizes after loading: every nn.Linear of the backend's components whose input width is a multiple of the
    group becomes an RTN6Linear (the others stay bf16, and the record says how many)."""

    library = LIBRARY

    def post_load(self, backend: Backend, pipe: Any, components: tuple, ctx: BuildContext) -> dict[str, Any]:
        import torch

        from evalkit_rtn6.layer import RTN6Linear

        group = int(ctx.options.get("group_size", 64))
        replaced, kept = 0, []
        for c in components:
            module = getattr(pipe, c.name)
            for parent_name, parent in list(module.named_modules()):
                for attr, child in list(parent.named_children()):
                    if type(child) is not torch.nn.Linear:
                        continue
                    if child.in_features % group:
                        kept.append(f"{c.name}.{parent_name}.{attr}".replace("..", "."))
                        continue
                    setattr(parent, attr, RTN6Linear(child, group))
                    replaced += 1
        return {"method": "round-to-nearest int6, asymmetric, per group of input features, packed 4 codes in 3 bytes",
                "group_size": group, "replaced_linears": replaced, "kept_bf16": kept}


BACKENDS = (
    Backend("rtn6-g64", LIBRARY, "example plugin: int6 round-to-nearest weights, groups of 64 with zero points, "
            "packed (denoiser only)", kind="int6", roles=(DENOISER_ROLE,), supported_roles=(DENOISER_ROLE,),
            options=MappingProxyType({"group_size": 64}), in_seed_study=False),
)


def register() -> None:
    """The entry point: add the library and its backends to evalkit's registry."""
    from evalkit.quantizers.registry import register_library

    register_library(LIBRARY, RTN6Quantizer(), BACKENDS)

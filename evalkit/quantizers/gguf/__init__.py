"""GGUF: the denoiser from a GGUF file, either the user's (`--gguf-file`, or `--backend NAME=FILE.gguf`) or one
evalkit makes from the bf16 weights with the gguf package (convert.py; quant.py has the quantizers).

Text encoders stay bf16. The family says which component a GGUF file holds (`ModelFamily.gguf`); a family without
GGUF support skips these backends with the reason.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from evalkit.quantizers.base import DENOISER_ROLE, Backend, BuildContext, Library, Quantizer

if TYPE_CHECKING:
    from evalkit.families.base import Component

LIBRARY = Library("gguf", "gguf", "gguf", "GGUF", 4, "#D55E00", preload_modules=("gguf",), layer_marker="GGUF",
                  versioned=("gguf",))


class GGUFQuantizer(Quantizer):
    library = LIBRARY

    def load_component(self, backend: Backend, component: "Component", ctx: BuildContext, family: Any,
                       info: dict[str, Any]) -> Any:
        from evalkit.quantizers.gguf import convert

        support = family.gguf
        if support is None or support.component != component.name:
            return None
        qtype = str(ctx.options.get("qtype"))
        if ctx.checkpoint:
            path = ctx.checkpoint
            info["gguf_source"] = "user file"
        else:
            path = str(convert.ensure_gguf(ctx.model_path, qtype, ctx.cache_dir, component.name, support.arch))
            info["gguf_source"] = "made by evalkit from the bf16 weights with the gguf package"
        info["gguf_file"] = path
        model, info["gguf_summary"] = convert.load_gguf_component(
            path, ctx.model_path, component.name, ctx.compute_dtype(component.name), support.original_key_markers,
            support.original_converter)
        compute = str(ctx.compute_dtype(component.name)).replace("torch.", "")
        info["resolved_config"] = {component.name: {"class": "diffusers.GGUFQuantizationConfig",
                                                    "config": {"compute_dtype": compute, "qtype": qtype}}}
        return model

    def unavailable(self, backend: Backend, device: str, capability: tuple[int, int] | None,
                    family: Any = None) -> str | None:
        if family is not None and family.gguf is None:
            return f"{family.display}: diffusers cannot load its denoiser from a single GGUF file"
        return None


def _gguf(qtype: str) -> Backend:
    return Backend(f"gguf-{qtype.lower()}", LIBRARY, f"GGUF {qtype} denoiser (text encoders stay bf16)", kind=qtype,
                   roles=(DENOISER_ROLE,), supported_roles=(DENOISER_ROLE,),
                   options=MappingProxyType({"qtype": qtype}))


BACKENDS = (_gguf("Q2_K"), _gguf("Q4_1"), _gguf("Q8_0"))
QUANTIZER = GGUFQuantizer()

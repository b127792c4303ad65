"""bitsandbytes: 4-bit FP4/NF4 and LLM.int8() weights, through diffusers' and transformers' BitsAndBytesConfig.

On CPU, diffusers' bnb quantizer refuses ("A GPU is needed for quantization") while transformers' runs the
bitsandbytes CPU backend, so on CPU only the transformers text encoders are quantized and the backend is marked
partial (`cpu_config_libraries`).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

from evalkit.quantizers.base import Backend, BuildContext, Library, Quantizer

from evalkit.families.base import DIFFUSERS

if TYPE_CHECKING:
    from evalkit.families.base import Component

LIBRARY = Library("bitsandbytes", "bitsandbytes", "bitsandbytes", "bitsandbytes", 1, "#0072B2",
                  preload_modules=("bitsandbytes",), layer_marker="Linear", versioned=("bitsandbytes",))


class BitsAndBytesQuantizer(Quantizer):
    library = LIBRARY

    def config(self, backend: Backend, component: "Component", ctx: BuildContext) -> Any:
        if component.config_library == DIFFUSERS:
            from diffusers import BitsAndBytesConfig
        else:
            from transformers import BitsAndBytesConfig
        opts = dict(ctx.options)
        kind = backend.kind
        skip = list(opts["llm_int8_skip_modules"]) if opts.get("llm_int8_skip_modules") else None
        if kind == "8bit":
            kw: dict[str, Any] = {"load_in_8bit": True, "llm_int8_threshold": opts.get("llm_int8_threshold", 6.0)}
        else:
            kw = {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4" if kind == "fp4" else "nf4",
                  "bnb_4bit_compute_dtype": ctx.compute_dtype(component.name),
                  "bnb_4bit_use_double_quant": kind == "nf4-dq" or bool(opts.get("double_quant", False))}
        if skip:
            kw["llm_int8_skip_modules"] = skip
        return BitsAndBytesConfig(**kw)

    def known_incompatible(self) -> Mapping[tuple[str, frozenset[str]], str]:
        return {
            ("bnb-8bit", frozenset({"offload"})): "bitsandbytes 8-bit with model CPU offload fails (diffusers #10653)",
            ("bnb-8bit", frozenset({"group-offload"})): "bitsandbytes 8-bit weights cannot be moved by group "
                                                        "offloading (Int8Params)",
        }


def _bnb(name: str, kind: str, description: str, **kw: Any) -> Backend:
    options = MappingProxyType(kw.pop("options", {}))
    return Backend(name, LIBRARY, description, kind=kind, cpu_config_libraries=("transformers",), options=options, **kw)


BACKENDS = (
    _bnb("bnb-4bit", "fp4", "bitsandbytes 4-bit FP4 weights, bf16 compute"),
    _bnb("bnb-nf4", "nf4", "bitsandbytes 4-bit NF4 weights, bf16 compute"),
    _bnb("bnb-nf4-dq", "nf4-dq", "bitsandbytes NF4 with nested (double) quantization of the scales", in_seed_study=False),
    _bnb("bnb-8bit", "8bit", "bitsandbytes LLM.int8() 8-bit weights (outlier threshold 6.0)",
         options={"llm_int8_threshold": 6.0}),
)
QUANTIZER = BitsAndBytesQuantizer()

"""GGUF: the denoiser from a GGUF file, either the user's (`--gguf-file`, or `--backend NAME=FILE.gguf`) or one
evalkit makes from the bf16 weights with the gguf package (convert.py; quant.py has the quantizers).

Text encoders stay bf16. The family says which component a GGUF file holds (`ModelFamily.gguf`); a family without
GGUF support skips these backends with the reason.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from evalkit.errors import EvalkitError

from evalkit.quantizers.base import DENOISER_ROLE, Backend, BuildContext, Library, Quantizer

if TYPE_CHECKING:
    from evalkit.families.base import Component

LIBRARY = Library("gguf", "gguf", "gguf", "GGUF", 4, "#D55E00", preload_modules=("gguf",), layer_marker="GGUF",
                  versioned=("gguf",), quant_methods=("gguf",))


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
        model = self._load(path, component, ctx, family, info)
        compute = str(ctx.compute_dtype(component.name)).replace("torch.", "")
        info["resolved_config"] = {component.name: {"class": "diffusers.GGUFQuantizationConfig",
                                                    "config": {"compute_dtype": compute, "qtype": qtype}}}
        return model

    def _load(self, path: str, component: "Component", ctx: BuildContext, family: Any, info: dict[str, Any]) -> Any:
        from evalkit.quantizers.gguf import convert

        support = family.gguf
        info["gguf_file"] = path
        model, info["gguf_summary"] = convert.load_gguf_component(
            path, ctx.model_path, component.name, ctx.compute_dtype(component.name), support.original_key_markers,
            support.original_converter)
        return model

    def read_file(self, path: str) -> dict[str, Any] | None:
        """A GGUF file (by its magic bytes): its tensor types and logical parameter count (needs the gguf package;
        without it the file is still claimed, and its backend skipped with the pip line)."""
        with open(path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                return None
        facts: dict[str, Any] = {"scheme": "GGUF", "component": "", "params": None}
        if not LIBRARY.available():
            return facts
        from collections import Counter

        from evalkit.quantizers.gguf import convert

        reader = convert.read_gguf(Path(path))
        types: Counter[str] = Counter(t.tensor_type.name for t in reader.tensors)
        params = 0
        for t in reader.tensors:
            n = 1
            for d in t.shape.tolist():
                n *= int(d)
            params += n
        quant = [k for k in types if k not in ("F32", "F16", "BF16")]
        facts.update(scheme=max(quant, key=lambda k: types[k]) if quant else "F16", tensor_types=dict(types),
                     params=params)
        return facts

    def load_checkpoint(self, backend: Backend, component: "Component", ctx: BuildContext, family: Any,
                        info: dict[str, Any], checkpoint: Any) -> Any:
        if family.gguf is None or family.gguf.component != component.name:
            raise EvalkitError(f"{checkpoint['path']}: {family.display} cannot load its {component.name} from a "
                               "GGUF file")
        info["gguf_source"] = "user file (--backend)"
        return self._load(checkpoint["path"], component, ctx, family, info)

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

"""optimum-quanto: int4/int8/float8 weights through diffusers' and transformers' QuantoConfig.

diffusers deprecated its QuantoConfig in 0.38 (to be removed in 1.0.0): the backends stay, marked deprecated in
`evalkit backends` and the report.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from evalkit.quantizers.base import Backend, BuildContext, Library, Quantizer

from evalkit.families.base import DIFFUSERS

if TYPE_CHECKING:
    from evalkit.families.base import Component

LIBRARY = Library("optimum-quanto", "optimum-quanto", "optimum.quanto", "optimum-quanto", 3, "#009E73",
                  quantize_on_gpu=True, preload_modules=("optimum.quanto",), layer_marker="QLinear",
                  versioned=("optimum-quanto",),
                  deprecated="diffusers deprecated QuantoConfig in 0.38; it is to be removed in diffusers 1.0.0")


class QuantoQuantizer(Quantizer):
    library = LIBRARY

    def config(self, backend: Backend, component: "Component", ctx: BuildContext) -> Any:
        if component.config_library == DIFFUSERS:
            from diffusers import QuantoConfig

            return QuantoConfig(weights_dtype=backend.kind)
        from transformers import QuantoConfig

        return QuantoConfig(weights=backend.kind)

    def prepare(self, backend: Backend, ctx: BuildContext) -> dict[str, Any] | None:
        """optimum-quanto builds its kernels with torch.utils.cpp_extension the first time one is used, into its own
        package folder: `quanto_cuda` (unpack, AWQ, Marlin) on a GPU, `quanto_cpp` (unpack) on a CPU. int4 weights use
        them while being quantized. That build takes minutes once per installation (on the 2-core CPU machine too) and
        is no part of loading a model: do it here, off the load clock, and record it as `prepare`."""
        if backend.kind != "int4":
            return None
        from optimum.quanto.library.extensions import get_extension, is_extension_available

        name = "quanto_cuda" if ctx.device == "cuda" else "quanto_cpp"
        if not is_extension_available(name):
            return None
        ext = get_extension(name)
        t0 = time.perf_counter()
        ext.lib  # noqa: B018 - builds (or loads the cached build of) the extension
        return {"what": f"optimum-quanto {name} kernels (torch.utils.cpp_extension JIT build, cached after the first "
                        "use)", "extension": name, "build_directory": ext.build_directory,
                "seconds": time.perf_counter() - t0}


BACKENDS = (
    Backend("quanto-int4", LIBRARY, "optimum-quanto int4 weights (group size 128)", kind="int4"),
    Backend("quanto-int8", LIBRARY, "optimum-quanto int8 weights", kind="int8"),
    Backend("quanto-fp8", LIBRARY, "optimum-quanto float8 (e4m3) weights", kind="float8"),
)
QUANTIZER = QuantoQuantizer()

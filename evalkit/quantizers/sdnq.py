"""SDNQ (`sdnq` on PyPI): int8/uint4/fp8 weights, optional SVDQuant-style low-rank correction (`use_svd`) and
quantized int8 matmul (`use_quantized_matmul`), through diffusers' `SDNQConfig` (a factory returning
`sdnq.SDNQConfig`) for diffusers models and `sdnq.SDNQConfig` for transformers ones (`import sdnq` registers its
quantizer with transformers). No environment check: CPU and CUDA alike.

What evalkit keeps in mind (probed with sdnq 0.2.8 on the tiny Flux; docs/quantizers.md):
- sdnq's own skip lists keep Flux's embedders, `proj_out` and norms in bf16 (19 of the tiny transformer's 30
  linears are quantized), and it leaves layers under 16,384 values unquantized: every linear of the tiny T5 is that
  small, so on the tiny model the T5 stays bf16 and the record says so (`partial_reason`); T5-XXL's are quantized.
- `use_svd` computes its low-rank branch with `torch.svd_lowrank`, which draws random projections from the global
  RNG: `prepare` seeds it, or two runs of sdnq-uint4-svd differ (seen: different images from one checkpoint).
- `import sdnq` raises torch._dynamo's recompile limits to 8192 for the whole process (for its compiled dequantize
  functions). The worker imports the library off the load clock; `prepare` then puts the process-wide limits back
  where torch 2.12+ lets sdnq pass its own limit per compiled function, so `+compile` of the denoiser runs under
  the limits every other backend has. The forkserver never imports sdnq (no `preload_modules`), so no other
  backend's process inherits the change.
"""

from __future__ import annotations

import time
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from evalkit.families.base import DIFFUSERS
from evalkit.quantizers.base import Backend, BuildContext, Library, Quantizer

if TYPE_CHECKING:
    from evalkit.families.base import Component

LIBRARY = Library("sdnq", "sdnq", "sdnq", "SDNQ", 7, "#56B4E9", quantize_on_gpu=True, layer_marker="SDNQLinear",
                  versioned=("sdnq",), quant_methods=("sdnq",))

# The process-wide torch._dynamo settings sdnq raises at import (cache_size_limit and accumulated_cache_size_limit
# are aliases of the first two in torch 2.13).
DYNAMO_LIMITS = ("recompile_limit", "accumulated_recompile_limit")
SEED = 0  # the global RNG's seed before loading (use_svd's randomized SVD draws from it)
# Run when named or with `--backends all`, not with `default`: #26's libraries cost the tiny headline run minutes of
# CPU (docs/quantizers.md, "default and all"); one field to flip once their GPU rows stand.
IN_DEFAULT = False


def restore_dynamo_limits() -> dict[str, Any]:
    """Put torch._dynamo's recompile limits back to torch's defaults where sdnq raised them, when sdnq passes its own
    limit to each function it compiles (torch >= 2.12; older torch reads only the global, so it stays raised there).
    Returns what was done, for the record."""
    import torch
    import torch._dynamo.config as dynamo_config
    from sdnq import common

    if not getattr(common, "use_torch_compile", False):
        return {"sdnq_torch_compile": False, "restored": {}}
    major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    if (major, minor) < (2, 12):
        return {"sdnq_torch_compile": True, "restored": {},
                "kept_raised": f"torch {torch.__version__} < 2.12: sdnq's compiled functions rely on the global limit"}
    restored = {}
    for key in DYNAMO_LIMITS:
        entry = getattr(dynamo_config, "_config", {}).get(key)
        default = getattr(entry, "default", None)
        now = getattr(dynamo_config, key, None)
        if isinstance(default, int) and isinstance(now, int) and now > default:
            setattr(dynamo_config, key, default)
            restored[key] = {"raised_by_sdnq_to": now, "restored_to": default}
    return {"sdnq_torch_compile": True, "restored": restored}


class SDNQQuantizer(Quantizer):
    library = LIBRARY

    def config(self, backend: Backend, component: "Component", ctx: BuildContext) -> Any:
        if component.config_library == DIFFUSERS:
            from diffusers import SDNQConfig
        else:
            from sdnq import SDNQConfig
        # The backend's options are SDNQConfig's own keyword arguments (a --config table may add any other one).
        return SDNQConfig(**dict(ctx.options))

    def prepare(self, backend: Backend, ctx: BuildContext) -> dict[str, Any] | None:
        import torch

        t0 = time.perf_counter()
        done = restore_dynamo_limits()
        # use_svd's low-rank branch comes from torch.svd_lowrank, a randomized SVD drawing from the global RNG:
        # seeded here, right before loading, the same checkpoint quantizes to the same bytes in every process.
        seed = int(SEED)
        torch.manual_seed(seed)
        return {"what": "undo sdnq's process-wide torch._dynamo recompile limits (set at `import sdnq`); seed the "
                        "RNG its randomized SVD draws from", **done, "rng_seed": seed,
                "seconds": time.perf_counter() - t0}


def _sdnq(name: str, description: str, **options: Any) -> Backend:
    return Backend(name, LIBRARY, description, kind=str(options["weights_dtype"]),
                   options=MappingProxyType(options), in_seed_study=False, in_default=IN_DEFAULT)


BACKENDS = (
    _sdnq("sdnq-int8", "SDNQ int8 weights (sdnq's default group size and skip list)", weights_dtype="int8"),
    _sdnq("sdnq-uint4", "SDNQ uint4 weights (packed two per byte)", weights_dtype="uint4"),
    _sdnq("sdnq-fp8", "SDNQ float8 (e4m3) weights", weights_dtype="float8_e4m3fn"),
    _sdnq("sdnq-uint4-svd", "SDNQ uint4 weights with an SVDQuant-style low-rank bf16 correction (rank 32)",
          weights_dtype="uint4", use_svd=True),
    _sdnq("sdnq-int8-mm", "SDNQ int8 weights with a quantized int8 matmul (activations quantized on the fly)",
          weights_dtype="int8", use_quantized_matmul=True),
)
QUANTIZER = SDNQQuantizer()

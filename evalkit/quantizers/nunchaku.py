"""Nunchaku Lite (diffusers' `NunchakuLiteQuantizationConfig`): SVDQuant W4A4 (int4 or NVFP4, with a low-rank bf16
branch) and AWQ W4A16 checkpoints made by diffuse-compressor. Prequantized only: diffusers loads them, nobody
quantizes from bf16 here. Its backends are names that say why they do not run; a real checkpoint loads with
`--backend NAME=DIR` (its config.json's quant_method is `nunchaku_lite`) where the GPU allows.

What diffusers 0.42.1's `validate_environment` demands, in its order (read from the source; CPU and a simulated
SM 9.0 confirmed the texts; a test checks them): the `kernels` package; a CUDA GPU; not Hopper
("Loading Nunchaku checkpoints is not supported on Hopper NVIDIA GPUs."); NVFP4 needs SM >= 10.0, int4 SM >= 7.5.
Then its kernels come from the Hub (`rootonchair/nunchaku-lite-kernels`, version 2, through `kernels.get_kernel`),
which runs remote code: only with DIFFUSERS_TRUST_REMOTE_KERNELS=true, and only from the HF cache in evalkit's
offline workers.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from evalkit.quantizers.base import DENOISER_ROLE, Backend, Library, Quantizer

LIBRARY = Library("nunchaku", "kernels", "kernels", "Nunchaku Lite", 10, "#999933", layer_marker="SVDQW4A4Linear",
                  versioned=("kernels",), quant_methods=("nunchaku_lite",))

KERNEL_REPO = "rootonchair/nunchaku-lite-kernels"
PREQUANTIZED_ONLY = ("prequantized only: diffusers loads Nunchaku Lite checkpoints made by diffuse-compressor and "
                     "cannot quantize from bf16; give one with --backend NAME=DIR")
# Run when named or with `--backends all`, not with `default`: #26's libraries cost the tiny headline run minutes of
# CPU (docs/quantizers.md, "default and all"); one field to flip once their GPU rows stand.
IN_DEFAULT = False


def _kernels_cached() -> bool:
    """Whether the Hub kernel repo is in the HF cache (evalkit's workers run with HF_HUB_OFFLINE=1)."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return False
    return os.path.isdir(os.path.join(HF_HUB_CACHE, "models--" + KERNEL_REPO.replace("/", "--")))


def device_reason(precision: str, device: str, capability: tuple[int, int] | None) -> str | None:
    """Why diffusers refuses a Nunchaku checkpoint of `precision` ("int4" | "nvfp4") on this device, in its own
    words; None where the GPU itself is accepted."""
    if device != "cuda":
        return "needs a CUDA GPU (diffusers: \"Loading Nunchaku checkpoints requires a CUDA-capable NVIDIA GPU.\")"
    if capability is None:
        return None
    reasons = []
    if capability[0] == 9:
        reasons.append("diffusers 0.42.1 refuses Hopper: \"Loading Nunchaku checkpoints is not supported on Hopper "
                       "NVIDIA GPUs.\" (int4 runs on SM 7.5-8.x and >= 10.0)")
    if precision == "nvfp4" and capability < (10, 0):
        reasons.append("NVFP4 needs a Blackwell GPU, SM >= 10.0 (this GPU: %d.%d)" % capability)
    if precision == "int4" and capability < (7, 5):
        reasons.append("int4 needs a Turing or newer GPU, SM >= 7.5 (this GPU: %d.%d)" % capability)
    return "; ".join(reasons) or None


def kernels_reason() -> str | None:
    """Why the remote kernels cannot load here (None: trusted and cached)."""
    if os.environ.get("DIFFUSERS_TRUST_REMOTE_KERNELS", "").lower() not in ("1", "true", "yes"):
        return (f"needs remote kernels: diffusers downloads and runs {KERNEL_REPO} from the Hub only with "
                "DIFFUSERS_TRUST_REMOTE_KERNELS=true")
    if not _kernels_cached():
        return f"needs remote kernels: {KERNEL_REPO} is not in the HF cache (evalkit's workers never download)"
    return None


def _precision(config: Mapping[str, Any]) -> str:
    section = config.get("svdq_w4a4") or config.get("awq_w4a16") or {}
    return str(section.get("precision", "int4")) if isinstance(section, dict) else "int4"


class NunchakuQuantizer(Quantizer):
    library = LIBRARY

    def unavailable(self, backend: Backend, device: str, capability: tuple[int, int] | None,
                    family: Any = None) -> str | None:
        # The device's verdict first (it is what a user can act on), then what no device would fix here.
        reasons = [r for r in (device_reason(backend.kind, device, capability), kernels_reason()) if r]
        return "; ".join([*reasons, PREQUANTIZED_ONLY])

    def checkpoint_unavailable(self, checkpoint: Mapping[str, Any], device: str,
                               capability: tuple[int, int] | None) -> str | None:
        precisions = {_precision(c.get("quantization_config") or {})
                      for c in (checkpoint.get("components") or {}).values()}
        reasons = [r for p in sorted(precisions) for r in [device_reason(p, device, capability)] if r]
        reasons += [r for r in [kernels_reason()] if r]
        return "; ".join(dict.fromkeys(reasons)) or None


def _nunchaku(name: str, precision: str, description: str) -> Backend:
    # Every device is judged by `unavailable` (CPU included), so the reason names all that stands in the way.
    return Backend(name, LIBRARY, description, kind=precision, roles=(DENOISER_ROLE,),
                   supported_roles=(DENOISER_ROLE,), in_seed_study=False, in_default=IN_DEFAULT)


BACKENDS = (
    _nunchaku("nunchaku-svdq-int4", "int4", "Nunchaku Lite SVDQuant W4A4 int4 (group 64, low-rank bf16 branch), "
              "prequantized"),
    _nunchaku("nunchaku-svdq-nvfp4", "nvfp4", "Nunchaku Lite SVDQuant W4A4 NVFP4 (group 16, low-rank bf16 branch), "
              "prequantized"),
)
QUANTIZER = NunchakuQuantizer()

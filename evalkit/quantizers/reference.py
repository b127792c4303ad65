"""The unquantized reference: bf16 weights, plain torch. Every other backend is scored against its images."""

from __future__ import annotations

from evalkit.quantizers.base import REFERENCE_COLOUR, Backend, Library, Quantizer

LIBRARY = Library("torch", "torch", "torch", "none (bf16 reference)", 0, REFERENCE_COLOUR, reference=True,
                  preload_on_gpu_machine=True, versioned=("torch",))


class ReferenceQuantizer(Quantizer):
    library = LIBRARY


BACKENDS = (
    Backend("bf16", LIBRARY, "bf16 weights, no quantization: the reference every other backend is scored against",
            roles=(), supported_roles=(), reference=True),
)
QUANTIZER = ReferenceQuantizer()

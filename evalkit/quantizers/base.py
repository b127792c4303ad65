"""Backend libraries: one record per quantization library, the only place its facts are written down.

Every `Backend` in evalkit/quantizers/registry.py names one of these records by key; the generate stage, the
worker's preloading, the manifest's version list, the report's order and colours and the tests read the facts
from here. A library's pip or import name written anywhere else is a bug (tests/test_libraries.py looks for it).

To add a library: one `Library(...)` in `LIBRARY_LIST`, then its backends in evalkit/quantizers/registry.py.
Importing this module is cheap (no torch): `evalkit --help` and the report read it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

# Colour-blind-safe palette (Okabe & Ito); the reference is always black.
REFERENCE_COLOUR = "#000000"


@dataclass(frozen=True)
class Library:
    """Facts about one library that provides backends."""

    key: str  # the name records use (`recipe.library`), e.g. "optimum-quanto"
    pip_name: str  # what `pip install` takes
    import_name: str  # what must be importable for its backends to run
    display: str  # how the report names it
    order: int  # position in report tables and legends (reference first)
    colour: str  # report colour of its backends
    # Quantizes each layer on the GPU as the pipeline loads when loaded with device_map="cuda" (no offload).
    quantize_on_gpu: bool = False
    # Its import leaves CUDA uninitialized, so a forkserver may preload it on a GPU machine. (Probed on an H100:
    # optimum-quanto asks every GPU for its capability at import, which poisons forked children.)
    preload_on_gpu_machine: bool = False
    # Extra modules a forkserver preloads on a machine without a GPU, to save each worker the import.
    preload_modules: tuple[str, ...] = ()
    # The substring of a quantized layer's type name (generation record `quantization.layer_types`) that proves the
    # layer was really quantized, not left in bf16.
    layer_marker: str = ""
    # Distributions whose versions the manifest records for backends of this library (its own pip name first).
    versioned: tuple[str, ...] = ()
    reference: bool = False  # the unquantized reference's "library" (plain torch)

    def __post_init__(self) -> None:
        if not self.key or not self.pip_name or not self.import_name:
            raise ValueError(f"Library record needs key, pip_name and import_name: {self!r}")
        if not self.colour.startswith("#") or len(self.colour) != 7:
            raise ValueError(f"Library {self.key!r}: colour must be #rrggbb, got {self.colour!r}")

    def available(self) -> bool:
        try:
            return importlib.util.find_spec(self.import_name) is not None
        except (ModuleNotFoundError, ValueError):
            return False

    @property
    def install_hint(self) -> str:
        return f"needs the {self.pip_name} package (pip install {self.pip_name})"


LIBRARY_LIST: tuple[Library, ...] = (
    Library("torch", "torch", "torch", "none (bf16 reference)", 0, REFERENCE_COLOUR, reference=True,
            preload_on_gpu_machine=True, versioned=("torch",)),
    Library("bitsandbytes", "bitsandbytes", "bitsandbytes", "bitsandbytes", 1, "#0072B2",
            preload_modules=("bitsandbytes",), layer_marker="Linear", versioned=("bitsandbytes",)),
    Library("torchao", "torchao", "torchao", "torchao", 2, "#E69F00", quantize_on_gpu=True,
            preload_modules=("torchao",), layer_marker="Tensor", versioned=("torchao",)),
    Library("optimum-quanto", "optimum-quanto", "optimum.quanto", "optimum-quanto", 3, "#009E73",
            quantize_on_gpu=True, preload_modules=("optimum.quanto",), layer_marker="QLinear",
            versioned=("optimum-quanto",)),
    Library("gguf", "gguf", "gguf", "GGUF", 4, "#D55E00", preload_modules=("gguf",), layer_marker="GGUF",
            versioned=("gguf",)),
    Library("diffusers", "diffusers", "diffusers", "diffusers (layerwise casting)", 5, "#CC79A7",
            layer_marker="float8_e4m3fn", versioned=("diffusers",)),
)

_by_key: dict[str, Library] = {}
for _lib in LIBRARY_LIST:
    if _lib.key in _by_key:
        raise ValueError(f"library {_lib.key!r} is listed twice")
    _by_key[_lib.key] = _lib
LIBRARIES: Mapping[str, Library] = MappingProxyType(_by_key)


def get_library(key: str) -> Library:
    """The record for `key`, with a one-line error naming the known keys."""
    try:
        return LIBRARIES[key]
    except KeyError:
        raise KeyError(f"unknown backend library {key!r}; known: {', '.join(LIBRARIES)}") from None


def library_order(key: str) -> int:
    """Sort key for reports: registered libraries in their order, unknown ones (an older run's) last."""
    lib = LIBRARIES.get(key)
    return lib.order if lib else len(LIBRARIES)

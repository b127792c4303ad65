"""What every quantization library provides, behind one base, as diffusers' `quantizers/` does.

A library module (evalkit/quantizers/<library>.py or a folder) holds, and is the only place that names:
- its `Library` record: pip and import names, report order and colour, preloading, the census marker, versions;
- its `Backend` recipes: frozen data naming the library record, the roles quantized and the library's own options;
- a `Quantizer` subclass: how a recipe becomes a quantization config per component, a component loaded by the
  library itself (a GGUF file), a post-load transform, a one-time preparation (a kernel build, a calibration), extra
  runnability checks judged from a device and capability alone, and how it reads a prequantized checkpoint.

evalkit/quantizers/registry.py collects them (`register_library`); the worker calls the `Quantizer` methods and
never branches on a library's name. Importing this module is cheap (no torch): `evalkit --help` and the report read
it; libraries are imported inside the methods, in the worker.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from evalkit.families.base import Component

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
    # Its import leaves CUDA uninitialized, so a forkserver may preload it on a GPU machine. (Not every library's
    # does: optimum-quanto asks every GPU for its capability at import, which poisons forked children;
    # benchmarks/results/gpu-2026-11-21.md.)
    preload_on_gpu_machine: bool = False
    # Extra modules a forkserver preloads on a machine without a GPU, to save each worker the import.
    preload_modules: tuple[str, ...] = ()
    # The substring of a quantized layer's type name (generation record `quantization.layer_types`) that proves the
    # layer was really quantized, not left in bf16.
    layer_marker: str = ""
    # Distributions whose versions the manifest records for backends of this library (its own pip name first).
    versioned: tuple[str, ...] = ()
    reference: bool = False  # the unquantized reference's "library" (plain torch)
    # Set when upstream has deprecated this library's integration: shown by `evalkit backends` and the report.
    deprecated: str | None = None
    # Extra install arguments, e.g. ("--no-deps",) for a package whose dependencies would pull torchvision.
    install_note: str = ""
    # The `quant_method` values of a checkpoint's `quantization_config` (config.json) that this library reads: a
    # prequantized folder naming one is loaded as this library's (evalkit/quantizers/checkpoint.py).
    quant_methods: tuple[str, ...] = ()

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
        return f"needs the {self.pip_name} package (pip install {self.pip_name}{self.install_note})"


@dataclass(frozen=True)
class BuildContext:
    """What a recipe may look at when it builds its configs (inside the worker)."""

    device: str  # "cpu" | "cuda"
    capability: tuple[int, int] | None
    model_path: str
    options: Mapping[str, Any]  # the backend's options with the user's `--config` ones merged over them
    cache_dir: str
    family: str = ""  # the model family's key (evalkit.families)
    checkpoint: str | None = None  # a prequantized file given for the run (`--gguf-file`), read by the GGUF library
    # The run's plan (manifest `compute`, evalkit/generate/worker/compute_dtype.py): component -> dtype name. A
    # library with its own compute-dtype setting takes it from here, so every backend computes as the reference does.
    compute_dtypes: Mapping[str, str] = field(default_factory=dict)

    def compute_dtype(self, component: str) -> Any:
        """The torch dtype `component` computes in under the run's plan (bf16 when the plan does not name it)."""
        import torch

        return getattr(torch, self.compute_dtypes.get(component, "bfloat16"))

    # The study's prompts and generation settings (manifest `generation`): a library that calibrates on the study's
    # own prompts (AutoRound) reads them; () / {} where the caller has none.
    prompts: tuple[str, ...] = ()
    generation: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


def release_device_memory() -> None:
    """Give back what a one-time step (a calibration run, a checkpoint writer) left in torch's CUDA caching allocator,
    so that the backend's memory after loading and at peak are its own (called at the end of such a `prepare`)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# Roles a backend quantizes (the family says which components have them): evalkit.families.base.DENOISER, ...
DENOISER_ROLE = "denoiser"
TEXT_ENCODER_ROLE = "text_encoder"


@dataclass(frozen=True)
class Backend:
    """One way of loading a pipeline: a frozen recipe of one library."""

    name: str
    library: Library  # its library's record: install name, import name, report order and colour, ...
    description: str
    kind: str = ""  # what the recipe asks its library for, in the library's terms ("nf4", "int8wo"): its Quantizer reads it
    devices: tuple[str, ...] = ("cpu", "cuda")
    roles: tuple[str, ...] = (DENOISER_ROLE, TEXT_ENCODER_ROLE)  # quantized by default (components marked quantized)
    supported_roles: tuple[str, ...] = (DENOISER_ROLE, TEXT_ENCODER_ROLE)
    # On CPU, only components whose quantization config comes from these libraries ("transformers": bitsandbytes
    # quantizes a transformers text encoder on CPU, while diffusers' bnb quantizer needs a GPU). None: no narrowing.
    cpu_config_libraries: tuple[str, ...] | None = None
    min_capability: tuple[int, int] | None = None  # CUDA compute capability
    cpu_unsupported_reason: str = "needs a CUDA GPU"
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    in_seed_study: bool = True
    # False: run only when named or with `--backends all`, not with `default` (a backend that first calibrates for
    # minutes on the study's prompts, AutoRound's SignRound; the libraries added by #26, opt-in while unmeasured)
    in_default: bool = True
    reference: bool = False
    # What proves a component was quantized when the library marks layers its own way (default: library.layer_marker)
    layer_marker: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.library, Library):
            raise TypeError(f"backend {self.name!r}: library must be a Library record (evalkit/quantizers/base.py), "
                            f"got {self.library!r}")


@dataclass(frozen=True)
class Modifier:
    name: str
    description: str
    devices: tuple[str, ...] = ("cpu", "cuda")
    cpu_unsupported_reason: str = ""


class Quantizer:
    """How one library's backends load. Subclasses override what their library does; the defaults do nothing.

    Every method runs in the worker process and may import its library and torch."""

    library: Library

    def config(self, backend: Backend, component: "Component", ctx: BuildContext) -> Any:
        """The quantization config for `component` (diffusers' class for a diffusers model, transformers' for a
        transformers one), for `PipelineQuantizationConfig(quant_mapping=...)`; None: this library does not quantize
        through configs."""
        return None

    def load_component(self, backend: Backend, component: "Component", ctx: BuildContext, family: Any,
                       info: dict[str, Any]) -> Any:
        """A component the library loads itself (a GGUF transformer), or None. May add facts to `info`."""
        return None

    def post_load(self, backend: Backend, pipe: Any, components: tuple["Component", ...],
                  ctx: BuildContext) -> dict[str, Any] | None:
        """A transform applied after loading (layerwise casting); returns what was done, for the record."""
        return None

    def prepare(self, backend: Backend, ctx: BuildContext) -> dict[str, Any] | None:
        """A one-time step before loading (a JIT kernel build), off the load clock; recorded as `prepare`."""
        return None

    def unavailable(self, backend: Backend, device: str, capability: tuple[int, int] | None,
                    family: Any = None) -> str | None:
        """Why `backend` cannot run on this device (or for this model family, when given) beyond its record's
        devices and capability: a kernel package missing, remote kernels, a GPU generation. None: it can."""
        return None

    def known_incompatible(self) -> Mapping[tuple[str, frozenset[str]], str]:
        """Combinations with modifiers that fail inside the library: (backend base name or '*', modifiers) ->
        reason. Recorded as failed instead of attempted (unless --attempt-known-failures)."""
        return {}

    # --- prequantized checkpoints (`--backend NAME=PATH`, evalkit/quantizers/checkpoint.py) ---------------------

    def read_file(self, path: str) -> dict[str, Any] | None:
        """Facts about a single-file checkpoint this library reads (a GGUF file, a BFL safetensors), or None when
        the file is not this library's. Runs in the stage (cheap: headers only, no torch). The facts go into the
        record; they must hold `scheme` (what the file is, in the library's terms), `component` (the family
        component it holds; "" = the denoiser) and `params` (the logical parameter count of its weights, scales
        left out: checked against the run's model, so a checkpoint of another architecture is refused)."""
        return None

    def load_checkpoint(self, backend: Backend, component: "Component", ctx: BuildContext, family: Any,
                        info: dict[str, Any], checkpoint: Mapping[str, Any]) -> Any:
        """`component` loaded from a prequantized checkpoint of this library (`checkpoint`: the facts
        checkpoint.py recorded: path, layout, settings). None: the generic route does it (the component's class
        `from_pretrained` on the folder; diffusers and transformers read its `quantization_config` themselves)."""
        return None

    def checkpoint_unavailable(self, checkpoint: Mapping[str, Any], device: str,
                               capability: tuple[int, int] | None) -> str | None:
        """Why a prequantized checkpoint of this library cannot load on `device` (a CUDA-only quantizer, a GPU
        generation), or None."""
        return None


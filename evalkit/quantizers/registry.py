"""The backend registry: one small frozen recipe per way of loading Flux.

To add a backend: add one `Backend(...)` to `BACKENDS` at the bottom of this file (and one test in
tests/test_backends.py). A recipe says which packages and devices it needs, which components it quantizes
by default, and either how to build the per-component quantization config (diffusers' config for the
transformer, transformers' for the T5 text encoder; both go into one `PipelineQuantizationConfig(quant_mapping=...)`)
or which post-load transform to apply.

Modifiers (`+compile`, `+offload`, `+group-offload`) combine with any backend: `bnb-nf4+compile+offload`.

This module imports no torch at import time (`evalkit backends` and `--help` stay fast); configs are built
inside the worker process.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from evalkit.errors import EvalkitError, suggest
from evalkit.quantizers.base import LIBRARIES, Library

COMPONENTS = ("transformer", "text_encoder_2")


@dataclass(frozen=True)
class BuildContext:
    """What a recipe may look at when it builds its configs (inside the worker)."""

    device: str  # "cpu" | "cuda"
    capability: tuple[int, int] | None
    model_path: str
    options: Mapping[str, Any]
    cache_dir: str


# A config builder gets (component, ctx) and returns a diffusers (transformer) or transformers (text encoder)
# quantization config object.
ConfigBuilder = Callable[[str, BuildContext], Any]


@dataclass(frozen=True)
class Backend:
    name: str
    library: Library  # its library's record: install name, import name, report order and colour, ...
    description: str
    devices: tuple[str, ...] = ("cpu", "cuda")
    components: tuple[str, ...] = COMPONENTS  # quantized by default
    supported_components: tuple[str, ...] = COMPONENTS
    cpu_components: tuple[str, ...] | None = None  # where only some components can be quantized on CPU
    min_capability: tuple[int, int] | None = None  # CUDA compute capability
    cpu_unsupported_reason: str = "needs a CUDA GPU"
    make_config: ConfigBuilder | None = None
    post_load: str | None = None  # name of a transform in evalkit.generate.worker.loading.POST_LOAD
    transformer_loader: str | None = None  # name of a loader in evalkit.generate.worker.loading.TRANSFORMER_LOADERS
    # name of a one-time step in evalkit.generate.worker.loading.PREPARE (e.g. a library's JIT kernel build), run before the
    # load clock starts; its time is recorded apart as `prepare`
    prepare: str | None = None
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    in_seed_study: bool = True
    reference: bool = False

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


# Combinations that fail inside the libraries; recorded as failed with the reason instead of attempted.
# Key: (backend base name or '*', frozenset of modifiers). Pass --attempt-known-failures to try anyway.
KNOWN_INCOMPATIBLE: dict[tuple[str, frozenset[str]], str] = {
    ("bnb-8bit", frozenset({"offload"})): "bitsandbytes 8-bit with model CPU offload fails (diffusers #10653)",
    ("bnb-8bit", frozenset({"group-offload"})): "bitsandbytes 8-bit weights cannot be moved by group offloading (Int8Params)",
    # Seen on an H100 with torchao 0.17 (benchmarks/results/gpu-2026-11-21.md): group offloading's stream path calls
    # aten.is_pinned, which torchao's quantized tensor subclass does not implement.
    ("torchao-int8wo", frozenset({"group-offload"})): "torchao quantized tensors do not implement aten.is_pinned, "
                                                       "which group offloading with streams calls (seen with torchao 0.17)",
}


# ---------------------------------------------------------------------------------------------------------------
# Config builders. Each imports its library lazily, inside the worker.


def _bnb(kind: str) -> ConfigBuilder:
    def build(component: str, ctx: BuildContext) -> Any:
        import torch

        if component == "transformer":
            from diffusers import BitsAndBytesConfig
        else:
            from transformers import BitsAndBytesConfig
        opts = dict(ctx.options)
        if kind == "8bit":
            kw: dict[str, Any] = {"load_in_8bit": True, "llm_int8_threshold": opts.get("llm_int8_threshold", 6.0)}
            if opts.get("llm_int8_skip_modules"):
                kw["llm_int8_skip_modules"] = list(opts["llm_int8_skip_modules"])
            return BitsAndBytesConfig(**kw)
        kw = {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4" if kind.startswith("nf4") else "fp4",
            "bnb_4bit_compute_dtype": torch.bfloat16,
            "bnb_4bit_use_double_quant": kind == "nf4-dq" or bool(opts.get("double_quant", False)),
        }
        if opts.get("llm_int8_skip_modules"):
            kw["llm_int8_skip_modules"] = list(opts["llm_int8_skip_modules"])
        return BitsAndBytesConfig(**kw)

    return build


# torchao's config versions pick the tensor path: version 2 is the current one (torchao 0.18 has removed 1, while 0.17
# still defaults Int8WeightOnlyConfig to the deprecated version 1). Stating it makes every machine take one path.
TORCHAO_CONFIG_VERSION = 2


def torchao_config(cls: Any, **kwargs: Any) -> Any:
    """`cls(**kwargs)` with `version=TORCHAO_CONFIG_VERSION` and `set_inductor_config=False` where the installed
    torchao's signature takes them.

    torchao's configs default to `set_inductor_config=True`: quantizing then switches on inductor's coordinate-descent
    tuning in all directions for the whole process (torchao 0.17 also sets float32 matmul precision to "high", i.e.
    TF32). At full size that tuning kept `torchao-int8wo+compile` compiling for > 5 minutes on an H200 while bf16 and
    bnb compiled in 13-33 s (benchmarks/results/compile-probe-h200-2026-11-29.md), and it made quantizing change how
    *other* code computes. evalkit keeps loading free of global side effects; the `[compile]` setting
    `coordinate_descent_tuning` (on in the "seed" preset) turns the tuning on where it is wanted."""
    import inspect

    params = inspect.signature(cls).parameters
    if "version" in params:
        kwargs["version"] = TORCHAO_CONFIG_VERSION
    if "set_inductor_config" in params:
        kwargs["set_inductor_config"] = False
    return cls(**kwargs)


def _torchao(kind: str) -> ConfigBuilder:
    def build(component: str, ctx: BuildContext) -> Any:
        import torch
        from torchao import quantization as q

        if kind == "int4wo":
            group = int(ctx.options.get("group_size", 128 if ctx.device == "cuda" else 32))
            if ctx.device == "cuda":
                # The default int4 packing needs the CUDA-only `mslk` package; the tinygemm layout runs on
                # core torch's _weight_int4pack_mm on Ampere/Hopper.
                quant = torchao_config(q.Int4WeightOnlyConfig, group_size=group, int4_packing_format="tile_packed_to_4d")
            else:
                # Int4WeightOnlyConfig has no CPU kernel; the intx path stores int4 values with per-group scales.
                quant = torchao_config(q.IntxWeightOnlyConfig, weight_dtype=torch.int4, granularity=q.PerGroup(group))
        elif kind == "int8wo":
            quant = torchao_config(q.Int8WeightOnlyConfig)
        elif kind == "fp8wo":
            quant = torchao_config(q.Float8WeightOnlyConfig)
        elif kind == "int8dq":
            quant = torchao_config(q.Int8DynamicActivationInt8WeightConfig)
        elif kind == "fp8dq":
            quant = torchao_config(q.Float8DynamicActivationFloat8WeightConfig, granularity=q.PerRow())
        else:  # pragma: no cover - registry typo
            raise ValueError(kind)
        skip = None
        if kind == "int4wo":
            # Group-wise int4 needs in_features divisible by the group size; Flux's x_embedder (64 inputs) is not.
            skip = indivisible_linears(ctx.model_path, component, group) or None
        if component == "transformer":
            from diffusers import TorchAoConfig
        else:
            from transformers import TorchAoConfig
        return TorchAoConfig(quant_type=quant, modules_to_not_convert=skip)

    return build


def indivisible_linears(model_path: str, component: str, group: int) -> list[str]:
    """Names of 2-D weights in a component's safetensors whose row length is not a multiple of `group`
    (read from the headers only; no weights are loaded)."""
    import glob
    import os

    from safetensors import safe_open

    names = []
    for f in sorted(glob.glob(os.path.join(model_path, component, "*.safetensors"))):
        with safe_open(f, "pt") as st:
            for key in st.keys():
                if key.endswith(".weight"):
                    shape = st.get_slice(key).get_shape()
                    if len(shape) == 2 and shape[1] % group:
                        names.append(key[: -len(".weight")])
    return names


def _quanto(weights: str) -> ConfigBuilder:
    def build(component: str, ctx: BuildContext) -> Any:
        if component == "transformer":
            from diffusers import QuantoConfig

            return QuantoConfig(weights_dtype=weights)
        from transformers import QuantoConfig

        return QuantoConfig(weights=weights)

    return build


# ---------------------------------------------------------------------------------------------------------------
# The registry. Names are a contract: tests, thresholds files and reports use them.

_BNB = dict(library=LIBRARIES["bitsandbytes"], cpu_components=("text_encoder_2",))
_AO = dict(library=LIBRARIES["torchao"])
_QUANTO = dict(library=LIBRARIES["optimum-quanto"])
_GGUF = dict(library=LIBRARIES["gguf"], components=("transformer",), supported_components=("transformer",),
             transformer_loader="gguf_file")

BACKEND_LIST: tuple[Backend, ...] = (
    Backend("bf16", LIBRARIES["torch"], "bf16 weights, no quantization: the reference every other backend is scored against",
            components=(), supported_components=(), reference=True),
    Backend("bnb-4bit", description="bitsandbytes 4-bit FP4 weights, bf16 compute", make_config=_bnb("fp4"), **_BNB),
    Backend("bnb-nf4", description="bitsandbytes 4-bit NF4 weights, bf16 compute", make_config=_bnb("nf4"), **_BNB),
    Backend("bnb-nf4-dq", description="bitsandbytes NF4 with nested (double) quantization of the scales",
            make_config=_bnb("nf4-dq"), in_seed_study=False, **_BNB),
    Backend("bnb-8bit", description="bitsandbytes LLM.int8() 8-bit weights (outlier threshold 6.0)",
            make_config=_bnb("8bit"), options=MappingProxyType({"llm_int8_threshold": 6.0}), **_BNB),
    Backend("torchao-int4wo", description="torchao int4 weight-only, group size 128 (CUDA: tinygemm tile layout; "
            "CPU: IntxWeightOnly int4, group 32)", make_config=_torchao("int4wo"), **_AO),
    Backend("torchao-int8wo", description="torchao int8 weight-only, per-row scales", make_config=_torchao("int8wo"), **_AO),
    Backend("torchao-fp8wo", description="torchao float8 (e4m3) weight-only", make_config=_torchao("fp8wo"), **_AO),
    Backend("torchao-int8dq", description="torchao int8 dynamic activation + int8 weight",
            make_config=_torchao("int8dq"), in_seed_study=False, **_AO),
    Backend("torchao-fp8dq", description="torchao float8 dynamic activation + float8 weight, per-row",
            make_config=_torchao("fp8dq"), in_seed_study=False, devices=("cuda",), min_capability=(8, 9),
            cpu_unsupported_reason="float8 dynamic activation needs CUDA compute capability >= 8.9", **_AO),
    Backend("quanto-int4", description="optimum-quanto int4 weights (group size 128)", make_config=_quanto("int4"),
            prepare="quanto_kernels", **_QUANTO),
    Backend("quanto-int8", description="optimum-quanto int8 weights", make_config=_quanto("int8"), **_QUANTO),
    Backend("quanto-fp8", description="optimum-quanto float8 (e4m3) weights", make_config=_quanto("float8"), **_QUANTO),
    Backend("gguf-q2_k", description="GGUF Q2_K transformer (T5 stays bf16)", options=MappingProxyType({"qtype": "Q2_K"}), **_GGUF),
    Backend("gguf-q4_1", description="GGUF Q4_1 transformer (T5 stays bf16)", options=MappingProxyType({"qtype": "Q4_1"}), **_GGUF),
    Backend("gguf-q8_0", description="GGUF Q8_0 transformer (T5 stays bf16)", options=MappingProxyType({"qtype": "Q8_0"}), **_GGUF),
    Backend("fp8-layerwise", LIBRARIES["diffusers"], "layerwise casting: transformer weights stored float8_e4m3fn, computed in bf16 "
            "(T5 stays bf16)", components=("transformer",), supported_components=("transformer",),
            post_load="layerwise_fp8"),
)

BACKENDS: Mapping[str, Backend] = MappingProxyType({b.name: b for b in BACKEND_LIST})

MODIFIERS: Mapping[str, Modifier] = MappingProxyType({
    "compile": Modifier("compile", "torch.compile the transformer; compile time is recorded apart from latency"),
    "offload": Modifier("offload", "model CPU offload (enable_model_cpu_offload): components move to the GPU in turn",
                        devices=("cuda",), cpu_unsupported_reason="model CPU offload needs an accelerator"),
    "group-offload": Modifier("group-offload", "group offload, leaf level, with CUDA streams", devices=("cuda",),
                              cpu_unsupported_reason="group offload needs an accelerator to onload to"),
})


@dataclass(frozen=True)
class BackendSpec:
    """A parsed `--backends` entry: a base recipe plus modifiers, e.g. `bnb-nf4+compile+offload`."""

    name: str
    backend: Backend
    modifiers: tuple[str, ...]

    @property
    def modifiers_offload(self) -> bool:
        return "offload" in self.modifiers or "group-offload" in self.modifiers

    def recipe(self, user_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The generation record's `recipe`, built here only: what ran (or would have), with the user's `--config`
        options for this backend merged over its own."""
        return {"name": self.backend.name, "library": self.backend.library.key, "description": self.backend.description,
                "modifiers": list(self.modifiers), "options": {**dict(self.backend.options), **dict(user_options or {})}}


def parse_backend(name: str) -> BackendSpec:
    """Parse `base+mod+mod`, with errors that suggest the closest names."""
    parts = [p.strip() for p in name.strip().split("+")]
    base, mods = parts[0], parts[1:]
    if base not in BACKENDS:
        hint = suggest(base, list(BACKENDS))
        raise EvalkitError(f"unknown backend {base!r}.{hint} (see `evalkit backends`)")
    seen: list[str] = []
    for m in mods:
        if m not in MODIFIERS:
            raise EvalkitError(f"unknown modifier {m!r} in {name!r}.{suggest(m, list(MODIFIERS))} "
                               f"Modifiers: {', '.join('+' + k for k in MODIFIERS)}")
        if m in seen:
            raise EvalkitError(f"modifier {m!r} given twice in {name!r}")
        seen.append(m)
    if "offload" in seen and "group-offload" in seen:
        raise EvalkitError(f"{name!r}: choose one of +offload and +group-offload")
    # Canonical order, so `a+offload+compile` and `a+compile+offload` share one directory.
    ordered = tuple(m for m in MODIFIERS if m in seen)
    return BackendSpec("+".join((base, *ordered)), BACKENDS[base], ordered)


def parse_backend_list(text: str | None, device: str, include_reference: bool = True) -> list[BackendSpec]:
    """`--backends` value: comma-separated names; `default` = every registry backend (the reference first);
    `seed` = the seed study's set. bf16 is included, first, since every score is against it, unless
    `include_reference` is False (calibration's `bf16+compile` sub-run: its reference is the run's own bf16)."""
    names: list[str] = []
    for item in (text or "default").split(","):
        item = item.strip()
        if not item:
            continue
        if item in ("default", "all"):
            names += [b.name for b in BACKEND_LIST]
        elif item == "seed":
            names += [b.name for b in BACKEND_LIST if b.in_seed_study]
        else:
            names.append(item)
    specs = [parse_backend(n) for n in names]
    out: list[BackendSpec] = []
    seen: set[str] = set()
    for s in ([parse_backend("bf16")] if include_reference else []) + specs:
        if s.name not in seen:
            seen.add(s.name)
            out.append(s)
    return out


def package_available(import_name: str) -> bool:
    try:
        return importlib.util.find_spec(import_name) is not None
    except (ModuleNotFoundError, ValueError):
        return False


def resolve_components(backend: Backend, requested: tuple[str, ...] | None, device: str) -> tuple[tuple[str, ...], str | None]:
    """Which components this backend quantizes here, and a note when the default was narrowed for the device."""
    if backend.reference:
        return (), None
    if requested is not None:
        comps = tuple(c for c in requested if c in backend.supported_components)
        return comps, None
    comps = backend.components
    if device == "cpu" and backend.cpu_components is not None:
        narrowed = tuple(c for c in comps if c in backend.cpu_components)
        if narrowed != comps:
            left = ", ".join(c for c in comps if c not in narrowed)
            return narrowed, f"{left} left in bf16 on CPU: diffusers' {backend.library.display} quantizer needs a GPU"
    return comps, None


def availability(spec: BackendSpec, device: str, capability: tuple[int, int] | None,
                 requested_components: tuple[str, ...] | None = None,
                 attempt_known_failures: bool = False) -> tuple[str, str | None]:
    """('ok', None), ('skipped', reason) when it cannot run on this machine, or ('failed', reason) for a known
    incompatible combination."""
    b = spec.backend
    if not b.library.available():
        return "skipped", b.library.install_hint
    if device not in b.devices:
        return "skipped", b.cpu_unsupported_reason
    if b.min_capability and device == "cuda" and capability is not None and tuple(capability) < b.min_capability:
        need = ".".join(map(str, b.min_capability))
        return "skipped", f"needs CUDA compute capability >= {need} (this GPU: {capability[0]}.{capability[1]})"
    for m in spec.modifiers:
        mod = MODIFIERS[m]
        if device not in mod.devices:
            return "skipped", f"+{m}: {mod.cpu_unsupported_reason}"
    if requested_components is not None and not b.reference:
        if not any(c in b.supported_components for c in requested_components):
            return "skipped", (f"--components {','.join(requested_components)}: {b.name} quantizes only "
                               f"{', '.join(b.supported_components)}")
        if device == "cpu" and b.cpu_components is not None:
            bad = [c for c in requested_components if c in b.supported_components and c not in b.cpu_components]
            if bad:
                return "skipped", f"quantizing {', '.join(bad)} with {b.library.display} through diffusers needs a GPU"
    comps, _ = resolve_components(b, requested_components, device)
    if not b.reference and not comps and b.make_config is not None:
        return "skipped", "no component left to quantize on this device"
    if not attempt_known_failures:
        mods = frozenset(spec.modifiers)
        for (base, need), reason in KNOWN_INCOMPATIBLE.items():
            if base in (b.name, "*") and need <= mods:
                return "failed", f"known incompatible: {reason} (use --attempt-known-failures to try anyway)"
    return "ok", None


def backend_rows(device: str, capability: tuple[int, int] | None) -> list[dict[str, Any]]:
    """One row per backend and modifier: whether it runs on `device` here and why not (`evalkit backends`,
    `evalkit.list_backends()`)."""
    rows: list[dict[str, Any]] = []
    for b in BACKEND_LIST:
        status, reason = availability(parse_backend(b.name), device, capability)
        comps, note = resolve_components(b, None, device)
        rows.append({"name": b.name, "kind": "backend", "library": b.library.key, "runs_here": status == "ok",
                     "reason": reason or note, "quantizes": list(comps), "description": b.description})
    for m in MODIFIERS.values():
        ok = device in m.devices
        rows.append({"name": "+" + m.name, "kind": "modifier", "library": "diffusers/torch", "runs_here": ok,
                     "reason": None if ok else m.cpu_unsupported_reason, "quantizes": [], "description": m.description})
    return rows

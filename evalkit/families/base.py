"""The `ModelFamily` record: everything evalkit knows about one text-to-image model family, declared once.

A family module (evalkit/families/<family>.py) builds one `ModelFamily` and registers it; nothing outside that module
names the family's pipeline or component classes. The generate stage, the worker, the GGUF converter and the report
read the facts from the record:

- the diffusers pipeline class and its components, which of them a quantizing backend quantizes by default (the
  denoiser and the large text encoders) and which library's quantization config applies to each;
- how to call the pipeline (`call_arguments`), with the defaults of the model card (`Variant.defaults`);
- its variants: the published full-size configs (for `random:<variant>`, with their parameter counts checked) and
  the hub id a real model is found under;
- a tiny build for CPU tests and demos;
- where regional compilation and GGUF apply.

Importing this module is cheap (no torch); builders import torch and diffusers inside.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from evalkit.errors import EvalkitError
from evalkit.io import file_lock
from evalkit.timeutil import utc_now

# Roles a component plays. A backend says which roles it quantizes; a family says which component has which role.
DENOISER = "denoiser"
TEXT_ENCODER = "text_encoder"
VAE = "vae"
ROLES = (DENOISER, TEXT_ENCODER, VAE)

# Which library's quantization config a component takes: diffusers' (ModelMixin) or transformers' (PreTrainedModel).
DIFFUSERS = "diffusers"
TRANSFORMERS = "transformers"


@dataclass(frozen=True)
class Component:
    """One module of the pipeline."""

    name: str  # the pipeline's attribute and subfolder, e.g. "text_encoder_2"
    role: str  # DENOISER | TEXT_ENCODER | VAE
    config_library: str  # DIFFUSERS | TRANSFORMERS: whose quantization config classes apply
    quantized: bool = False  # quantized by default by a backend that quantizes this role
    note: str = ""  # e.g. "T5-XXL encoder (4.8B)", "an LLM (Qwen3-4B) used as the text encoder"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"component {self.name!r}: role must be one of {ROLES}, got {self.role!r}")
        if self.config_library not in (DIFFUSERS, TRANSFORMERS):
            raise ValueError(f"component {self.name!r}: config_library must be {DIFFUSERS!r} or {TRANSFORMERS!r}")


@dataclass(frozen=True)
class GenerationDefaults:
    """The settings a model's card recommends (or, for the tiny build, small ones). evalkit's options override them."""

    height: int
    width: int
    num_inference_steps: int
    guidance_scale: float  # the family's guidance knob: distilled guidance, CFG or true CFG (see call_arguments)
    max_sequence_length: int | None  # None: the pipeline takes no such argument
    negative_prompt: str | None = None  # for families with classifier-free guidance


@dataclass(frozen=True)
class Tokenizer:
    """One text encoder's tokenizer, for the manifest's token counts: whether the pipeline truncates a prompt."""

    subfolder: str  # "tokenizer_2"
    encoder: str  # the name token counts use: "clip", "t5", "qwen", ...
    limit: int | None  # tokens the pipeline keeps; None = the run's max_sequence_length


@dataclass(frozen=True)
class Variant:
    """A released model of the family: its hub id, its card's defaults and its published full-size architecture."""

    name: str  # `random:<name>`, e.g. "flux1-dev"
    hub_id: str  # where a real copy is found in the HF cache
    defaults: GenerationDefaults
    # Full-size component configs: component name -> kwargs its builder takes (from the model's published config;
    # `source` cites it). Parameter counts are checked against `published_params` by a meta-device test.
    configs: Mapping[str, Mapping[str, Any]]
    published_params: Mapping[str, int]  # component -> parameter count from the model card / paper
    source: str  # where the configs and counts come from
    aliases: tuple[str, ...] = ()  # older names, e.g. "flux-dev"
    note: str = ""


@dataclass(frozen=True)
class GGUFSupport:
    """Where GGUF applies: the component diffusers loads from a single GGUF file (its class must be single-file
    loadable), the architecture name GGUF files of it carry, and how a file with the original (non-diffusers) key
    names is recognised and mapped (a converter function of diffusers.loaders.single_file_utils)."""

    component: str
    arch: str
    original_key_markers: tuple[str, ...] = ()
    original_converter: str | None = None


@dataclass(frozen=True)
class ModelFamily:
    """Everything model-specific, behind one record. See the module docstring."""

    key: str  # "flux1": `tiny:<key>`, the manifest's `model.family`
    display: str  # "FLUX.1"
    pipeline_class: str  # the name of a diffusers pipeline class (each family module sets it); imported in the worker only
    components: tuple[Component, ...]
    variants: tuple[Variant, ...]
    tiny_defaults: GenerationDefaults
    tiny_configs: Mapping[str, Mapping[str, Any]]
    # configs (component -> kwargs) -> {component name: module} for the components configs names (build_named), weights
    # from the torch RNG and default dtype/device; a random build calls it one component at a time
    build_modules: Callable[[Mapping[str, Mapping[str, Any]]], dict[str, Any]]
    # the rest of the pipeline's arguments: tokenizers (built locally where the real ones cannot be had) and scheduler
    build_extras: Callable[[], dict[str, Any]]
    # (evalkit's generation settings, prompts) -> the pipeline's keyword arguments beside prompt and generator
    call_arguments: Callable[[Mapping[str, Any]], dict[str, Any]]
    tokenizers: tuple[Tokenizer, ...]
    size_multiple: int = 16  # height and width must be multiples (VAE factor x patch size)
    tiny_size_multiple: int = 8
    gguf: GGUFSupport | None = None
    # Other pipeline classes that load this family's checkpoints (a model_index.json naming one is this family)
    other_pipeline_classes: tuple[str, ...] = ()
    # Relative init scale for random full-size weights: default init of deep stacks overflows bf16 within a few
    # steps; scaling keeps activations finite (component -> factor)
    random_weight_scale: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    tokenizer_note: str = ""  # what the tiny/random builds use for tokenizers, when not the real one
    # Block classes `+compile`'s regional compilation compiles when the denoiser class declares none itself
    # (diffusers' `_repeated_blocks` is empty for SD3's and Sana's transformers); set on the loaded instance
    compile_blocks: tuple[str, ...] = ()
    # Full-size random builds only: better tokenizers than build_extras' where this machine has them (the real Qwen
    # vocabulary from an optional package). () -> (pipeline arguments replacing build_extras' tokenizers, the
    # tokenizer note the build's manifest carries instead of tokenizer_note)
    random_tokenizers: Callable[[], tuple[dict[str, Any], str]] | None = None
    # (backend base name, device or "*") -> why it fails inside its library for this family's pipeline there:
    # recorded as failed with the reason, not attempted, unless --attempt-known-failures (as a library's own
    # known_incompatible); a device is named where the failure was seen only there
    known_incompatible: Mapping[tuple[str, str], str] = field(default_factory=lambda: MappingProxyType({}))
    # Modules a worker forkserver imports once on a machine without a GPU (the pipeline's and its text encoders'),
    # so that each backend's process does not pay for them
    preload_modules: tuple[str, ...] = ()
    # Components the family loads itself from a real pipeline directory (its path -> {component name: object}),
    # for what `from_pretrained` cannot load on this machine (FLUX.2-dev's model_index.json names a processor class
    # that transformers imports only with torchvision). The worker passes None for each to `from_pretrained` and
    # registers the returned objects on the pipeline. None, or an empty dict: from_pretrained loads everything.
    supplied_components: Callable[[str], dict[str, Any]] | None = None
    version: str = "1"  # bump when a tiny or random build's bytes would change (the cache key)

    def __post_init__(self) -> None:
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise ValueError(f"family {self.key!r}: a component is listed twice")
        if sum(c.role == DENOISER for c in self.components) != 1:
            raise ValueError(f"family {self.key!r}: exactly one component must be the denoiser")
        if self.gguf is not None and self.gguf.component not in names:
            raise ValueError(f"family {self.key!r}: GGUF component {self.gguf.component!r} is not a component")
        for v in self.variants:
            unknown = set(v.configs) - set(names)
            if unknown:
                raise ValueError(f"family {self.key!r} variant {v.name!r}: configs for unknown components {unknown}")

    @property
    def denoiser(self) -> Component:
        return next(c for c in self.components if c.role == DENOISER)

    def component(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        raise EvalkitError(f"{self.display} has no component {name!r}; its components: "
                           f"{', '.join(c.name for c in self.components)}")

    def quantizable(self) -> tuple[Component, ...]:
        """Components a backend may quantize (the denoiser and the text encoders)."""
        return tuple(c for c in self.components if c.role in (DENOISER, TEXT_ENCODER))

    def variant(self, name: str) -> Variant | None:
        for v in self.variants:
            if name == v.name or name in v.aliases:
                return v
        return None

    def default_variant(self) -> Variant:
        return self.variants[0]

    def pipeline_classes(self) -> tuple[str, ...]:
        return (self.pipeline_class, *self.other_pipeline_classes)


# ---------------------------------------------------------------------------------------------------------------
# What every family's builders share.


def pipeline_arguments(gen: Mapping[str, Any], *, negative_prompt: bool = False,
                       guidance: str = "guidance_scale") -> dict[str, Any]:
    """The call arguments every family's pipeline takes under one name from evalkit's generation settings: size,
    steps, the guidance knob (`guidance` names it: Qwen-Image's is `true_cfg_scale`), max_sequence_length and, for a
    family that runs CFG against a negative prompt, the run's. A family's `call_arguments` adds what is its own."""
    args = {"height": gen["height"], "width": gen["width"], "num_inference_steps": gen["num_inference_steps"],
            guidance: gen["guidance_scale"], "max_sequence_length": gen["max_sequence_length"]}
    if negative_prompt:
        args["negative_prompt"] = gen.get("negative_prompt")
    return args


def build_named(configs: Mapping[str, Mapping[str, Any]],
                builders: Mapping[str, Callable[[Mapping[str, Any]], Any]]) -> dict[str, Any]:
    """The modules `configs` names, each from its builder, in the order of `builders`: the order they draw from the
    RNG, so a build of every component at once and one built a component at a time (a random build larger than the
    GPU) hold the same weights."""
    unknown = set(configs) - set(builders)
    if unknown:
        raise ValueError(f"no builder for {sorted(unknown)}; builders: {', '.join(builders)}")
    return {name: build(configs[name]) for name, build in builders.items() if name in configs}


def build_cached(target: Path, builder: Callable[[Path], None]) -> Path:
    """Build into a temp dir then rename, so a killed build never leaves a half model that looks complete."""
    marker = target / ".evalkit-complete"
    if marker.exists():
        return target
    with file_lock(target):
        if marker.exists():
            return target
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        builder(tmp)
        (tmp / ".evalkit-complete").write_text(utc_now())
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def save_pipeline(family: ModelFamily, components: Mapping[str, Any], out: Path,
                  max_shard_size: str | None = None) -> None:
    """`<Pipeline>(**components).save_pretrained(out)` with the family's pipeline class. `max_shard_size` bounds each
    safetensors file, and so the host memory a save takes: safetensors serialises a whole shard in memory, and
    transformers' default shard is 50GB (FLUX.2-dev's 48 GB Mistral-3 would be one)."""
    import diffusers

    getattr(diffusers, family.pipeline_class)(**components).save_pretrained(
        out, safe_serialization=True, max_shard_size=max_shard_size)


def save_one_at_a_time(family: ModelFamily, configs: Mapping[str, Mapping[str, Any]], extras: Mapping[str, Any],
                       out: Path, *, device: str, scale: Mapping[str, float] | None = None,
                       max_shard_size: str | None = None) -> None:
    """What `save_pipeline(family, {**family.build_modules(configs), **extras}, out)` writes, byte for byte, with one
    built module in memory at a time: each is built on `device`, multiplied by its `scale` factor if any, saved and
    freed before the next, so a build larger than the GPU (FLUX.2-dev's 104 GiB on an 80 GB card) can be made.
    model_index.json comes from the pipeline assembled on the meta device, which draws nothing from the RNG."""
    import diffusers
    import torch

    with torch.device("meta"):
        skeleton = family.build_modules(configs)
    pipe = getattr(diffusers, family.pipeline_class)(**skeleton, **extras)
    shard = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    for name in skeleton:  # build_named's order: the RNG's
        with torch.device(device):
            module = family.build_modules({name: configs[name]})[name]
        if scale and name in scale:
            with torch.no_grad():
                for p in module.parameters():
                    p.mul_(scale[name])
        module.save_pretrained(out / name, safe_serialization=True, **shard)
        del module
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    for name, obj in extras.items():
        if hasattr(obj, "save_pretrained"):  # not a pipeline's config value (klein's is_distilled): model_index.json's
            obj.save_pretrained(out / name)
    pipe.save_config(out)


def component_parameter_counts(family: ModelFamily, configs: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """What each module's checkpoint holds, built on the meta device (no memory, no time): its parameters plus its
    persistent buffers (a BatchNorm's running statistics are saved; rotary tables and CLIP's position ids are not),
    a tied tensor once (Qwen3-4B's lm_head is its embedding). Published sizes count the same way."""
    import torch

    with torch.device("meta"):
        built = family.build_modules(configs)
    return {name: sum({id(t): t.numel() for t in m.state_dict(keep_vars=True).values()}.values())
            for name, m in built.items()}

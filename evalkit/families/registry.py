"""The model-family registry, and which pipeline `--model` names.

`--model` takes:
- `tiny` or `tiny:<family>`: the family's tiny build with seeded random weights, made locally in seconds (CPU);
- `random:<variant>`: a variant's full-size architecture with random weights, built on a GPU once and cached;
- a Hugging Face id, from the local cache only (evalkit never downloads), or a local diffusers directory: the family
  is the one whose pipeline class the directory's model_index.json names.

Families register themselves with `register_family` (the built-ins from BUILTIN_FAMILIES, plugins and tests from
their own modules). Importing this module imports no torch.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError, MissingWeightsError, suggest
from evalkit.families.base import (GenerationDefaults, ModelFamily, Variant, build_cached, save_one_at_a_time,
                                   save_pipeline)
from evalkit.paths import cache_dir

# Built-in family modules under evalkit/families/, each defining FAMILY. The first is the default family.
BUILTIN_FAMILIES = ("flux1", "flux2", "flux2_klein", "chroma", "qwen_image", "z_image", "sd3", "sana",
                    "sana_sprint")
DEFAULT_MODEL = "black-forest-labs/FLUX.1-dev"
TINY_ALIAS = "tiny"  # `tiny` alone is the default family's tiny build

_FAMILIES: dict[str, ModelFamily] = {}
_loaded = False


def register_family(family: ModelFamily, replace: bool = False) -> ModelFamily:
    """Add a family (a plugin's or a test's). Its key and variant names must be new unless `replace`."""
    if not isinstance(family, ModelFamily):
        raise TypeError(f"register_family takes a ModelFamily record, got {type(family).__name__}")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", family.key):
        raise ValueError(f"family key {family.key!r}: lowercase letters, digits, '.' and '-' only")
    _load_builtins()
    if family.key in _FAMILIES and not replace:
        raise ValueError(f"model family {family.key!r} is registered twice")
    taken = {n: f.key for f in _FAMILIES.values() if f.key != family.key
             for v in f.variants for n in (v.name, *v.aliases)}
    for v in family.variants:
        for n in (v.name, *v.aliases):
            if n in taken:
                raise ValueError(f"variant name {n!r} of {family.key!r} is already a variant of {taken[n]!r}")
    _FAMILIES[family.key] = family
    return family


def unregister_family(key: str) -> None:
    _FAMILIES.pop(key, None)


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in BUILTIN_FAMILIES:
        family = importlib.import_module(f"evalkit.families.{name}").FAMILY
        if family.key in _FAMILIES:
            raise ValueError(f"model family {family.key!r} is registered twice")
        _FAMILIES[family.key] = family
    from evalkit.plugins import load_entry_points

    load_entry_points("evalkit.families")  # installed packages' families (docs/plugins.md)


def families() -> list[ModelFamily]:
    _load_builtins()
    return list(_FAMILIES.values())


def get_family(key: str) -> ModelFamily:
    _load_builtins()
    try:
        return _FAMILIES[key]
    except KeyError:
        raise EvalkitError(f"unknown model family {key!r}.{suggest(key, list(_FAMILIES))} Known: "
                           f"{', '.join(_FAMILIES)} (see `evalkit models`)") from None


def default_family() -> ModelFamily:
    return get_family(BUILTIN_FAMILIES[0])


def find_variant(name: str) -> tuple[ModelFamily, Variant]:
    for fam in families():
        v = fam.variant(name)
        if v is not None:
            return fam, v
    names = [n for f in families() for v in f.variants for n in (v.name, *v.aliases)]
    raise EvalkitError(f"--model random:{name}: unknown variant.{suggest(name, names)} Known: "
                       f"{', '.join(v.name for f in families() for v in f.variants)} (see `evalkit models`)")


def family_of_pipeline_dir(path: Path) -> ModelFamily:
    """The family whose pipeline class a diffusers directory's model_index.json names."""
    index = path / "model_index.json"
    try:
        cls = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError) as e:
        raise EvalkitError(f"{index}: cannot read the pipeline class ({e})") from None
    for fam in families():
        if cls in fam.pipeline_classes():
            return fam
    known = ", ".join(c for f in families() for c in f.pipeline_classes())
    raise EvalkitError(f"{index}: pipeline class {cls!r} is not a model family evalkit knows ({known}); "
                       "see docs/models.md to add one")


@dataclass(frozen=True)
class ModelInfo:
    """What `--model` resolved to (the manifest's `model` record, less `defaults`)."""

    spec: str
    kind: str  # "tiny" | "random" | "hub" | "local"
    path: str
    random_weights: bool
    quality_meaningful: bool
    defaults: GenerationDefaults
    family: str = ""
    variant: str | None = None
    pipeline_class: str = ""
    note: str = ""
    tokenizer_note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_manifest(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("defaults")
        return d


def classify_model_spec(spec: str) -> str:
    """'tiny' | 'random' | 'local' | 'hub', without touching the disk beyond an existence check."""
    if spec == TINY_ALIAS or spec.startswith("tiny:"):
        return "tiny"
    if spec.startswith("random:"):
        return "random"
    if os.path.exists(os.path.expanduser(spec)) or spec.startswith(("/", "./", "../", "~", ".")):
        return "local"
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        return "hub"
    raise EvalkitError(f"--model {spec!r}: not a model. Use a Hugging Face id (e.g. {DEFAULT_MODEL}), a local "
                       "diffusers directory, 'tiny[:FAMILY]' or 'random:VARIANT' (see `evalkit models`)")


def family_of_manifest(manifest: Any) -> ModelFamily:
    """The family a run was made with: the manifest's `model.family` (schema 1 runs predate families: FLUX.1)."""
    model = manifest.get("model") if isinstance(manifest, dict) else None
    key = (model or {}).get("family") or BUILTIN_FAMILIES[0]
    return get_family(key)


def family_of_spec(spec: str) -> ModelFamily | None:
    """The family a spec names without resolving it (tiny, random, a known hub id); None for a path."""
    kind = classify_model_spec(spec)
    if kind == "tiny":
        return default_family() if spec == TINY_ALIAS else get_family(spec.split(":", 1)[1])
    if kind == "random":
        return find_variant(spec.split(":", 1)[1])[0]
    if kind == "hub":
        for fam in families():
            if any(v.hub_id == spec for v in fam.variants):
                return fam
    return None


def resolve_model(spec: str, device: str = "cpu", build: bool = True) -> ModelInfo:
    """Find (or, for tiny/random, build and cache) the pipeline directory for `spec`."""
    kind = classify_model_spec(spec)
    if kind == "tiny":
        fam = family_of_spec(spec)
        assert fam is not None
        path = ensure_tiny(fam) if build else tiny_path(fam)
        # random_weights False: the tiny model's images are compared with each other (paired metrics are real
        # comparisons of a real computation), unlike a full-size random build's, which no metric reads
        return ModelInfo(spec, "tiny", str(path), False, True, fam.tiny_defaults, fam.key, None, fam.pipeline_class,
                         note=f"embedded tiny {fam.display} pipeline built from configs with seeded random weights; "
                              "its images are noise-like pictures from random weights, for tests and demos: they "
                              "show that the study runs, not how good a real model's quantization is",
                         tokenizer_note=fam.tokenizer_note)
    if kind == "random":
        fam, variant = find_variant(spec.split(":", 1)[1])
        path = ensure_random(fam, variant, device) if build else random_path(fam, variant)
        return ModelInfo(spec, "random", str(path), True, False, variant.defaults, fam.key, variant.name,
                         fam.pipeline_class,
                         note=f"full-size {variant.name} architecture with RANDOM weights: memory and latency are "
                              "real, images carry no quality information",
                         tokenizer_note=_built_tokenizer_note(path) or fam.tokenizer_note)
    if kind == "local":
        path = Path(os.path.expanduser(spec))
        if not path.exists():
            raise EvalkitError(f"--model {spec}: model directory not found")
        if not (path / "model_index.json").exists():
            raise EvalkitError(f"--model {spec}: not a diffusers pipeline directory (no model_index.json in {path})")
        return _real(spec, "local", path.resolve())
    return _real(spec, "hub", resolve_hub_model(spec))


def _real(spec: str, kind: str, path: Path) -> ModelInfo:
    fam = family_of_pipeline_dir(path)
    variant = next((v for v in fam.variants if v.hub_id == spec), None) if kind == "hub" else None
    defaults = (variant or fam.default_variant()).defaults
    cls = json.loads((path / "model_index.json").read_text(encoding="utf-8")).get("_class_name") or fam.pipeline_class
    note = "" if variant or kind == "hub" else (f"defaults of {fam.default_variant().name} (the directory does not say "
                                                "which variant it is); override them with the generation options")
    return ModelInfo(spec, kind, str(path), False, True, defaults, fam.key, variant.name if variant else None, cls,
                     note=note)


def resolve_hub_model(repo_id: str) -> Path:
    """The local snapshot of a hub model, from the HF cache only (HF_HOME / HF_HUB_CACHE are honoured)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - a dependency of diffusers
        raise EvalkitError(f"huggingface_hub is not installed ({e})") from None
    try:
        path = snapshot_download(repo_id, local_files_only=True)
    except Exception as e:  # LocalEntryNotFoundError, GatedRepoError, ... all mean "not here"
        from huggingface_hub import constants

        raise MissingWeightsError(
            f"--model {repo_id}: not in the local Hugging Face cache ({constants.HF_HUB_CACHE}); evalkit never "
            "downloads. "
            f"On a machine with access run `hf download {repo_id}` (set HF_HOME to share the cache), "
            f"or pass --model /path/to/a/diffusers/dir. [{type(e).__name__}]"
        ) from None
    if not (Path(path) / "model_index.json").exists():
        raise EvalkitError(f"--model {repo_id}: cached snapshot {path} has no model_index.json (incomplete download?)")
    return Path(path)


# ---------------------------------------------------------------------------------------------------------------
# Tiny and random builds, the same for every family.


def tiny_path(fam: ModelFamily) -> Path:
    return cache_dir() / "models" / f"tiny-{fam.key}-v{fam.version}"


def random_path(fam: ModelFamily, variant: Variant) -> Path:
    return cache_dir() / "models" / f"random-{variant.name}-v{fam.version}"


def ensure_tiny(fam: ModelFamily) -> Path:
    """The family's tiny pipeline, built once from its tiny configs with seed 0 and cached on disk."""

    def build(out: Path) -> None:
        import torch

        torch.manual_seed(0)
        modules = fam.build_modules(fam.tiny_configs)
        save_pipeline(fam, {**modules, **fam.build_extras()}, out)

    return build_cached(tiny_path(fam), build)


# A random build whose tokenizers are not build_extras' (ModelFamily.random_tokenizers) says which it used here:
# whether the optional real vocabulary was installed is a fact of the machine that built it, not of the family.
TOKENIZER_NOTE_FILE = "evalkit-tokenizer-note.txt"


def _built_tokenizer_note(path: Path) -> str | None:
    try:
        return (path / TOKENIZER_NOTE_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


# A random build's shards: small enough that saving one next to the build already written (on a RAM-backed cache, the
# way FLUX.2-dev's 112 GB fits a 128 GiB machine with a 64 GiB disk) leaves the host room; loading reads them alike.
RANDOM_SHARD_SIZE = "5GB"


def ensure_random(fam: ModelFamily, variant: Variant, device: str) -> Path:
    """A variant's full-size architecture with random bf16 weights, created on the GPU (fast: 12B parameters take
    minutes to initialise on a CPU) and saved once, so quantize-on-load backends read it like real weights."""
    target = random_path(fam, variant)

    def build(out: Path) -> None:
        import torch

        if not torch.cuda.is_available():
            raise EvalkitError(f"random:{variant.name} is built on a CUDA GPU; none is available here. "
                               f"Use --model tiny:{fam.key} on CPU")
        torch.manual_seed(0)
        extras = fam.build_extras()
        if fam.random_tokenizers is not None:
            tokenizers, note = fam.random_tokenizers()
            extras.update(tokenizers)
        prev = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            save_one_at_a_time(fam, variant.configs, extras, out, device="cuda", scale=fam.random_weight_scale,
                               max_shard_size=RANDOM_SHARD_SIZE)
        finally:
            torch.set_default_dtype(prev)
        if fam.random_tokenizers is not None:
            (out / TOKENIZER_NOTE_FILE).write_text(note, encoding="utf-8")

    if not (target / ".evalkit-complete").exists() and device == "cpu":
        raise EvalkitError(f"random:{variant.name} needs a CUDA device to build and run (--device cuda); "
                           f"use --model tiny:{fam.key} on CPU")
    return build_cached(target, build)


def ensure_tiny_pipeline(family: str | None = None) -> Path:
    """The tiny pipeline of `family` (default: the default family), built if needed."""
    return ensure_tiny(get_family(family) if family else default_family())

"""Prequantized checkpoints as backends: `--backend NAME=PATH_OR_HUB_ID` (repeatable).

What a checkpoint can be, and who reads it:
- a diffusers component folder (`config.json` with a `quantization_config`, e.g. a `save_pretrained` of a quantized
  transformer) or a whole pipeline folder (`model_index.json`; its components that carry a `quantization_config`
  are loaded from it, the others from the run's model, so its images differ from the reference by the quantized
  components only). The `quant_method` names the library (`Library.quant_methods`); diffusers and transformers then
  read the quantization settings themselves, or the library's `Quantizer.load_checkpoint` does it its own way;
- a single file a library claims (`Quantizer.read_file`: a GGUF file, a BFL fp8r/nvfp4 safetensors);
- a Hugging Face hub id, looked up in the HF cache only (never downloaded).

Each checkpoint becomes one backend of the `prequantized` library below, registered in every process of the run from
the manifest (`register_run_checkpoints`, called with the run's plugins). The record's recipe options hold the path,
the content key and the settings read from the checkpoint; `quantization.library` names the library that reads it.
The checkpoint's path and content key are part of the run's identity, a checkpoint that changed since the run
recorded it is refused, and one made for another architecture than the run's model is refused with one line.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from evalkit.errors import EvalkitError
from evalkit.quantizers.base import DENOISER_ROLE, TEXT_ENCODER_ROLE, Backend, BuildContext, Library, Quantizer

if TYPE_CHECKING:
    from evalkit.families.base import Component, ModelFamily

LIBRARY = Library("prequantized", "diffusers", "diffusers", "prequantized checkpoint", 11, "#AA4499",
                  versioned=("diffusers",))

FULL_HASH_LIMIT = 64 * 2**20  # files up to this size are hashed whole; larger ones by header and samples
_SAMPLES, _SAMPLE_BYTES, _HEAD_BYTES = 16, 64 * 2**10, 2**20
# config.json keys that say how a component was saved, not what it is (compared for the architecture check)
_NOT_ARCHITECTURE = {"quantization_config", "transformers_version", "torch_dtype", "dtype", "use_cache",
                     "_name_or_path", "_diffusers_version", "_commit_hash"}


# ---------------------------------------------------------------------------------------------------------------
# Content keys, file facts.


def content_key(path: str | os.PathLike[str]) -> str:
    """A key of a file's or folder's contents: each file's relative name and size, and its bytes (whole up to
    FULL_HASH_LIMIT; beyond that its first MiB, which holds a safetensors or GGUF header, 16 evenly spaced 64 KiB
    samples and its end). Hidden files (evalkit's markers) are left out."""
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()
                                                 and not any(part.startswith(".") for part in p.relative_to(root).parts))
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"|{f.relative_to(root) if f != root else f.name}|{size}|".encode())
        with open(f, "rb") as fh:
            if size <= FULL_HASH_LIMIT:
                for block in iter(lambda: fh.read(2**20), b""):
                    h.update(block)
                continue
            h.update(fh.read(_HEAD_BYTES))
            for i in range(_SAMPLES + 1):
                fh.seek((size - _SAMPLE_BYTES) * i // _SAMPLES)
                h.update(fh.read(_SAMPLE_BYTES))
    return h.hexdigest()[:20]


def safetensors_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A safetensors file's header ({name: {dtype, shape, data_offsets}}, without __metadata__), read without torch."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise EvalkitError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        n = int.from_bytes(head, "little")
        if n <= 0 or n > 100 * 2**20:
            raise EvalkitError(f"{path}: not a safetensors file (header length {n})")
        try:
            header = json.loads(fh.read(n))
        except ValueError as e:
            raise EvalkitError(f"{path}: not a safetensors file ({e})") from None
    header.pop("__metadata__", None)
    return header


def component_params(model_path: str | os.PathLike[str], component: str) -> int:
    """Parameter count of a bf16 component's safetensors (headers only)."""
    total = 0
    for f in sorted((Path(model_path) / component).glob("*.safetensors")):
        for info in safetensors_header(f).values():
            n = 1
            for d in info["shape"]:
                n *= int(d)
            total += n
    return total


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EvalkitError(f"{path}: cannot be read as JSON ({e})") from None
    if not isinstance(data, dict):
        raise EvalkitError(f"{path}: expected a JSON object")
    return data


def pipeline_entry(model_path: str | os.PathLike[str], component: str) -> tuple[str, str]:
    """(library module, class name) of a pipeline component, from the pipeline folder's model_index.json."""
    index = _read_json(Path(model_path) / "model_index.json")
    entry = index.get(component)
    if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
        raise EvalkitError(f"{model_path}/model_index.json: no [library, class] entry for {component!r}")
    return entry[0], entry[1]


def load_folder_component(folder: str, model_path: str, component: str, device: str, dtype: Any = None,
                          **kwargs: Any) -> Any:
    """The run model's class for `component`, `from_pretrained` on a quantized folder, from local files only (the
    library named in its config.json's quantization_config quantizes it as it loads). `dtype`: the run's compute
    dtype for the component (`BuildContext.compute_dtype`; bf16 when None): the layers the checkpoint leaves
    unquantized are loaded in it, so they compute as the reference does (float32 for the tiny model on a CPU without
    native bf16, where a fixed bf16 met float32 activations: "mat1 and mat2 must have the same dtype")."""
    import torch

    lib, cls_name = pipeline_entry(model_path, component)
    cls = getattr(importlib.import_module(lib), cls_name)
    if device == "cuda":
        kwargs.setdefault("device_map", "cuda")  # quantized weights go straight onto the GPU, as users load them
    return cls.from_pretrained(folder, dtype=dtype or torch.bfloat16, local_files_only=True, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Reading what a checkpoint is (the stage, before the run is made).


def parse_argument(text: str) -> tuple[str, str]:
    """`NAME=PATH_OR_HUB_ID` -> (name, target)."""
    name, sep, target = text.partition("=")
    name, target = name.strip(), target.strip()
    if not sep or not name or not target:
        raise EvalkitError(f"--backend {text!r}: expected NAME=PATH_OR_HUB_ID, e.g. --backend mine=ckpt/transformer")
    return name, target


def resolve_target(target: str) -> Path:
    """A local path, or from the HF cache (never downloaded) a hub id's snapshot (`owner/name`) or one file of it
    (`owner/name/file.gguf`). Returns the local path."""
    p = Path(target).expanduser()
    if p.exists():  # a file keeps its own name (a hub cache's is a link to an unnamed blob: its suffix tells its kind)
        return p.resolve() if p.is_dir() else p.absolute()
    parts = target.split("/")
    if len(parts) >= 2 and all(parts) and not target.startswith((".", "/", "~")):
        repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
        try:
            from huggingface_hub import hf_hub_download, snapshot_download

            found = hf_hub_download(repo, filename, local_files_only=True) if filename else \
                snapshot_download(repo, local_files_only=True)
            return Path(found) if filename else Path(found).resolve()
        except Exception as e:  # noqa: BLE001 - LocalEntryNotFoundError and friends: say where to get it
            raise EvalkitError(f"--backend {target}: not a local path, and not in the Hugging Face cache "
                               f"({type(e).__name__}); evalkit never downloads: fetch it with "
                               f"`huggingface-cli download {repo}{' ' + filename if filename else ''}` or give a "
                               "local path") from None
    raise EvalkitError(f"--backend {target}: no such file or folder")


def _library_for_method(method: str, where: Path) -> Library:
    from evalkit.quantizers.registry import library_list

    for lib in library_list():
        if method in lib.quant_methods:
            return lib
    known = sorted(m for lib in library_list() for m in lib.quant_methods)
    raise EvalkitError(f"{where}: quantization_config names quant_method {method!r}, which no evalkit library reads "
                       f"(known: {', '.join(known)})")


def _folder_facts(folder: Path) -> dict[str, Any] | None:
    cfg = _read_json(folder / "config.json")
    q = cfg.get("quantization_config")
    if not isinstance(q, dict):
        return None
    method = str(q.get("quant_method", ""))
    lib = _library_for_method(method, folder / "config.json")
    cls = cfg.get("_class_name") or (cfg.get("architectures") or [None])[0]
    return {"path": str(folder), "class": cls, "config_library": "diffusers" if "_class_name" in cfg else "transformers",
            "library": lib.key, "quant_method": method, "quantization_config": q}


def read_checkpoint(name: str, target: str) -> dict[str, Any]:
    """What a `--backend NAME=TARGET` checkpoint is: {name, given, path, content_key, layout, library, components}.
    `components` maps a component name (or "" = the denoiser, or "?" = a component folder whose place the run's
    model decides) to its facts. Raises EvalkitError in one line for anything that is not a quantized checkpoint."""
    from evalkit.quantizers.registry import library_list, quantizer_for_library

    path = resolve_target(target)
    entry: dict[str, Any] = {"name": name, "given": target, "path": str(path)}
    if path.is_file():
        for lib in library_list():
            facts = quantizer_for_library(lib.key).read_file(str(path))
            if facts is not None:
                entry.update(layout="file", library=lib.key, components={facts.get("component") or "": {
                    "path": str(path), "library": lib.key, **facts}})
                break
        else:
            raise EvalkitError(f"--backend {name}={target}: no evalkit library reads this file (a GGUF file, a BFL "
                               "fp8r/nvfp4 safetensors, or a diffusers folder with a quantization_config)")
    elif (path / "model_index.json").is_file():
        comps = {}
        for sub in sorted(p for p in path.iterdir() if (p / "config.json").is_file()):
            facts = _folder_facts(sub)
            if facts is not None:
                comps[sub.name] = facts
        if not comps:
            raise EvalkitError(f"--backend {name}={target}: a pipeline folder none of whose components carries a "
                               "quantization_config in its config.json: not a quantized checkpoint")
        entry.update(layout="pipeline", library=sorted({c["library"] for c in comps.values()})[0], components=comps)
    elif (path / "config.json").is_file():
        facts = _folder_facts(path)
        if facts is None:
            raise EvalkitError(f"--backend {name}={target}: its config.json has no quantization_config: not a "
                               "quantized checkpoint")
        entry.update(layout="folder", library=facts["library"], components={"?": facts})
    else:
        raise EvalkitError(f"--backend {name}={target}: neither a file nor a folder with config.json or "
                           "model_index.json")
    entry["content_key"] = content_key(path)
    return entry


def _config_differences(ckpt: dict[str, Any], model: dict[str, Any]) -> list[str]:
    keys = sorted((set(ckpt) | set(model)) - _NOT_ARCHITECTURE)
    return [f"{k}: checkpoint {ckpt.get(k)!r}, model {model.get(k)!r}" for k in keys
            if (not k.startswith("_") or k == "_class_name") and ckpt.get(k) != model.get(k)]


def fit_to_model(entry: dict[str, Any], model_path: str, family: "ModelFamily") -> dict[str, Any]:
    """The checkpoint's components named as the run model's, each checked against it: a checkpoint for another
    architecture is refused with one line. Returns the entry with `components` keyed by component name and the
    `roles` its backend quantizes."""
    fam_components = {c.name: c for c in family.quantizable()}
    comps: dict[str, Any] = {}
    for key, facts in entry["components"].items():
        name = key
        if key == "":
            name = family.denoiser.name
        elif key == "?":  # a component folder: the model component of its class
            for c in fam_components:
                try:
                    if pipeline_entry(model_path, c)[1] == facts.get("class"):
                        name = c
                except EvalkitError:
                    continue
            if name == "?":
                raise EvalkitError(f"--backend {entry['name']}={entry['given']}: a {facts.get('class')} is not a "
                                   f"component of the run's model ({family.display}): a checkpoint of another "
                                   "architecture")
        if name not in fam_components or not fam_components[name].quantized:
            quantized = [c for c, comp in fam_components.items() if comp.quantized]
            raise EvalkitError(f"--backend {entry['name']}={entry['given']}: holds a quantized {name}, but evalkit "
                               f"quantizes only {', '.join(quantized)} of {family.display} by default")
        if "params" in facts:  # a single file: its weights' logical size is the model component's
            want, have = component_params(model_path, name), facts.get("params")
            if have is not None and abs(have - want) > 0.005 * want:
                raise EvalkitError(f"--backend {entry['name']}={entry['given']}: holds {have:,} weights, the run's "
                                   f"{name} has {want:,}: a checkpoint of another architecture")
        else:
            diffs = _config_differences(_read_json(Path(facts["path"]) / "config.json"),
                                        _read_json(Path(model_path) / name / "config.json"))
            if diffs:
                raise EvalkitError(f"--backend {entry['name']}={entry['given']}: its {name} is not the run model's "
                                   f"({'; '.join(diffs[:3])}{'; ...' if len(diffs) > 3 else ''}): a checkpoint of "
                                   "another architecture")
        comps[name] = facts
    return {**entry, "components": comps, "roles": sorted({fam_components[c].role for c in comps})}


# ---------------------------------------------------------------------------------------------------------------
# Registration: one backend per checkpoint, in the stage and in every process of the run (from the manifest).


def _backend(entry: Mapping[str, Any]) -> Backend:
    from evalkit.quantizers.registry import LIBRARIES

    real = LIBRARIES.get(entry["library"])
    roles = tuple(entry.get("roles") or (DENOISER_ROLE, TEXT_ENCODER_ROLE))
    options = {k: entry[k] for k in ("given", "path", "content_key", "layout", "library", "components") if k in entry}
    return Backend(entry["name"], LIBRARY, f"prequantized checkpoint {entry['given']} ({entry['library']}, "
                   f"{entry['layout']})", kind=entry["layout"], roles=roles, supported_roles=roles,
                   options=MappingProxyType(options), in_seed_study=False,
                   layer_marker=real.layer_marker if real else None)


def register_checkpoints(entries: Iterable[Mapping[str, Any]]) -> None:
    """Register (or re-register, same name) the backends of these checkpoints. A name of another backend is
    refused."""
    from evalkit.quantizers.registry import ALIASES, BACKENDS, register_library

    mine = {n: b for n, b in BACKENDS.items() if b.library.key == LIBRARY.key}
    for e in entries:
        if e["name"] in ALIASES or (e["name"] in BACKENDS and e["name"] not in mine):
            raise EvalkitError(f"--backend {e['name']}={e.get('given')}: {e['name']!r} is already a backend "
                               "(`evalkit backends`); name the checkpoint something else")
        mine[e["name"]] = _backend(e)
    register_library(LIBRARY, QUANTIZER, list(mine.values()), replace=True)


def forget_checkpoints() -> None:
    """Drop every checkpoint backend of this process (tests; a process otherwise holds one run's)."""
    from evalkit.quantizers.registry import register_library, unregister_library

    unregister_library(LIBRARY.key)
    register_library(LIBRARY, QUANTIZER, BACKENDS)


def read_arguments(args: Iterable[str]) -> list[dict[str, Any]]:
    """`--backend NAME=TARGET` values -> their entries (not yet registered)."""
    entries, seen = [], set()
    for text in args:
        name, target = parse_argument(text)
        if name in seen:
            raise EvalkitError(f"--backend {name}=...: given twice")
        seen.add(name)
        entries.append(read_checkpoint(name, target))
    return entries


def register_run_checkpoints(manifest: Any) -> None:
    """Register the checkpoint backends a run's manifest records (a worker, a rank or a later stage)."""
    entries = ((manifest or {}).get("config") or {}).get("checkpoints") if isinstance(manifest, dict) else None
    if entries:
        register_checkpoints(entries)


def identity(entries: Iterable[Mapping[str, Any]]) -> list[list[str]] | None:
    """The run identity's part: each checkpoint's name, path and content key (None without checkpoints)."""
    return sorted([e["name"], e["path"], e["content_key"]] for e in entries) or None


def save_quantized(model_path: str, backend_name: str, out: str | os.PathLike[str], component: str | None = None,
                   device: str = "cpu", family_key: str | None = None) -> Path:
    """Quantize one component of a pipeline folder with a registered backend's recipe and `save_pretrained` it to
    `out` (a diffusers folder with its quantization_config): a prequantized checkpoint for `--backend NAME=OUT`.
    Only backends that quantize through a config can (bitsandbytes on CUDA, torchao, SDNQ, quanto, ModelOpt)."""
    import torch

    from evalkit.families.registry import family_of_pipeline_dir, get_family
    from evalkit.quantizers.registry import parse_backend, quantizer_for

    family = get_family(family_key) if family_key else family_of_pipeline_dir(Path(model_path))
    comp = family.component(component) if component else family.denoiser
    backend = parse_backend(backend_name).backend
    ctx = BuildContext(device=device, capability=tuple(torch.cuda.get_device_capability()) if device == "cuda"
                       else None, model_path=str(model_path), options=backend.options, cache_dir=str(out),
                       family=family.key)
    cfg = quantizer_for(backend).config(backend, comp, ctx)
    if cfg is None:
        raise EvalkitError(f"{backend_name}: quantizes without a config (it loads or transforms the model its own "
                           "way), so it cannot be saved as a prequantized folder")
    lib, cls_name = pipeline_entry(model_path, comp.name)
    cls = getattr(importlib.import_module(lib), cls_name)
    model = cls.from_pretrained(str(model_path), subfolder=comp.name, dtype=torch.bfloat16, quantization_config=cfg,
                                local_files_only=True, **({"device_map": "cuda"} if device == "cuda" else {}))
    model.save_pretrained(str(out))
    return Path(out)


# ---------------------------------------------------------------------------------------------------------------
# Loading (the worker).


class CheckpointQuantizer(Quantizer):
    library = LIBRARY

    @staticmethod
    def _real(key: str | None) -> tuple[Library, Quantizer] | None:
        """The library a checkpoint's component names (a pipeline's components may name different ones)."""
        from evalkit.quantizers.registry import LIBRARIES, quantizer_for_library

        return (LIBRARIES[key], quantizer_for_library(key)) if key in LIBRARIES else None

    def load_component(self, backend: Backend, component: "Component", ctx: BuildContext, family: Any,
                       info: dict[str, Any]) -> Any:
        facts = (ctx.options.get("components") or {}).get(component.name)
        if facts is None:
            return None  # not in the checkpoint: the run model's own
        recorded, path = ctx.options.get("content_key"), ctx.options.get("path")
        if recorded and content_key(str(path)) != recorded:
            raise EvalkitError(f"checkpoint {path} changed since this run recorded it (content key {recorded}): "
                               "its images would come from other weights; start a new run")
        real = self._real(facts.get("library"))
        if real is None:
            raise EvalkitError(f"checkpoint {path}: library {facts.get('library')!r} is not registered")
        lib, quantizer = real
        from importlib import metadata

        try:
            version = metadata.version(lib.pip_name)
        except metadata.PackageNotFoundError:
            version = None
        info.update(library=lib.key, library_version=version)
        info.setdefault("checkpoint", {"path": path, "content_key": recorded, "layout": ctx.options.get("layout"),
                                       "components": {}})
        info["checkpoint"]["components"][component.name] = {k: v for k, v in facts.items() if k != "path"}
        info["resolved_config"][component.name] = {
            "class": f"read from the checkpoint ({lib.display})",
            "config": facts.get("quantization_config") or {k: v for k, v in facts.items() if k not in ("path",)}}
        model = quantizer.load_checkpoint(backend, component, ctx, family, info, facts)
        if model is None:
            model = load_folder_component(facts["path"], ctx.model_path, component.name, ctx.device,
                                          dtype=ctx.compute_dtype(component.name))
        return model

    def unavailable(self, backend: Backend, device: str, capability: tuple[int, int] | None,
                    family: Any = None) -> str | None:
        reasons: list[str] = []
        keys = sorted({str(c.get("library")) for c in (backend.options.get("components") or {}).values()})
        for key in keys or [str(backend.options.get("library"))]:
            real = self._real(key)
            if real is None:
                reasons.append(f"library {key!r} of this checkpoint is not registered")
                continue
            lib, quantizer = real
            if not lib.available():  # and what the device lacks, as for any backend
                reasons.append(lib.install_hint)
            why = quantizer.checkpoint_unavailable(backend.options, device, capability)
            reasons += [why] if why else []
        return "; ".join(dict.fromkeys(reasons)) or None


BACKENDS: tuple[Backend, ...] = ()  # one per `--backend NAME=PATH`, registered by the run
QUANTIZER = CheckpointQuantizer()

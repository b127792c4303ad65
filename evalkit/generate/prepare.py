"""The generate stage's preparation on rank 0: validate the command, resolve the model, name the run directory and
write its manifest (evalkit/generate/ranks.py calls prepare_run, then plans the work).

The run directory's name is derived from the run's identity (the settings that decide what the images are), so
rerunning the same command finds the same directory; a directory holding another identity is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Callable

from evalkit.version import __version__
from evalkit.errors import EvalkitError
from evalkit.quantizers.registry import BackendSpec, parse_backend_list
from evalkit.generate.worker.measure import MEMORY_CONVENTION
from evalkit.families.base import ModelFamily
from evalkit.families.registry import ModelInfo, family_of_spec, get_family, resolve_model
from evalkit.generate.options import GenerateOptions, run_id_prefix
from evalkit.io import atomic_write_json, sha256_file
from evalkit.paths import cache_dir
from evalkit.prompts import Prompt, load_prompts
from evalkit.records import build_manifest, prompt_entry, read_manifest
from evalkit.generate.plan import check_max_images, plan_work
from evalkit.runlock import acquire, check_ownership
from evalkit.rundir import REFERENCE_BACKEND, RunDir, ensure_writable_dir
from evalkit.timeutil import utc_now


# Distributions every run depends on; each backend library adds its own (Library.versioned).
CORE_VERSIONED_PACKAGES = ("transformers", "accelerate", "safetensors", "tokenizers", "torchmetrics", "numpy", "pillow",
                           "scikit-image", "huggingface-hub")


def versioned_packages() -> tuple[str, ...]:
    from evalkit.quantizers.registry import library_list

    return tuple(dict.fromkeys([v for lib in library_list() for v in lib.versioned] + list(CORE_VERSIONED_PACKAGES)))


# Settings that decide what the images are. A run directory holds one value of each; backends can be added.
IDENTITY_KEYS = ("model_spec", "prompts_sha256", "height", "width", "num_inference_steps", "guidance_scale",
                 "max_sequence_length", "base_seed", "batch_size", "device", "components", "backend_options", "gguf_file",
                 "plugins", "prompt_column", "threads", "tf32", "sdpa_backend", "checkpoints")


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in versioned_packages():
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["evalkit"] = __version__
    out["python"] = platform.python_version()
    return out


def detect_device(requested: str) -> tuple[str, dict[str, Any]]:
    """The run's device (evalkit.device.choose_device) and what the manifest records about it."""
    import torch

    from evalkit.device import choose_device

    device = choose_device(requested)
    info: dict[str, Any] = {"type": device, "platform": platform.platform(), "cpu_count": os.cpu_count(),
                            "python": platform.python_version(), "torch": torch.__version__}
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(name=p.name, capability=list(torch.cuda.get_device_capability(0)),
                    total_memory_gib=p.total_memory / 2**30, device_count=torch.cuda.device_count(),
                    cuda=torch.version.cuda, driver=_nvidia_driver())
    else:
        info.update(name=platform.processor() or platform.machine(), capability=None)
    return device, info


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def token_counts(model_path: str, prompts: list[Prompt], max_sequence_length: int | None,
                 family: ModelFamily) -> list[dict[str, Any]]:
    """How many tokens each prompt has for each of the family's text encoders, and whether the pipeline truncates
    it: `{<encoder>: n, <encoder>_limit: kept, <encoder>_truncated: bool}` per encoder."""
    counters = [(t, _token_counter(os.path.join(model_path, t.subfolder))) for t in family.tokenizers]
    out = []
    for p in prompts:
        entry: dict[str, Any] = {}
        for tok, count in counters:
            n = count(p.text)
            limit = tok.limit if tok.limit is not None else max_sequence_length
            entry.update({tok.encoder: n, f"{tok.encoder}_limit": limit,
                          f"{tok.encoder}_truncated": limit is not None and n > limit})
        out.append(entry)
    return out


def tokenization_note(family: ModelFamily, model: ModelInfo) -> str:
    limits = ", ".join(f"{t.encoder} to {t.limit if t.limit is not None else 'max_sequence_length'}"
                       for t in family.tokenizers)
    note = (f"Prompts longer than an encoder's limit are truncated by the pipeline's tokenizers: {limits} tokens. "
            "'tokens' counts them before truncation.")
    if model.kind in ("tiny", "random") and model.tokenizer_note:
        note += f" This {model.kind} build's tokenizers: {model.tokenizer_note}."
    return note


def _token_counter(folder: str) -> Callable[[str], int]:
    fast = os.path.join(folder, "tokenizer.json")
    if os.path.isfile(fast):
        # A fast tokenizer's own file: the `tokenizers` library counts the same ids (special tokens included, as
        # transformers does) without importing transformers, ~1.3 CPU-s of every run's start on 2 cores.
        from tokenizers import Tokenizer

        t = Tokenizer.from_file(fast)
        return lambda text: len(t.encode(text).ids)
    from transformers import AutoTokenizer

    slow = AutoTokenizer.from_pretrained(folder)
    return lambda text: len(slow(text, truncation=False).input_ids)


def load_config(path: str | None) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """`--config FILE.toml`: (per-backend quantizer options, compile settings). `[backends.<name>]` holds a
    backend's options and may hold a `compile` sub-table; `[compile]` holds every `+compile`'s defaults
    (evalkit/generate/worker/compile_options.py)."""
    from evalkit.generate.worker.compile_options import validate_compile_config

    if not path:
        return {}, validate_compile_config(None, {}, "")
    from evalkit.errors import suggest
    from evalkit.quantizers.registry import BACKENDS
    from evalkit.io import read_toml

    p = Path(path)
    data = read_toml(p)
    # [calibrate] belongs to `evalkit calibrate` (one options file serves `evalkit run --calibrate`)
    unknown_top = set(data) - {"backends", "compile", "calibrate"}
    if unknown_top:
        raise EvalkitError(f"{p}: unknown section(s) {sorted(unknown_top)}; expected [backends.<name>], [compile] "
                           "or [calibrate]")
    opts: dict[str, dict[str, Any]] = {}
    per_backend_compile: dict[str, Any] = {}
    for name, table in data.get("backends", {}).items():
        if name not in BACKENDS:
            raise EvalkitError(f"{p}: [backends.{name}]: unknown backend.{suggest(name, list(BACKENDS))}")
        table = dict(table)
        # Compile settings are not quantizer options: they stay out of the recipe options (and the run identity).
        if "compile" in table:
            per_backend_compile[name] = table.pop("compile")
        opts[name] = table
    return opts, validate_compile_config(data.get("compile"), per_backend_compile, str(p))


def check_family_options(family: ModelFamily, opts: GenerateOptions, compile_config: dict[str, Any]) -> None:
    """`--components` and the `[compile]` component name the family's components."""
    from evalkit.generate.worker.compile_options import compile_components

    names = [c.name for c in family.quantizable()]
    for c in opts.components or []:
        if c not in names:
            raise EvalkitError(f"--components: {family.display} has no quantizable component {c!r}; choose from "
                               f"{', '.join(names)}")
    for c in sorted(compile_components(compile_config)):
        if c not in [x.name for x in family.components]:
            raise EvalkitError(f"{opts.config_file}: [compile] component = {c!r}: {family.display} has no such "
                               f"component ({', '.join(x.name for x in family.components)})")


def run_identity(opts: GenerateOptions, model: ModelInfo, prompts_sha: str, gen: dict[str, Any], device: str,
                 backend_options: dict[str, Any], plugins: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "model_spec": model.spec, "prompts_sha256": prompts_sha, "height": gen["height"], "width": gen["width"],
        "num_inference_steps": gen["num_inference_steps"], "guidance_scale": gen["guidance_scale"],
        "max_sequence_length": gen["max_sequence_length"], "base_seed": gen["base_seed"], "batch_size": gen["batch_size"],
        "device": device, "components": sorted(opts.components) if opts.components else None,
        "backend_options": backend_options, "gguf_file": os.path.abspath(opts.gguf_file) if opts.gguf_file else None,
        # a plugin's code decides what its backends make: its content is part of the study (None: no plugins, as in
        # runs made before plugins existed)
        "plugins": sorted(p["sha256"] for p in plugins) or None,
        # which column of a prompt set is read selects the study's prompts (prompts_sha256 is the whole file's hash);
        # present only when chosen, so runs made with the default column keep their identity and directory name
        **({"prompt_column": opts.prompt_column} if opts.prompt_column else {}),
        # --threads/--tf32/--sdpa-backend change the arithmetic; present only when set, so a run made without them
        # (or before they existed) keeps its identity and its directory name
        **opts.numerics(),
    }


# Environment variables evalkit once read for what are now options: still set, they would silently do nothing.
RETIRED_ENVIRONMENT = {"EVALKIT_THREADS": "--threads", "EVALKIT_TF32": "--tf32", "EVALKIT_SDPA_BACKEND": "--sdpa-backend"}


def check_options(opts: GenerateOptions) -> None:
    """The checks of the command line that need no file but the prompts file and the config."""
    for var, flag in RETIRED_ENVIRONMENT.items():
        if var in os.environ:
            raise EvalkitError(f"{var} is set, but evalkit no longer reads it: unset it and pass {flag} instead "
                               "(docs/environment.md)")
    if opts.gguf_file and not Path(opts.gguf_file).is_file():
        raise EvalkitError(f"--gguf-file {opts.gguf_file}: file not found")
    for name, value in (("--batch-size", opts.batch_size), ("--jobs", opts.jobs), ("--threads", opts.threads)):
        if value is not None and value < 1:
            raise EvalkitError(f"{name} must be at least 1 (got {value})")
    if opts.max_images is not None and opts.max_images < 0:
        raise EvalkitError(f"--max-images must be 0 or more (got {opts.max_images})")
    if opts.warmup < 0:
        raise EvalkitError(f"--warmup must be 0 or more (got {opts.warmup})")
    if opts.warmup_steps is not None and opts.steps is not None and opts.warmup_steps > opts.steps:
        raise EvalkitError(f"--warmup-steps {opts.warmup_steps} is more than --steps {opts.steps}")


def generation_settings(opts: GenerateOptions, model: ModelInfo, family: ModelFamily) -> dict[str, Any]:
    """The manifest's `generation`: the options over the model's defaults, sizes checked against the family."""
    d = model.defaults
    gen = {
        "height": opts.height or d.height, "width": opts.width or d.width,
        "num_inference_steps": opts.steps or d.num_inference_steps,
        "guidance_scale": d.guidance_scale if opts.guidance is None else opts.guidance,
        "max_sequence_length": opts.max_sequence_length or d.max_sequence_length,
        "batch_size": opts.batch_size, "base_seed": opts.seed, "generator_device": "cpu",
        "warmup_runs": opts.warmup, "dtype": "bfloat16",
    }
    if d.negative_prompt is not None:
        gen["negative_prompt"] = d.negative_prompt
    if opts.warmup_steps is not None:  # absent unless set: warm-up never changes an image, nor the run's identity
        gen["warmup_steps"] = min(opts.warmup_steps, gen["num_inference_steps"])
    multiple = family.tiny_size_multiple if model.kind == "tiny" else family.size_multiple
    for k in ("height", "width"):
        if gen[k] % multiple:
            raise EvalkitError(f"--{k} {gen[k]}: {family.display} needs a multiple of {multiple} for this model")
    return gen


def _check_output_location(opts: GenerateOptions) -> None:
    out_root = Path(opts.out) if opts.out else Path(opts.reports_dir)
    if opts.out:
        check_ownership(out_root)
    ensure_writable_dir(out_root if not opts.out else out_root.parent if not out_root.exists() else out_root)


def run_root(opts: GenerateOptions, model: ModelInfo, identity: dict[str, Any]) -> tuple[Path, str]:
    """(run directory, run id): --out, else <reports-dir>/<model>-<prompts>-<identity hash>. An auto-named run of a
    prompt set made before the set's format joined the name (`tiny-three-<hash>` for three.csv) is reopened there:
    the hash is the same identity."""
    ident_hash = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    run_id = f"{run_id_prefix(model.spec, opts.prompts_file)}{ident_hash}"
    if opts.out:
        return Path(opts.out), run_id
    legacy = Path(opts.reports_dir) / f"{run_id_prefix(model.spec, opts.prompts_file, legacy=True)}{ident_hash}"
    if legacy.name != run_id and (legacy / "manifest.json").is_file():
        return legacy, legacy.name
    return Path(opts.reports_dir) / run_id, run_id


def prepare_run(opts: GenerateOptions, lock: contextlib.ExitStack | None = None,
                on_validated: Callable[[], None] | None = None) -> tuple[RunDir, dict[str, Any], list[BackendSpec]]:
    """Validate everything, resolve the model, and create (or reopen) the run directory with its manifest. With
    `lock`, the run directory's lock is taken (and held until `lock` closes) before the manifest is read.
    `on_validated` is called once the cheap checks of the command line have passed (the stage starts its
    forkserver then: a typo costs no process start)."""
    prompts = load_prompts(opts.prompts_file, base_seed=opts.seed, column=opts.prompt_column)
    prompts_sha = sha256_file(opts.prompts_file)
    from evalkit.plugins import load_plugin_files

    plugins = load_plugin_files(opts.plugins)  # before any backend, family or option names are read
    from evalkit.quantizers import checkpoint

    checkpoints = checkpoint.read_arguments(opts.checkpoints)
    checkpoint.register_checkpoints(checkpoints)  # their backend names, before --backends and --config read them
    backend_options, compile_config = load_config(opts.config_file)
    early_family = family_of_spec(opts.model)  # known without building or reading anything, except for a path
    if early_family is not None:
        check_family_options(early_family, opts, compile_config)
    check_options(opts)
    device, device_info = detect_device(opts.device)
    specs = parse_backend_list(opts.backends, opts.include_reference)
    if on_validated is not None:
        on_validated()

    _check_output_location(opts)  # before the (possibly long) model build
    model = resolve_model(opts.model, device=device)
    family = get_family(model.family)
    check_family_options(family, opts, compile_config)
    gen = generation_settings(opts, model, family)
    checkpoints = [checkpoint.fit_to_model(e, model.path, family) for e in checkpoints]  # another architecture: refused
    checkpoint.register_checkpoints(checkpoints)
    specs += [all_specs([e["name"]])[0] for e in checkpoints
              if e["name"] not in {x.name for x in specs}]  # a checkpoint given is a backend asked for
    identity = run_identity(opts, model, prompts_sha, gen, device, backend_options, plugins)
    if checkpoints:  # path and content key: other weights, another study (absent without: run ids stay as they were)
        identity["checkpoints"] = checkpoint.identity(checkpoints)
    root, run_id = run_root(opts, model, identity)
    rd = _open_run_dir(root, opts, lock)
    old = read_manifest(rd.manifest) if rd.manifest.exists() else None
    backends, run_id, created = _reopen(old, root, identity, specs, run_id)

    config = _run_config(opts, identity, device, backend_options, compile_config, plugins, checkpoints)
    manifest = _run_manifest(opts, model, family, prompts, prompts_sha, gen, run_id=run_id, created=created,
                             backends=backends, device_info=device_info, config=config, old=old)
    specs_now = all_specs(backends)
    if opts.max_images is not None:  # refused before the manifest grows by backends that will not run
        check_max_images(plan_work(rd, manifest, specs_now, tuple(opts.components) if opts.components else None,
                                   opts.attempt_known_failures), opts.max_images)
    atomic_write_json(rd.manifest, manifest)
    return rd, manifest, specs_now


def _open_run_dir(root: Path, opts: GenerateOptions, lock: contextlib.ExitStack | None) -> RunDir:
    """The run directory, checked to be evalkit's own, writable and free of links out of it before anything is
    written into it; with `lock`, its lock taken (and held until `lock` closes)."""
    check_ownership(root)
    ensure_writable_dir(root)
    rd = RunDir(root)
    rd.refuse_links_out()  # before anything is written into it
    if lock is not None:
        # Held from before the manifest is read until the stage ends: two commands on one directory cannot both
        # read the backend list and each write back its own.
        lock.enter_context(acquire(root, stage="generate", break_lock=opts.break_lock, timeout_s=opts.lock_timeout))
    return rd


def _run_manifest(opts: GenerateOptions, model: ModelInfo, family: ModelFamily, prompts: list[Prompt],
                  prompts_sha: str, gen: dict[str, Any], *, run_id: str, created: str, backends: list[str],
                  device_info: dict[str, Any], config: dict[str, Any],
                  old: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest this stage writes: the run's settings and its prompts with their token counts, keeping the
    fields of the manifest it replaces (`old`) that later stages own."""
    tokens = token_counts(model.path, prompts, gen["max_sequence_length"], family)
    manifest = dict(build_manifest(
        run_id=run_id, created_utc=created, updated_utc=utc_now(),
        evalkit_version=__version__, command=opts.command or None,
        prompts_file=str(opts.prompts_file), prompts_sha256=prompts_sha,
        # ids, seeds and categories come from evalkit.prompts, never re-derived here
        prompts=[prompt_entry(p, t) for p, t in zip(prompts, tokens)],
        tokenization_note=tokenization_note(family, model),
        model=model.to_manifest(), generation=gen, backends=backends,
        reference_backend=REFERENCE_BACKEND, device=device_info, versions=package_versions(),
        memory_convention=MEMORY_CONVENTION, config=config,
    ))
    for k in ("fid_mode", "compute"):  # written by later stages (compute: by generate's plan, ranks.py); keep
        if old is not None and k in old:
            manifest[k] = old[k]
    return manifest


def _run_config(opts: GenerateOptions, identity: dict[str, Any], device: str, backend_options: dict[str, Any],
                compile_config: dict[str, Any], plugins: list[dict[str, str]],
                checkpoints: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest's `config`: what the workers read (device, components, backend options, compile, numerics) and
    the options the command was given (read back strictly by calibration and the unchanged-rerun check)."""
    return {"identity": identity, "device": device, "components": opts.components, "backend_options": backend_options,
            "compile": compile_config, "gguf_file": identity["gguf_file"], "plugins": plugins,
            "checkpoints": checkpoints, "cache_dir": str(cache_dir()), "jobs": opts.jobs, "gpus": opts.gpus,
            "attempt_known_failures": opts.attempt_known_failures,
            # what the workers apply (evalkit/generate/worker/run.py apply_numerics); only the knobs set
            **({"numerics": opts.numerics()} if opts.numerics() else {}),
            "options": opts.to_manifest()}


def _reopen(old: dict[str, Any] | None, root: Path, identity: dict[str, Any], specs: list[BackendSpec],
            run_id: str) -> tuple[list[str], str, str]:
    """(backends, run id, created) of the run directory: a new one's, or an existing one's with the identity checked
    and the backends asked for added to those it holds."""
    if old is None:
        return [s.name for s in specs], run_id, utc_now()
    old_ident = (old.get("config") or {}).get("identity") or {}
    diffs = [k for k in IDENTITY_KEYS if old_ident.get(k) != identity.get(k)]
    if diffs:
        k = diffs[0]
        raise EvalkitError(f"{root} holds a run with {k}={old_ident.get(k)!r}, but this command asks for "
                           f"{k}={identity.get(k)!r}; choose another --out (or leave --out unset for a new run dir)")
    backends = list(old.get("backends", []))
    backends += [s.name for s in specs if s.name not in backends]
    return backends, old.get("run_id", run_id), old.get("created_utc")


def all_specs(names: list[str]) -> list[BackendSpec]:
    from evalkit.quantizers.registry import parse_backend

    return [parse_backend(n) for n in names]

"""The generate stage: write the manifest, then run one worker process per backend and collect their records.

Resumable: the run directory name is derived from the run's settings, so rerunning the same command finds the
same directory; finished backends are skipped and unfinished ones continue from their last written image.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from evalkit.version import __version__
from evalkit.errors import EvalkitError
from evalkit.quantizers.registry import BackendSpec, parse_backend_list
from evalkit.generate.worker.measure import MEMORY_CONVENTION
from evalkit.families.base import ModelFamily
from evalkit.families.registry import ModelInfo, family_of_spec, get_family, resolve_model
from evalkit.io import atomic_write_json, read_json, sha256_file
from evalkit.paths import cache_dir
from evalkit.prompts import Prompt, load_prompts
from evalkit.records import build_manifest, prompt_entry
from evalkit.generate.plan import check_max_images, plan_work
from evalkit.generate.spawn import start_forkserver, stop_forkserver, worker_mode
from evalkit.runlock import acquire, check_ownership
from evalkit.rundir import REFERENCE_BACKEND, RunDir, ensure_writable_dir

# Distributions every run depends on; each backend library adds its own (Library.versioned).
CORE_VERSIONED_PACKAGES = ("transformers", "accelerate", "safetensors", "tokenizers", "torchmetrics", "numpy", "pillow",
                           "scikit-image", "huggingface-hub")


def versioned_packages() -> tuple[str, ...]:
    from evalkit.quantizers.registry import library_list

    return tuple(dict.fromkeys([v for lib in library_list() for v in lib.versioned] + list(CORE_VERSIONED_PACKAGES)))

# Settings that decide what the images are. A run directory holds one value of each; backends can be added.
IDENTITY_KEYS = ("model_spec", "prompts_sha256", "height", "width", "num_inference_steps", "guidance_scale",
                 "max_sequence_length", "base_seed", "batch_size", "device", "components", "backend_options", "gguf_file",
                 "plugins", "prompt_column", "checkpoints")


@dataclass
class GenerateOptions:
    prompts_file: str
    model: str = "black-forest-labs/FLUX.1-dev"
    backends: str | None = None
    out: str | None = None
    reports_dir: str = "reports"
    device: str = "auto"
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance: float | None = None
    max_sequence_length: int | None = None
    batch_size: int = 1
    seed: int = 0
    prompt_column: str | None = None  # column/field of a .csv/.tsv/.jsonl/.json prompt set
    warmup: int = 1
    components: list[str] | None = None
    config_file: str | None = None
    gguf_file: str | None = None
    plugins: list[str] = field(default_factory=list)  # plugin files registering backends, families, metrics
    checkpoints: list[str] = field(default_factory=list)  # `--backend NAME=PATH_OR_HUB_ID`: prequantized checkpoints
    jobs: int = 1
    gpus: list[str] = field(default_factory=list)
    attempt_known_failures: bool = False
    retry_failed: bool = True
    break_lock: bool = False  # remove another process's lock on the run directory (the user knows it is gone)
    lock_timeout: float = 0.0  # seconds to wait for another process's lock
    max_images: int | None = None  # refuse a command that would generate more images than this
    # False only for calibration's sub-runs of another backend (bf16+compile): regenerating plain bf16 there cost
    # ~50 s of an H200 call for images nobody reads (2026-11-29).
    include_reference: bool = True
    schedule: str = "auto"  # how work units are chosen: auto | prompts | backends (evalkit/generate/schedule.py)
    command: list[str] = field(default_factory=list)


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
    import torch

    if requested not in ("auto", "cpu", "cuda"):
        raise EvalkitError(f"--device {requested!r}: expected auto, cpu or cuda")
    if requested == "cuda" and not torch.cuda.is_available():
        raise EvalkitError("--device cuda: no CUDA device is available to torch "
                           f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})")
    device = "cuda" if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()) else "cpu"
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


def load_backend_options(path: str | None) -> dict[str, dict[str, Any]]:
    """`--config FILE.toml`: per-backend options, e.g. `[backends.bnb-8bit] llm_int8_threshold = 5.0`."""
    return load_config(path)[0]


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


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:32] or "run"


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
        # which column of a prompt set is read selects the study's prompts (and prompts_sha256 is the file's hash)
        "prompt_column": opts.prompt_column,
    }


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
    if opts.gguf_file and not Path(opts.gguf_file).is_file():
        raise EvalkitError(f"--gguf-file {opts.gguf_file}: file not found")
    for name, value in (("--batch-size", opts.batch_size), ("--jobs", opts.jobs)):
        if value < 1:
            raise EvalkitError(f"{name} must be at least 1 (got {value})")
    if opts.max_images is not None and opts.max_images < 0:
        raise EvalkitError(f"--max-images must be 0 or more (got {opts.max_images})")
    if opts.warmup < 0:
        raise EvalkitError(f"--warmup must be 0 or more (got {opts.warmup})")
    device, device_info = detect_device(opts.device)
    specs = parse_backend_list(opts.backends, opts.include_reference)
    if on_validated is not None:
        on_validated()

    # Check the output location before the (possibly long) model build.
    out_root = Path(opts.out) if opts.out else Path(opts.reports_dir)
    if opts.out:
        check_ownership(out_root)
    ensure_writable_dir(out_root if not opts.out else out_root.parent if not out_root.exists() else out_root)
    model = resolve_model(opts.model, device=device)
    family = get_family(model.family)
    check_family_options(family, opts, compile_config)
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
    multiple = family.tiny_size_multiple if model.kind == "tiny" else family.size_multiple
    for k in ("height", "width"):
        if gen[k] % multiple:
            raise EvalkitError(f"--{k} {gen[k]}: {family.display} needs a multiple of {multiple} for this model")
    checkpoints = [checkpoint.fit_to_model(e, model.path, family) for e in checkpoints]  # another architecture: refused
    checkpoint.register_checkpoints(checkpoints)
    specs += [_all_specs([e["name"]])[0] for e in checkpoints
              if e["name"] not in {x.name for x in specs}]  # a checkpoint given is a backend asked for
    identity = run_identity(opts, model, prompts_sha, gen, device, backend_options, plugins)
    if checkpoints:  # path and content key: other weights, another study (absent without: run ids stay as they were)
        identity["checkpoints"] = checkpoint.identity(checkpoints)
    ident_hash = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    run_id = f"{_slug(model.spec)}-{_slug(Path(opts.prompts_file).stem)}-{ident_hash}"
    root = Path(opts.out) if opts.out else Path(opts.reports_dir) / run_id
    check_ownership(root)
    ensure_writable_dir(root)
    rd = RunDir(root)
    rd.refuse_links_out()  # before anything is written into it
    if lock is not None:
        # Held from before the manifest is read until the stage ends: two commands on one directory cannot both
        # read the backend list and each write back its own.
        lock.enter_context(acquire(root, stage="generate", break_lock=opts.break_lock, timeout_s=opts.lock_timeout))

    if rd.manifest.exists():
        old = read_json(rd.manifest)
        old_ident = (old.get("config") or {}).get("identity") or {}
        diffs = [k for k in IDENTITY_KEYS if old_ident.get(k) != identity.get(k)]
        if diffs:
            k = diffs[0]
            raise EvalkitError(f"{root} holds a run with {k}={old_ident.get(k)!r}, but this command asks for "
                               f"{k}={identity.get(k)!r}; choose another --out (or leave --out unset for a new run dir)")
        backends = list(old.get("backends", []))
        for s in specs:
            if s.name not in backends:
                backends.append(s.name)
        run_id = old.get("run_id", run_id)
        created = old.get("created_utc")
    else:
        backends = [s.name for s in specs]
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    tokens = token_counts(model.path, prompts, gen["max_sequence_length"], family)
    manifest = build_manifest(
        run_id=run_id, created_utc=created, updated_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        evalkit_version=__version__, command=opts.command or None,
        prompts_file=str(opts.prompts_file), prompts_sha256=prompts_sha,
        # ids, seeds and categories come from evalkit.prompts, never re-derived here
        prompts=[prompt_entry(p, t) for p, t in zip(prompts, tokens)],
        tokenization_note=tokenization_note(family, model),
        model=model.to_manifest(), generation=gen, backends=backends,
        reference_backend=REFERENCE_BACKEND, device=device_info, versions=package_versions(),
        memory_convention=MEMORY_CONVENTION,
        config={"identity": identity, "device": device, "components": opts.components, "backend_options": backend_options,
                "compile": compile_config,
                "gguf_file": identity["gguf_file"], "plugins": plugins, "checkpoints": checkpoints,
                "cache_dir": str(cache_dir()), "jobs": opts.jobs,
                "gpus": opts.gpus, "attempt_known_failures": opts.attempt_known_failures,
                "options": {k: v for k, v in asdict(opts).items() if k != "command"}},
    )
    manifest = dict(manifest)  # later stages' keys are merged in below
    if rd.manifest.exists():
        old = read_json(rd.manifest)
        for k in ("fid_mode",):  # written by later stages; keep
            if k in old:
                manifest[k] = old[k]
    all_specs = _all_specs(backends)
    if opts.max_images is not None:  # refused before the manifest grows by backends that will not run
        check_max_images(plan_work(rd, manifest, all_specs, tuple(opts.components) if opts.components else None,
                                   opts.attempt_known_failures), opts.max_images)
    atomic_write_json(rd.manifest, manifest)
    return rd, manifest, all_specs


def _all_specs(names: list[str]) -> list[BackendSpec]:
    from evalkit.quantizers.registry import parse_backend

    return [parse_backend(n) for n in names]


# Set by torchrun / accelerate / srun for a rank (evalkit.dist reads them); never passed on to a backend worker.
LAUNCHER_VARIABLES = frozenset({"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                                "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT",
                                "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_STEP_ID", "SLURM_STEPID",
                                "ACCELERATE_DYNAMO_BACKEND", "ACCELERATE_MIXED_PRECISION"})


def _worker_env(opts: GenerateOptions, gpu: str | None, device: str, local_ranks: int = 1) -> dict[str, str]:
    # A worker is one process on one device, not a rank: the launcher's variables would make libraries act on them
    # (transformers' loading picked cuda:LOCAL_RANK in a worker that sees one GPU: "invalid device ordinal" on rank 1).
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES and not k.startswith("TORCHELASTIC_")}
    env.setdefault("HF_HUB_OFFLINE", "1")  # workers never reach for the hub
    env["PYTHONUNBUFFERED"] = "1"
    env["EVALKIT_PARENT_PID"] = str(os.getpid())  # a subprocess worker checks it still has this parent
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if device == "cpu" and max(opts.jobs, local_ranks) > 1:
        # Parallel CPU workers (one per rank on this machine) share the cores instead of oversubscribing them.
        env.setdefault("EVALKIT_THREADS", str(max(1, (os.cpu_count() or 1) // max(opts.jobs, local_ranks))))
    return env


def run_generate(opts: GenerateOptions, console: Any = None) -> Path:
    """Run the generate stage on this rank; returns the run directory. A world of one is rank 0 of 1: it plans,
    runs its units and merges, as rank 0 of N does (evalkit/generate/ranks.py). Rank 0 holds the run directory's
    lock throughout, and the forkserver is stopped at the end however the stage ends (a failed validation leaves
    no process behind)."""
    from rich.console import Console

    from evalkit.generate import ranks

    # Logs and CI capture stderr: give tables room instead of rich's 80-column default off a terminal.
    console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 140)
    starters: list[threading.Thread] = []

    def start_early() -> None:
        if worker_mode() == "forkserver" and not starters:
            # Importing torch/diffusers into the forkserver takes seconds; do it while the manifest is being prepared.
            fam = family_of_spec(opts.model)  # None for a directory: its family's modules load per worker
            starters.append(threading.Thread(target=start_forkserver, args=(fam.key if fam else None,), daemon=True))
            starters[0].start()

    finished = False
    root: Path | None = None
    try:
        with contextlib.ExitStack() as lock, ranks.sigterm_as_interrupt():
            rd, manifest = ranks.plan_and_share(opts, lock, console, start_early)
            root = rd.root
            from evalkit.logs import attach_run_log

            attach_run_log(root, "generate")
            ranks.run_and_merge(opts, rd, manifest, console)
            finished = True
            return rd.root
    finally:
        for t in starters:
            t.join()
        # After an error the forkserver may still be importing libraries it will never use: kill it, don't wait.
        stop_forkserver(kill=not finished)
        _keep_forkserver_log(root)


def _keep_forkserver_log(root: Path | None) -> None:
    """What the forkserver's imports printed goes into logs/generate.log (deleted when no run directory exists)."""
    from evalkit.generate.spawn import forkserver_log
    from evalkit.logs import PENDING_LOG_ENV, move_pending_log

    pending = forkserver_log()
    if pending is None:
        return
    os.environ.pop(PENDING_LOG_ENV, None)
    if root is None:
        pending.unlink(missing_ok=True)
        return
    try:
        move_pending_log(pending, root / "logs" / "generate.log", "third-party output of the worker forkserver's imports")
    except OSError:
        pass  # a log that cannot be written must not fail a finished stage


def print_unchanged(root: Path, console: Any = None) -> None:
    """What an unchanged rerun shows: one line, then the generation table read back from summary.json."""
    from rich.console import Console

    console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 140)
    console.print(f"[bold]evalkit generate[/]: nothing to do in {root}: every backend's images are in place and "
                  "unchanged since they were recorded")
    _print_summary(console, read_json(root / "summary.json"))


def _write_error(e: OSError) -> EvalkitError:
    """A full disk or an unwritable path, as one line naming the path; what was written stays, and a rerun resumes."""
    where = e.filename or "the run directory"
    return EvalkitError(f"{where}: cannot write ({e.strerror or e}); free space or fix permissions, then rerun the "
                        "same command to resume")


def _print_summary(console: Any, summary: dict[str, Any]) -> None:
    from rich.table import Table

    dev = (summary.get("device") or {}).get("type")
    table = Table(title="generation", show_lines=False)
    for col in ("backend", "status", "load s", "latency median s",
                "peak reserved GiB" if dev == "cuda" else "peak RSS GiB (host)", "quantized", "note"):
        table.add_column(col)
    for name, b in summary["backends"].items():
        mem = b.get("memory") or {}
        lat = b.get("latency") or {}
        peak = mem.get("peak_reserved_gib") if dev == "cuda" else mem.get("cpu_peak_rss_gib")
        flags = ", ".join(f"{k}×{v}" for k, v in (b.get("image_flags") or {}).items())
        table.add_row(name, b["status"], _fmt(b.get("load_time_s")), _fmt(lat.get("median_s"), 3), _fmt(peak),
                      ",".join(b.get("components_quantized") or []) or "-",
                      (b.get("reason") or b.get("partial_reason") or flags or "")[:80])
    console.print(table)


def _fmt(v: Any, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"

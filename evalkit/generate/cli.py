"""CLI for the generate stage and `evalkit backends`. Imports nothing heavy at module level."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from evalkit.generate.stage import GenerateOptions


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompts", help="prompts file: one prompt a line, '#' comments and blank lines ignored, UTF-8")
    p.add_argument("--model", default="black-forest-labs/FLUX.1-dev",
                   help="Hugging Face id (from the local cache only; default %(default)s), a local diffusers "
                        "directory, 'tiny' (embedded tiny Flux, CPU-friendly) or 'random:flux-dev' (full-size "
                        "architecture, random weights: memory/latency only)")
    p.add_argument("--backends", default="default",
                   help="comma-separated backend names with optional +compile/+offload/+group-offload modifiers; "
                        "'default' = every registered backend but the opt-in ones (ModelOpt, SDNQ, AutoRound, BFL, "
                        "Nunchaku: `evalkit backends` marks them), 'all' = every one, 'seed' = the seed study's set; "
                        "bf16 is always "
                        "included (see `evalkit backends`)")
    p.add_argument("--out", help="run directory (default: reports/<model>-<prompts>-<settings hash>; rerunning "
                                 "the same command resumes it)")
    p.add_argument("--reports-dir", default="reports", help="parent of auto-named run directories (default %(default)s)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda if available")
    g = p.add_argument_group("generation settings (defaults: the seed study's for real Flux; small ones for tiny)")
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--steps", type=int, help="num_inference_steps")
    g.add_argument("--guidance", type=float, help="guidance_scale")
    g.add_argument("--max-sequence-length", type=int, help="T5 tokens (Flux default 512)")
    g.add_argument("--batch-size", type=int, default=1)
    g.add_argument("--seed", type=int, default=0, help="base seed; each prompt's seed derives from it and the prompt text")
    g.add_argument("--prompt-column", metavar="NAME",
                   help="column/field holding the prompt in a .csv/.tsv/.jsonl/.json prompt set "
                        "(default: the first of prompt, prompts, text, caption; a 'category' column is kept)")
    g.add_argument("--warmup", type=int, default=1, help="warm-up generations excluded from latency (default 1)")
    q = p.add_argument_group("quantization")
    q.add_argument("--components", help="what quantizing backends quantize: transformer, text_encoder_2, or both "
                                        "(comma-separated); default per backend, as in the seed study")
    q.add_argument("--config", dest="config_file", help="TOML with per-backend options, e.g. [backends.bnb-8bit] llm_int8_threshold = 5.0, and +compile "
                        "settings: [compile] preset = \"regional\"|\"whole\"|\"seed\", mode, fullgraph, dynamic, "
                        "component, regional (per backend: [backends.NAME.compile])")
    q.add_argument("--gguf-file", help="a pre-quantized GGUF transformer for the gguf-* backends (else evalkit makes one)")
    q.add_argument("--backend", dest="checkpoints", action="append", metavar="NAME=PATH_OR_HUB_ID",
                   help="a prequantized checkpoint as a backend named NAME (repeatable): a diffusers folder or "
                        "pipeline whose config.json has a quantization_config, a GGUF or BFL file, or a hub id in "
                        "the HF cache (never downloaded)")
    q.add_argument("--plugin", dest="plugins", action="append", metavar="FILE.py",
                   help="a Python file registering your own quantization library and backends, model family or "
                        "metric (repeatable; docs/plugins.md); installed plugins load through entry points")
    q.add_argument("--attempt-known-failures", action="store_true",
                   help="try backend/modifier pairs known to fail instead of recording them as failed")
    x = p.add_argument_group("execution")
    x.add_argument("--jobs", type=int, default=1,
                   help="CPU only: run N ranks on this machine (torchrun underneath), sharing the cores; the work "
                        "is split as --schedule says (latency then shares cores)")
    x.add_argument("--gpus", help="comma-separated GPU indices: one rank per GPU on this machine (torchrun "
                                  "underneath); under torchrun/accelerate/srun each rank takes its own GPU instead")
    x.add_argument("--no-reference", dest="include_reference", action="store_false",
                   help="generate only the backends named (calibration's bf16+compile sub-run); score needs the "
                        "reference, so a normal run never uses this")
    x.add_argument("--schedule", choices=["auto", "prompts", "backends"], default="auto",
                   help="how work units are chosen over ranks: whole backends to ranks, every backend split over "
                        "all ranks, or auto (the split with the smallest estimated wall time, fixed costs "
                        "counted; default)")
    x.add_argument("--max-images", type=int, help="refuse (exit 2) a command that would generate more images than "
                                                  "this; studies over 2000 images print their size and an estimate")
    x.add_argument("--lock-timeout", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for another evalkit process writing the same run directory (default: refuse)")
    x.add_argument("--break-lock", action="store_true",
                   help="remove a run directory's lock left by a process that is gone (e.g. on another host)")


def options_from_args(args: argparse.Namespace) -> GenerateOptions:
    from evalkit.generate.stage import GenerateOptions

    return GenerateOptions(
        prompts_file=args.prompts, model=args.model, backends=args.backends, out=args.out, reports_dir=args.reports_dir,
        device=args.device, height=args.height, width=args.width, steps=args.steps, guidance=args.guidance,
        max_sequence_length=args.max_sequence_length, batch_size=args.batch_size, seed=args.seed, prompt_column=args.prompt_column, warmup=args.warmup,
        components=[c.strip() for c in args.components.split(",") if c.strip()] if args.components else None,
        config_file=args.config_file, gguf_file=args.gguf_file, jobs=args.jobs, plugins=list(args.plugins or []),
        checkpoints=list(getattr(args, "checkpoints", None) or []),
        gpus=[g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else [],
        attempt_known_failures=args.attempt_known_failures, command=["evalkit", *sys.argv[1:]],
        max_images=args.max_images, lock_timeout=args.lock_timeout, break_lock=args.break_lock,
        schedule=getattr(args, "schedule", "auto"), include_reference=getattr(args, "include_reference", True),
    )


def local_ranks_wanted(opts: GenerateOptions) -> int:
    """How many ranks `--gpus`/`--jobs` ask for on this machine; 1 inside a launched world (the launcher decided)."""
    import evalkit.dist as dist

    if dist.launched() or dist.world().distributed:
        return 1
    return len(opts.gpus) if opts.gpus else max(1, opts.jobs)


def launch_ranks(argv: list[str], opts: GenerateOptions, n: int) -> int:
    """`--gpus`/`--jobs` as a thin launcher: torchrun --standalone with n ranks running `evalkit <argv>`."""
    import os

    import evalkit.dist as dist

    threads = None if opts.gpus else max(1, (os.cpu_count() or 1) // n)
    print(f"evalkit: starting {n} ranks on this machine (torchrun --standalone"
          f"{', GPUs ' + ','.join(opts.gpus) if opts.gpus else ''})", file=sys.stderr, flush=True)
    return dist.launch_local(argv, n, gpus=opts.gpus or None, threads_per_rank=threads)


def options_argv(opts: GenerateOptions) -> list[str]:
    """The `evalkit generate` command line that asks for `opts` (the API's `gpus=`/`jobs=` launch ranks with it)."""
    argv = ["generate", opts.prompts_file, "--model", opts.model, "--reports-dir", opts.reports_dir,
            "--device", opts.device, "--batch-size", str(opts.batch_size), "--seed", str(opts.seed),
            "--warmup", str(opts.warmup), "--schedule", opts.schedule, "--lock-timeout", str(opts.lock_timeout)]
    for flag, value in (("--backends", opts.backends), ("--out", opts.out), ("--height", opts.height),
                        ("--width", opts.width), ("--steps", opts.steps), ("--guidance", opts.guidance),
                        ("--max-sequence-length", opts.max_sequence_length), ("--prompt-column", opts.prompt_column),
                        ("--components", ",".join(opts.components) if opts.components else None),
                        ("--config", opts.config_file), ("--gguf-file", opts.gguf_file),
                        ("--max-images", opts.max_images)):
        if value is not None:
            argv += [flag, str(value)]
    for plugin in opts.plugins:
        argv += ["--plugin", plugin]
    for ckpt in opts.checkpoints:
        argv += ["--backend", ckpt]
    for flag, on in (("--attempt-known-failures", opts.attempt_known_failures), ("--break-lock", opts.break_lock),
                     ("--no-reference", not opts.include_reference)):
        if on:
            argv.append(flag)
    return argv


def generate_main(args: argparse.Namespace) -> int:
    from evalkit.generate.stage import run_generate

    opts = options_from_args(args)
    from evalkit.generate.uptodate import unchanged_run

    done = unchanged_run(opts)  # an unchanged rerun: no torch import, no manifest rewrite, no ranks started
    n = local_ranks_wanted(opts)
    if done is None and n > 1:
        args.launched = True  # `evalkit run`: the ranks ran every stage; this process only waited for them
        return launch_ranks(sys.argv[1:], opts, n)
    if done is not None:
        from evalkit.generate.stage import print_unchanged

        import evalkit.dist as dist

        if dist.world().is_main:  # under a launcher every rank finds the same answer; one says so
            print_unchanged(done)
        run_dir = done
    else:
        run_dir = run_generate(opts)
    args.run_dir = str(run_dir)  # later stages of `evalkit run` read it
    import evalkit.dist as dist
    from evalkit.rundir import display_path

    if dist.world().is_main:
        print(f"Results: {display_path(run_dir)}")
    return 0


def add_merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run directory whose ranks' shard files (generation/shards/) are to be merged")
    p.add_argument("--lock-timeout", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for another evalkit process writing the same run directory (default: refuse)")


def merge_main(args: argparse.Namespace) -> int:
    """`evalkit merge RUN_DIR`: what rank 0 does after the last barrier, run by hand (after a rank died, say).
    Exit 0 when every backend is complete (or recorded as failed/skipped), 1 naming what is missing or claimed
    twice, 2 on bad input."""
    from rich.console import Console

    from evalkit.generate.ranks import merge_and_summarize
    from evalkit.rundir import open_run
    from evalkit.runlock import acquire

    rd, _ = open_run(args.run_dir)
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)
    with acquire(rd.root, stage="merge", timeout_s=args.lock_timeout):
        problems = merge_and_summarize(rd, console)
    if problems:
        for line in problems:
            print(f"evalkit merge: {line}", file=sys.stderr)
        return 1
    print(f"merged: {rd.root / 'merge.json'}")
    return 0


def add_backends_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="the device to judge runnability for (default: cuda if available)")
    p.add_argument("--model", help="judge for this model's family: tiny[:FAMILY], random:VARIANT, a hub id or a "
                                   "directory (default: the default family, FLUX.1); see `evalkit models`")
    p.add_argument("--capability", metavar="MAJOR.MINOR",
                   help="judge for a CUDA GPU of this compute capability, present or not (9.0 = H100/H200, "
                        "10.0 = B200); implies --device cuda")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def backends_main(args: argparse.Namespace) -> int:
    import json

    from evalkit.quantizers.registry import backend_rows

    from evalkit.families.registry import default_family, family_of_pipeline_dir, family_of_spec, resolve_model

    device, capability = _probe_device(args.device, getattr(args, "capability", None))
    family = default_family()
    if getattr(args, "model", None):
        family = family_of_spec(args.model) or family_of_pipeline_dir(Path(resolve_model(args.model, build=False).path))
    rows = backend_rows(device, capability, family)
    if args.json:
        print(json.dumps({"device": device, "capability": capability, "family": family.key, "backends": rows},
                         indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    where = "a CUDA GPU that need not be here" if getattr(args, "capability", None) else "this machine"
    t = Table(title=f"evalkit backends for {family.display} on {where} (device: {device}"
                    + (f", compute capability {capability[0]}.{capability[1]})" if capability else ")"))
    for col in ("name", "runs here", "quantizes", "library", "why not / note", "what it is"):
        t.add_column(col, overflow="fold")
    for r in rows:
        note = r["reason"] or ""
        if r.get("deprecated"):
            note = (note + "; " if note else "") + f"deprecated upstream: {r['deprecated']}"
        if r.get("in_default") is False:
            note = (note + "; " if note else "") + "opt-in: not in --backends default (name it, or use all)"
        t.add_row(r["name"], "[green]yes[/]" if r["runs_here"] else "[red]no[/]", ",".join(r["quantizes"]) or "-",
                  r["library"], note, r["description"])
    # Off a terminal (piped), rich would wrap at 80 columns into word fragments: give the table room instead.
    Console(width=None if sys.stdout.isatty() else 200).print(t)
    return 0


def _probe_device(requested: str, capability: str | None = None) -> tuple[str, tuple[int, int] | None]:
    if capability is not None:  # a hypothetical GPU: nothing is probed
        from evalkit.errors import EvalkitError

        major, _, minor = capability.partition(".")
        if requested == "cpu" or not (major.isdigit() and minor.isdigit()):
            raise EvalkitError(f"--capability {capability!r}: expected MAJOR.MINOR of a CUDA GPU, e.g. 9.0")
        return "cuda", (int(major), int(minor))
    import torch

    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return "cpu", None
    if not torch.cuda.is_available():
        from evalkit.errors import EvalkitError

        raise EvalkitError("--device cuda: no CUDA device is available to torch (judge a GPU that is not here with "
                           "--capability, e.g. --capability 9.0 for an H200)")
    return "cuda", tuple(torch.cuda.get_device_capability())

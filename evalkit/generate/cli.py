"""CLI for the generate stage and `evalkit backends`. Imports nothing heavy at module level: the options are
declared in evalkit/generate/options.py, the launch code is in evalkit/generate/launch.py."""

from __future__ import annotations

import argparse
import sys

from evalkit.generate.options import GenerateOptions


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    GenerateOptions.add_arguments(p)


def options_from_args(args: argparse.Namespace) -> GenerateOptions:
    return GenerateOptions.from_args(args, command=["evalkit", *sys.argv[1:]])


def generate_main(args: argparse.Namespace) -> int:
    from evalkit.generate.launch import launch_ranks, local_ranks_wanted
    from evalkit.generate.stage import run_generate
    from evalkit.generate.uptodate import unchanged_run

    opts = options_from_args(args)

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
    """Arguments of `evalkit backends` (BackendsOptions, evalkit/generate/options.py)."""
    from evalkit.generate.options import BackendsOptions

    BackendsOptions.add_arguments(p)


def backends_main(args: argparse.Namespace) -> int:
    import json

    from evalkit.generate.listing import backend_listing
    from evalkit.generate.options import BackendsOptions

    opts = BackendsOptions.from_args(args)
    listing = backend_listing(opts)
    device, capability, family, rows = (listing[k] for k in ("device", "capability", "family", "backends"))
    if opts.json:
        print(json.dumps({**listing, "family": family.key}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    where = "a CUDA GPU that need not be here" if opts.capability else "this machine"
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



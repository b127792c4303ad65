"""evalkit's command line. Imports nothing heavy: each subcommand's module is imported only when it runs.

Each stage owns a light `cli` module with `add_*_arguments(parser)` and `*_main(args) -> int`:
  generate, backends            -> evalkit/generate/cli.py
  score, compare-images, weights -> evalkit/score/cli.py
  report                        -> evalkit/report/cli.py
  calibrate                     -> evalkit/calibrate/cli.py
  check, compare                -> evalkit/check/cli.py
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from typing import Callable, Sequence

from evalkit.version import __version__

# (command, module, add-arguments function, main function, help). `run` is defined below.
COMMANDS: list[tuple[str, str, str, str, str]] = [
    ("generate", "evalkit.generate.cli", "add_generate_arguments", "generate_main",
     "generate images per backend and measure memory and latency (stage 1)"),
    ("merge", "evalkit.generate.cli", "add_merge_arguments", "merge_main",
     "merge the ranks' shard files of a sharded generate into the run directory (after a rank died, say)"),
    ("backends", "evalkit.generate.cli", "add_backends_arguments", "backends_main",
     "list quantization backends and modifiers, and whether each can run here"),
    ("models", "evalkit.families.cli", "add_models_arguments", "models_main",
     "list model families and variants (tiny, random full-size, real), and which are here"),
    ("score", "evalkit.score.cli", "add_score_arguments", "score_main",
     "score every backend's images against the bf16 reference (stage 2)"),
    ("compare-images", "evalkit.score.cli", "add_compare_images_arguments", "compare_images_main",
     "score two folders of images paired by file stem (x.png with x.jpg)"),
    ("weights", "evalkit.score.cli", "add_weights_arguments", "weights_main",
     "show, fetch, prepare and verify the metric weights (prepare --from DIR for air-gapped machines)"),
    ("report", "evalkit.report.cli", "add_report_arguments", "report_main",
     "write the self-contained HTML report and paper figures (stage 3)"),
    ("calibrate", "evalkit.calibrate.cli", "add_calibrate_arguments", "calibrate_main",
     "measure the reference's own noise floor under tolerated perturbations (calibration.json)"),
    ("check", "evalkit.check.cli", "add_check_arguments", "check_main",
     "gate a release: check a run against thresholds (exit 0 pass, 1 fail, 2 error)"),
    ("compare", "evalkit.check.cli", "add_compare_arguments", "compare_main",
     "compare two runs with a paired bootstrap over prompts"),
]

# Stages that `evalkit run` chains, in order, after generate.
RUN_STAGES: list[tuple[str, str, str, str]] = [
    ("score", "evalkit.score.cli", "add_score_arguments", "score_main"),
    # does nothing without --calibrate; before report, so the report draws the noise floor
    ("calibrate", "evalkit.calibrate.cli", "add_calibrate_arguments", "calibrate_main"),
    ("report", "evalkit.report.cli", "add_report_arguments", "report_main"),
]


def _load(module: str, attr: str) -> Callable | None:
    return getattr(importlib.import_module(module), attr, None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evalkit",
        description="Measure how much image quality each way of quantizing a diffusion model costs, "
        "and what it buys in memory and speed.",
        epilog="Start with: evalkit run prompts/styles.txt --model tiny   (docs: README.md)",
    )
    parser.add_argument("--version", action="version", version=f"evalkit {__version__}")
    _add_verbose(parser, False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="generate, score and report in one go: evalkit run prompts/styles.txt",
                         description="Run every stage: generate -> score -> report. Each stage can be rerun alone on the run directory.")
    gen_add = _load("evalkit.generate.cli", "add_generate_arguments")
    assert gen_add is not None
    gen_add(run)
    _add_verbose(run, argparse.SUPPRESS)
    for _name, module, add, _main in RUN_STAGES:
        add_fn = _load(module, add)
        if add_fn is not None:
            add_fn(run, for_run=True)
    run.set_defaults(_main=_run_main)

    for name, module, add, main, help_text in COMMANDS:
        add_fn = _load(module, add)
        if add_fn is None:
            continue
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        add_fn(p)
        _add_verbose(p, argparse.SUPPRESS)
        p.set_defaults(_main=(module, main))
    return parser


def _add_verbose(p: argparse.ArgumentParser, default: object) -> None:
    # Global, but also accepted after the command (`evalkit run ... -v`); SUPPRESS keeps the subparser from
    # resetting a -v given before the command.
    p.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="also show third-party libraries' warnings and notices (by default they go to the run's "
                        "logs/ folder)")


def _call(target: tuple[str, str] | Callable, args: argparse.Namespace) -> int:
    if callable(target):
        return target(args)
    fn = _load(*target)
    assert fn is not None, target
    return int(fn(args) or 0)


def _run_main(args: argparse.Namespace) -> int:
    from evalkit.generate.cli import generate_main

    rc = generate_main(args)
    if rc not in (0, None) or getattr(args, "launched", False):
        return rc  # launched: the ranks it started ran every stage
    # Later stages read what generate wrote; they take the run directory it chose.
    import evalkit.dist as dist
    from evalkit.logs import attach_run_log

    for name, module, _add, main in RUN_STAGES:
        fn = _load(module, main)
        if fn is None:
            continue
        every_rank = _runs_on_every_rank(module)
        if not dist.world().is_main and not every_rank:
            continue  # only rank 0 calibrates and reports; score runs on every rank (RUNS_ON_EVERY_RANK)
        if dist.world().is_main:  # the run's logs/<stage>.log is rank 0's; other ranks keep to their stderr
            attach_run_log(args.run_dir, name)
        # A stage rank 0 runs alone must not wait in a collective for ranks that went home: a world of one for it.
        with contextlib.nullcontext() if every_rank else dist.solo():
            rc = int(fn(args) or 0)
        if rc != 0:
            return rc
    return 0


def _runs_on_every_rank(module: str) -> bool:
    """A stage module that declares `RUNS_ON_EVERY_RANK = True` (score, once it is distributed) runs on every rank
    of a launched `evalkit run`; the others run on rank 0 alone."""
    return bool(getattr(sys.modules.get(module) or importlib.import_module(module), "RUNS_ON_EVERY_RANK", False))


def _main_rank() -> bool:
    import evalkit.dist as dist

    try:
        return dist.world().is_main
    except Exception:  # noqa: BLE001 - a bad launcher variable is the stage's one-line error, not the log's
        return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    from evalkit.errors import EvalkitError
    from evalkit.logs import capture_third_party_warnings, set_verbose

    set_verbose(bool(getattr(args, "verbose", False)))
    capture_third_party_warnings()
    # Only rank 0 of a launched job writes the run's log files (evalkit.dist reads the launcher's variables; no torch).
    if getattr(args, "run_dir", None) and os.path.isdir(os.path.join(args.run_dir, "logs")) and _main_rank():
        from evalkit.logs import attach_run_log

        attach_run_log(args.run_dir, args.command)
    try:
        return _call(args._main, args)
    except EvalkitError as e:
        print(f"evalkit: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("evalkit: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `evalkit backends | head` should not print a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

"""CLI of `evalkit calibrate`. Imports nothing heavy: the work happens in evalkit.calibrate.stage, the options are
declared in evalkit/calibrate/options.py."""

from __future__ import annotations

import argparse
import dataclasses
import os

from evalkit.calibrate.options import CalibrateOptions


def add_calibrate_arguments(parser: argparse.ArgumentParser, for_run: bool = False) -> None:
    """Arguments of `evalkit calibrate` (and, with for_run, the ones `evalkit run --calibrate` adds: the others are
    generate's, and calibrate uses them too)."""
    if for_run:
        group = parser.add_argument_group("calibration (after scoring, with --calibrate)")
        group.add_argument("--calibrate", action="store_true",
                           help="after scoring, regenerate the reference under tolerated perturbations and write "
                                "RUN_DIR/calibration.json (the noise floor; docs/release-gate.md)")
        CalibrateOptions.add_arguments(group, only=("perturbations",))
        return
    CalibrateOptions.add_arguments(parser)
    parser.epilog = ("Writes RUN_DIR/calibration.json and regenerates into RUN_DIR/calibration/<perturbation>/ "
                     "(resumable; rerun the same command after an interruption).")


def calibrate_main(args: argparse.Namespace) -> int:
    """`evalkit calibrate RUN_DIR` (and the last step of `evalkit run --calibrate`)."""
    if hasattr(args, "calibrate") and not args.calibrate:
        return 0  # `evalkit run` without --calibrate
    from evalkit.calibrate.stage import run_calibration

    opts = CalibrateOptions.from_args(args)
    if hasattr(args, "calibrate"):  # only `evalkit run` has the --calibrate switch
        opts = _in_run(opts)
    result = run_calibration(**dataclasses.asdict(opts))
    print(format_floor(result))
    return 0


def _in_run(opts: CalibrateOptions) -> CalibrateOptions:
    """`evalkit run ... --calibrate`: generate's --config serves calibrate when it has a [calibrate] table (else the
    device's default perturbations), and the sub-runs shard over the GPUs and rank count the run was launched with
    (evalkit.dist.launch_local passes them on; the ranks' own argv has no --gpus/--jobs)."""
    from evalkit.dist import LAUNCH_GPUS_ENV, LAUNCH_NPROC_ENV
    from evalkit.io import read_toml

    config = opts.config_file if opts.config_file and "calibrate" in read_toml(opts.config_file) else None
    gpus = [g for g in os.environ.get(LAUNCH_GPUS_ENV, "").split(",") if g]
    n = int(os.environ.get(LAUNCH_NPROC_ENV, "1") or 1)
    return dataclasses.replace(opts, config_file=config, gpus=gpus, jobs=1 if gpus else n)


def format_floor(result: dict) -> str:
    """The floor per metric as a few plain lines (what the terminal shows)."""
    lines = [f"noise floor of {result.get('reference_backend')} over {', '.join(result['perturbations'])} "
             f"(n={result.get('n_prompts')} prompts):"]
    for name, m in result["metrics"].items():
        f = m["floor"]
        if f.get("status") != "ok":
            lines.append(f"  {m['label']:<16} skipped: {f.get('reason')}")
            continue
        unit = f" {m['unit']}" if m.get("unit") and f["display"] != "identical" else ""
        lines.append(f"  {m['label']:<16} {f['display']}{unit}  (from {f['from']}"
                     f"{'; every image identical' if f['identical'] else ''})")
    for name, p in result["perturbations"].items():
        lines.append(f"  {name}: {p['n_byte_identical_images']}/{p['n_images']} images byte-identical to the "
                     f"reference; in force: {p['in_force']}")
    return "\n".join(lines)

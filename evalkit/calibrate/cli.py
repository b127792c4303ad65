"""CLI of `evalkit calibrate`. Imports nothing heavy: the work happens in evalkit.calibrate.stage."""

from __future__ import annotations

import argparse


def add_calibrate_arguments(parser: argparse.ArgumentParser, for_run: bool = False) -> None:
    """Arguments of `evalkit calibrate` (and, with for_run, the ones `evalkit run --calibrate` adds)."""
    if for_run:
        parser.add_argument("--calibrate", action="store_true",
                            help="after scoring, regenerate the reference under tolerated perturbations and write "
                                 "RUN_DIR/calibration.json (the noise floor; docs/release-gate.md)")
        parser.add_argument("--perturbations", default=None,
                            help="comma list of calibration perturbations (default: the device's; see "
                                 "evalkit calibrate --help)")
        return
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory whose reference to calibrate")
    parser.add_argument("--config", dest="calibrate_config", metavar="FILE.toml", default=None,
                        help="[calibrate] perturbations = [...] and [calibrate.define.<name>] knobs")
    parser.add_argument("--perturbations", default=None,
                        help="comma list, overriding the config: batch2, threads, rerun (CPU); batch2, sdpa-math, "
                             "sdpa-efficient, tf32, compile, rerun (CUDA)")
    parser.add_argument("--metrics-device", dest="calibrate_device", default="auto",
                        help="device for scoring (auto, cpu, cuda)")
    parser.add_argument("--workers", type=int, default=None, help="image decoding workers for scoring")
    parser.add_argument("--gpus", default=None, help="comma-separated GPU indices: each perturbation's regeneration "
                        "runs one rank per GPU (torchrun on this machine), as `evalkit generate --gpus` does")
    parser.add_argument("--jobs", type=int, default=1, help="CPU only: each regeneration runs on N ranks sharing the cores")
    parser.epilog = ("Writes RUN_DIR/calibration.json and regenerates into RUN_DIR/calibration/<perturbation>/ "
                     "(resumable; rerun the same command after an interruption).")


def calibrate_main(args: argparse.Namespace) -> int:
    """`evalkit calibrate RUN_DIR` (and the last step of `evalkit run --calibrate`)."""
    if hasattr(args, "calibrate") and not args.calibrate:
        return 0  # `evalkit run` without --calibrate
    from evalkit.calibrate.stage import run_calibration

    names = [n.strip() for n in args.perturbations.split(",") if n.strip()] if args.perturbations else None
    config = getattr(args, "calibrate_config", None)
    if config is None and getattr(args, "config", None):
        # `evalkit run --config F --calibrate`: F's [calibrate] table, when it has one, picks the perturbations
        from evalkit.io import read_toml

        config = args.config if "calibrate" in read_toml(args.config) else None
    result = run_calibration(args.run_dir, config_file=config, perturbations=names,
                             device=getattr(args, "calibrate_device", "auto"), workers=getattr(args, "workers", None),
                             **_ranks(args))
    print(format_floor(result))
    return 0


def _ranks(args: argparse.Namespace) -> dict:
    """`evalkit calibrate --gpus/--jobs`; under `evalkit run --gpus/--jobs`, the GPUs and rank count the run was
    launched with (evalkit.dist.launch_local passes them on), so the sub-runs shard over the same devices."""
    import os

    if getattr(args, "command", None) == "calibrate":
        gpus = [g.strip() for g in (args.gpus or "").split(",") if g.strip()]
        return {"gpus": gpus, "jobs": 1 if gpus else max(1, int(args.jobs or 1))}
    from evalkit.dist import LAUNCH_GPUS_ENV, LAUNCH_NPROC_ENV

    gpus = [g for g in os.environ.get(LAUNCH_GPUS_ENV, "").split(",") if g]
    n = int(os.environ.get(LAUNCH_NPROC_ENV, "1") or 1)
    return {"gpus": gpus, "jobs": 1 if gpus else n}


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

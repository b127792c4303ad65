"""`evalkit calibrate`'s options, declared once (evalkit/options.py derives its flags, the keyword arguments of
run_calibration and their documentation from this dataclass). Light: no torch, no stage."""

from __future__ import annotations

from dataclasses import dataclass

from evalkit.options import StageOptions, option


@dataclass
class CalibrateOptions(StageOptions):
    """What `evalkit calibrate RUN_DIR` is asked for."""

    run_dir: str = option(help="run directory whose reference to calibrate", positional=True, metavar="RUN_DIR",
                          api_type="PathLike")
    config_file: str | None = option(
        None, flag="--config", metavar="FILE.toml", api_type="PathLike | None",
        help="[calibrate] perturbations = [...] and [calibrate.define.<name>] knobs (one options file can serve "
             "`evalkit run --config`)")
    perturbations: list[str] | None = option(
        None, api_type="str | Sequence[str] | None",
        help="comma list, overriding the config: batch2, threads, rerun (CPU); batch2, sdpa-math, sdpa-efficient, "
             "tf32, compile, rerun (CUDA); default: the run device's")
    device: str = option(
        "auto", choices=("auto", "cpu", "cuda"), deprecated=("--metrics-device",),
        help="device for scoring the regenerated images against the reference: auto (default: cuda if available), "
             "cpu or cuda; the regeneration runs on the run's own device")
    workers: int | None = option(None, help="image-decoding processes for scoring (default: CPU count, at most 32)")
    gpus: list[str] = option(
        [], api_type="str | Sequence[str]",
        help="comma-separated GPU indices: each perturbation's regeneration runs one rank per GPU (torchrun on this "
             "machine), as `evalkit generate --gpus` does")
    jobs: int = option(1, help="CPU only: each regeneration runs on N ranks sharing the cores")

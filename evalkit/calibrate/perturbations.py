"""Perturbations a release should tolerate: plain, frozen recipes the calibration regenerates the reference under.

A perturbation changes how the reference backend computes, never what it computes: batch shape, intra-op thread
count, attention kernel, TF32 matmul, torch.compile. The generate stage's worker applies them (batch size through
the generation settings, the rest through the generate options --threads / --tf32 / --sdpa-backend of the
sub-run, see evalkit/generate/worker/run.py apply_numerics) and its record states what was in force (`numerics`).

Selected by name in `evalkit calibrate --config FILE.toml`:

    [calibrate]
    perturbations = ["batch2", "threads"]      # default: the device's DEFAULTS

    [calibrate.define.threads-4]               # a perturbation of your own, from the same knobs
    intra_op_threads = 4
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError, suggest
from evalkit.generate.options import SDPA_BACKENDS
from evalkit.io import read_toml


@dataclass(frozen=True)
class Perturbation:
    """One way of regenerating the reference. None leaves a knob as the reference run had it."""

    name: str
    description: str
    devices: tuple[str, ...] = ("cpu", "cuda")
    batch_size: int | None = None
    intra_op_threads: int | None = None
    sdpa_backend: str | None = None
    tf32_matmul: bool | None = None
    compile: bool = False

    def settings(self) -> dict[str, Any]:
        """The knobs this perturbation sets (what calibration.json records as its exact settings)."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("name", "description", "devices") and v not in (None, False)}


def _other_thread_count() -> int:
    # torch's default intra-op count is the number of physical cores; half of it (or 2 on one core) is "another".
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, n // 2) if n > 1 else 2


def builtin_perturbations() -> dict[str, Perturbation]:
    """Every built-in perturbation by name (resolved on this machine: the thread count depends on its cores)."""
    items = [
        Perturbation("batch2", "batch size 2 instead of 1 (other GEMM shapes, other kernels)", batch_size=2),
        Perturbation("threads", f"{_other_thread_count()} intra-op threads (other reduction splits on CPU)",
                     devices=("cpu",), intra_op_threads=_other_thread_count()),
        Perturbation("sdpa-math", "the math SDPA backend instead of the fused kernel torch picks",
                     devices=("cuda",), sdpa_backend="math"),
        Perturbation("sdpa-efficient", "the memory-efficient SDPA backend", devices=("cuda",),
                     sdpa_backend="efficient"),
        Perturbation("tf32", "TF32 matmul and cuDNN convolutions on", devices=("cuda",), tf32_matmul=True),
        Perturbation("compile", "torch.compile of the transformer (the +compile modifier)", devices=("cuda",),
                     compile=True),
        # The control: the same settings in a fresh process. On CPU it must give a floor of exactly zero.
        Perturbation("rerun", "the same settings again, in a fresh process"),
    ]
    return {p.name: p for p in items}


DEFAULTS: dict[str, tuple[str, ...]] = {
    "cpu": ("batch2", "threads"),
    "cuda": ("batch2", "sdpa-math", "tf32", "compile"),
}

KNOBS = ("batch_size", "intra_op_threads", "sdpa_backend", "tf32_matmul", "compile")


def select_perturbations(device: str, config_file: str | None = None,
                         names: list[str] | None = None) -> list[Perturbation]:
    """The perturbations to run on `device`: `names` (the CLI's --perturbations) over the config file's
    [calibrate] perturbations over DEFAULTS[device]. An unknown name, or one that cannot run on the device,
    is an error naming the file."""
    known = builtin_perturbations()
    chosen: list[str] | None = None
    where = "--perturbations"
    if config_file:
        cfg, path = _read_config(config_file)
        for name, table in (cfg.get("define") or {}).items():
            known[name] = _define(name, table, path)
        if "perturbations" in cfg:
            chosen = cfg["perturbations"]
            where = f"{path}: [calibrate] perturbations"
            if not isinstance(chosen, list) or not all(isinstance(x, str) for x in chosen) or not chosen:
                raise EvalkitError(f"{where} must be a non-empty list of names")
    if names:
        chosen, where = names, "--perturbations"
    chosen = list(chosen or DEFAULTS.get(device, DEFAULTS["cpu"]))
    out = []
    for name in dict.fromkeys(chosen):
        if name not in known:
            raise EvalkitError(f"{where}: unknown perturbation {name!r} (known: {', '.join(known)}).{suggest(name, list(known))}")
        p = known[name]
        if device not in p.devices:
            raise EvalkitError(f"{where}: perturbation {name!r} needs {' or '.join(p.devices)}, but the run is on {device}")
        out.append(p)
    return out


def _read_config(config_file: str) -> tuple[dict[str, Any], Path]:
    path = Path(config_file)
    data = read_toml(path)
    cfg = data.get("calibrate")
    if not isinstance(cfg, dict):
        raise EvalkitError(f"{path}: no [calibrate] table (expected: [calibrate] perturbations = [\"batch2\", ...])")
    unknown = set(cfg) - {"perturbations", "define"}
    if unknown:
        raise EvalkitError(f"{path}: [calibrate]: unknown key(s) {sorted(unknown)}; expected perturbations, define")
    return cfg, path


def _define(name: str, table: Any, path: Path) -> Perturbation:
    where = f"{path}: [calibrate.define.{name}]"
    if not isinstance(table, dict) or not table:
        raise EvalkitError(f"{where}: must be a table with at least one of {', '.join(KNOBS)}")
    unknown = set(table) - set(KNOBS)
    if unknown:
        raise EvalkitError(f"{where}: unknown knob(s) {sorted(unknown)}; knobs are {', '.join(KNOBS)}")
    for key in ("batch_size", "intra_op_threads"):
        v = table.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise EvalkitError(f"{where}: {key} must be a positive integer, not {v!r}")
    if table.get("sdpa_backend") is not None and table["sdpa_backend"] not in SDPA_BACKENDS:
        raise EvalkitError(f"{where}: sdpa_backend must be one of {', '.join(SDPA_BACKENDS)}")
    for key in ("tf32_matmul", "compile"):
        if key in table and not isinstance(table[key], bool):
            raise EvalkitError(f"{where}: {key} must be true or false")
    cuda_only = any(table.get(k) for k in ("sdpa_backend", "tf32_matmul", "compile"))
    return Perturbation(name, "defined in " + str(path), devices=("cuda",) if cuda_only else ("cpu", "cuda"),
                        **{k: table[k] for k in KNOBS if k in table})

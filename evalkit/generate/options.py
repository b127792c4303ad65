"""The generate stage's options, declared once (evalkit/options.py derives the CLI, the API, the ranks' argv and the
manifest entry from this dataclass). Light: imports nothing but the standard library and evalkit.options.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from evalkit.options import StageOptions, option

# Attention kernels a worker can be restricted to (torch.nn.attention.SDPBackend members, by evalkit's short name).
SDPA_BACKENDS = ("math", "flash", "efficient", "cudnn")

_SETTINGS = "generation settings (defaults: the model family's, e.g. the seed study's for FLUX.1; small ones for tiny)"
_NUMERICS = ("numerics (part of the run's identity when set; default: torch's own settings; evalkit calibrate "
             "varies them)")
_QUANT = "quantization"
_EXEC = "execution (how the work is spread; not part of what the images are)"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"expected a positive integer, not {text!r}")
    return value


@dataclass
class GenerateOptions(StageOptions):
    """What `evalkit generate` (and `evalkit.generate(...)`) is asked for."""

    prompts_file: str = option(
        help="prompts file: a .txt with one prompt a line ('#' comments and blank lines ignored), or a prompt set "
             ".csv/.tsv (header row; the prompt column), .jsonl (one object or string a line) or .json (a list); "
             "UTF-8. From Python also a list of prompt texts",
        positional=True, api_name="prompts", metavar="prompts", api_type="PathLike | Sequence[str]")
    model: str = option(
        "black-forest-labs/FLUX.1-dev",
        help="Hugging Face id (from the local cache only), a local diffusers directory, 'tiny' (embedded tiny "
             "model, CPU-friendly) or 'random:flux-dev' (full-size architecture, random weights: memory/latency "
             "only); see `evalkit models`")
    backends: str = option(
        "default",
        help="comma-separated backend names with optional +compile/+offload/+group-offload modifiers; 'default' = "
             "every registered backend but the opt-in ones (ModelOpt, SDNQ, AutoRound, BFL, Nunchaku: `evalkit "
             "backends` marks them), 'all' = every one, 'seed' = the seed study's set; bf16 is always included (see `evalkit "
             "backends`). A run directory keeps the backends it already holds",
        api_type="str | Sequence[str]")
    out: str | None = option(
        None, help="run directory (default: <reports-dir>/<model>-<prompts>-<settings hash>; rerunning the same "
                   "command resumes it)", api_type="PathLike | None")
    reports_dir: str = option("reports", help="parent of auto-named run directories", api_type="PathLike")
    device: str = option("auto", choices=("auto", "cpu", "cuda"), help="where to generate: auto (default: cuda if available), cpu or cuda")

    height: int | None = option(None, group=_SETTINGS, help="image height in pixels")
    width: int | None = option(None, group=_SETTINGS, help="image width in pixels")
    steps: int | None = option(None, group=_SETTINGS, help="denoising steps per image (num_inference_steps)")
    guidance: float | None = option(None, group=_SETTINGS, help="guidance strength (guidance_scale)")
    max_sequence_length: int | None = option(None, group=_SETTINGS,
                                             help="text-encoder tokens kept (FLUX.1 default 512)")
    batch_size: int = option(1, group=_SETTINGS, help="prompts per pipeline call")
    seed: int = option(0, group=_SETTINGS, help="base seed; each prompt's seed derives from it and the prompt text")
    prompt_column: str | None = option(
        None, group=_SETTINGS, metavar="NAME",
        help="column/field holding the prompt in a .csv/.tsv/.jsonl/.json prompt set (default: the first of "
             "prompt, prompts, text, caption; a 'category' column is kept)")
    warmup: int = option(1, group=_SETTINGS, help="warm-up generations per backend, excluded from latency")
    warmup_steps: int | None = option(
        None, group=_SETTINGS, parse=_positive_int, manifest_when_unset=False, metavar="N",
        help="denoising steps of each warm-up generation (default: --steps). A few steps warm the same kernels, "
             "compiled graphs and allocator at a fraction of a full image's cost; each unit records its first "
             "measured image against the median (latency.first_vs_median) to show whether that held. A +compile "
             "backend makes a second short warm-up, compiled, to measure its compile time against")

    threads: int | None = option(
        None, group=_NUMERICS, parse=_positive_int, manifest_when_unset=False,
        help="intra-op threads of each backend's worker (default: torch's, the physical cores; with several CPU "
             "ranks on one machine, its cores shared among them). Changes CPU reduction order, hence the images")
    tf32: bool | None = option(
        None, group=_NUMERICS, metavar="on|off", manifest_when_unset=False,
        help="TF32 matmul and cuDNN convolutions in the workers (CUDA; default: torch's, off)")
    sdpa_backend: str | None = option(
        None, group=_NUMERICS, choices=SDPA_BACKENDS, manifest_when_unset=False,
        help="restrict scaled-dot-product attention to one kernel (default: torch picks)")

    components: list[str] | None = option(
        None, group=_QUANT,
        help="what quantizing backends quantize: transformer, text_encoder_2, or both (comma-separated); "
             "default per backend, as in the seed study", api_type="str | Sequence[str] | None")
    config_file: str | None = option(
        None, group=_QUANT, flag="--config", api_name="config", metavar="FILE.toml", api_type="PathLike | None",
        help="TOML with per-backend options, e.g. [backends.bnb-8bit] llm_int8_threshold = 5.0, and +compile "
             "settings: [compile] preset = \"regional\"|\"whole\"|\"seed\", mode, fullgraph, dynamic, component, "
             "regional (per backend: [backends.NAME.compile])")
    gguf_file: str | None = option(
        None, group=_QUANT, api_type="PathLike | None",
        help="a pre-quantized GGUF transformer for the gguf-* backends (else evalkit makes one)")
    plugins: list[str] = option(
        [], group=_QUANT, flag="--plugin", repeat=True, metavar="FILE.py", api_type="Sequence[PathLike]",
        help="a Python file registering your own quantization library and backends, model family or metric "
             "(repeatable; docs/plugins.md); installed plugins load through entry points")
    checkpoints: list[str] = option(
        [], group=_QUANT, flag="--backend", repeat=True, metavar="NAME=PATH_OR_HUB_ID", api_type="Sequence[str]",
        help="a prequantized checkpoint as a backend named NAME (repeatable): a diffusers folder or pipeline whose "
             "config.json has a quantization_config, a GGUF or BFL file, or a hub id in the HF cache (never "
             "downloaded)")
    attempt_known_failures: bool = option(
        False, group=_QUANT, help="try backend/modifier pairs known to fail instead of recording them as failed")

    jobs: int = option(
        1, group=_EXEC,
        help="CPU only: run N ranks on this machine (torchrun underneath), sharing the cores; the work is split "
             "as --schedule says (latency then shares cores)")
    gpus: list[str] = option(
        [], group=_EXEC, api_type="str | Sequence[str]",
        help="comma-separated GPU indices: one rank per GPU on this machine (torchrun underneath); under "
             "torchrun/accelerate/srun each rank takes its own GPU instead")
    include_reference: bool = option(
        True, group=_EXEC, flag="--no-reference",
        help="generate only the backends named (calibration's bf16+compile sub-run); score needs the reference, "
             "so a normal run never uses this")
    schedule: str = option(
        "auto", group=_EXEC, choices=("auto", "prompts", "backends"),
        help="how work units are chosen over ranks: whole backends to ranks, every backend split over all ranks, "
             "or auto (the split with the smallest estimated wall time, fixed costs counted)")
    max_images: int | None = option(
        None, group=_EXEC,
        help="refuse (exit 2) a command that would generate more images than this; studies over 2000 images "
             "print their size and an estimate")
    lock_timeout: float = option(
        0.0, group=_EXEC, metavar="SECONDS",
        help="wait this long for another evalkit process writing the same run directory (default: refuse)")
    break_lock: bool = option(
        False, group=_EXEC,
        help="remove a run directory's lock left by a process that is gone (e.g. on another host)")

    # The command line that asked for this run (the manifest's `command`); not an option.
    command: list[str] = option([], internal=True, help="the command that asked for this run")

    # `retry_failed` was never read; manifests written before its removal still hold it.
    RETIRED_OPTIONS: ClassVar[tuple[str, ...]] = ("retry_failed",)

    def numerics(self) -> dict[str, object]:
        """The numerics knobs that are set: the manifest's config.numerics and part of the run's identity."""
        return {k: v for k, v in (("threads", self.threads), ("tf32", self.tf32), ("sdpa_backend", self.sdpa_backend))
                if v is not None}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:32] or "run"


def prompts_slug(prompts_file: str) -> str:
    """The prompts part of an auto-named run directory: the file's stem, and its format unless it is a plain .txt,
    so `three.csv` and `three.jsonl` do not both read `three`."""
    p = Path(prompts_file)
    suffix = p.suffix.lower().lstrip(".")
    return slug(p.stem) + (f"-{slug(suffix)}" if suffix and suffix != "txt" else "")


def run_id_prefix(model: str, prompts_file: str, legacy: bool = False) -> str:
    """`<model>-<prompts>-`: an auto-named run directory's name before its settings hash. `legacy`: the name runs
    of a prompt set (.csv, .jsonl, ...) had before the format joined it (still found and resumed)."""
    prompts = slug(Path(prompts_file).stem) if legacy else prompts_slug(prompts_file)
    return f"{slug(model)}-{prompts}-"


@dataclass
class BackendsOptions(StageOptions):
    """What `evalkit backends` (and `evalkit.list_backends(...)`) is asked: which backends run for which model,
    on which device."""

    device: str = option("auto", choices=("auto", "cpu", "cuda"),
                         help="the device to judge runnability for (auto: cuda if available)")
    model: str | None = option(
        None, help="judge for this model's family: tiny[:FAMILY], random:VARIANT, a hub id or a directory (default: "
                   "the default family, FLUX.1); see `evalkit models`")
    capability: str | None = option(
        None, metavar="MAJOR.MINOR",
        help="judge for a CUDA GPU of this compute capability, present or not (9.0 = H100/H200, 10.0 = B200); "
             "implies --device cuda")
    json: bool = option(False, api=False, help="print one JSON object instead of the table")

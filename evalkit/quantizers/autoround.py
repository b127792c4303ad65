"""AutoRound (`auto-round` on PyPI): W4A16 weights with learned rounding (SignRound), read by diffusers'
`AutoRoundConfig`.

diffusers only loads prequantized AutoRound checkpoints (`requires_calibration = True`). evalkit quantizes with
auto-round itself, from the bf16 pipeline, calibrating on the study's own prompts at the study's settings: auto-round
runs the pipeline on them, caches every transformer block's inputs and tunes each block's linears. That happens once,
as a `prepare` step off the load clock (its settings and time are recorded), into `<cache>/autoround/<key>/`, keyed
on the model's content, the prompts, the generation settings, the options and the auto-round version, and written
atomically (a temp folder renamed into place, under a lock), as a made GGUF file is. A checkpoint someone else made
loads with `--backend NAME=DIR` (its config.json's quant_method is `auto-round`).

Calibration cost: the tiny Flux on 2 CPU cores took 228 s at auto-round's 50 iterations and 8 prompts, about 70 s
at 1 iteration (mostly caching block inputs); full size is a GPU job (57 blocks x iters x prompts x steps).
`iters` is an option (`[backends.autoround-w4a16] iters = 2` in a --config file); auto-round's default is 200, and
0 is plain round-to-nearest, not SignRound. Because calibration takes minutes, `--backends default` leaves this
backend out: name it, or use `all`.

Census: on CPU the linears become `auto_round_extension...QuantLinear` (GPTQ-packed int32 `qweight`, no 2-D float
`weight`), so the marker is `QuantLinear`; only the linears inside the blocks are quantized.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from evalkit.quantizers.base import DENOISER_ROLE, Backend, BuildContext, Library, Quantizer, release_device_memory

if TYPE_CHECKING:
    from evalkit.families.base import Component

LIBRARY = Library("auto-round", "auto-round", "auto_round", "AutoRound", 8, "#882255", layer_marker="QuantLinear",
                  versioned=("auto-round",), quant_methods=("auto-round",))

CACHE_VERSION = "1"  # bump when what is written for the same inputs would change
# Options that are auto-round's own quantization arguments (the rest: `backend`, the inference kernel diffusers picks)
QUANT_OPTIONS = ("scheme", "bits", "group_size", "sym", "iters", "nsamples", "seed", "calib_num_inference_steps",
                 "lr", "minmax_lr", "batch_size")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version(LIBRARY.pip_name)
    except metadata.PackageNotFoundError:
        return "unknown"


def calibration_settings(ctx: BuildContext) -> dict[str, Any]:
    """Everything the quantized weights depend on besides the model: recorded, and hashed into the cache key."""
    opts = {k: v for k, v in ctx.options.items() if k in QUANT_OPTIONS}
    prompts = [p.replace("\t", " ") for p in ctx.prompts]  # the calibration file is a TSV
    n = min(int(opts.get("nsamples") or len(prompts)), len(prompts))
    gen = dict(ctx.generation)
    return {"auto_round": _version(), "cache_version": CACHE_VERSION, "device": ctx.device, "options": opts,
            "nsamples": n, "prompts": prompts[:n],
            "generation": {k: gen.get(k) for k in ("height", "width", "num_inference_steps", "guidance_scale",
                                                    "max_sequence_length")}}


def cache_dir_for(ctx: BuildContext) -> tuple[Path, dict[str, Any]]:
    from evalkit.quantizers.checkpoint import content_key

    settings = calibration_settings(ctx)
    h = hashlib.sha256(json.dumps([content_key(ctx.model_path), settings], sort_keys=True).encode()).hexdigest()[:16]
    return Path(ctx.cache_dir) / "autoround" / h, settings


def quantize(ctx: BuildContext, denoiser: str, settings: Mapping[str, Any], out: Path) -> None:
    """Run auto-round on the bf16 pipeline and keep only the quantized denoiser folder under `out`."""
    from auto_round import AutoRound

    out.mkdir(parents=True)
    tsv = out / "calibration_prompts.tsv"
    tsv.write_text("id\tcaption\n" + "".join(f"{i}\t{p}\n" for i, p in enumerate(settings["prompts"])),
                   encoding="utf-8")
    opts, gen = dict(settings["options"]), settings["generation"]
    steps = int(opts.pop("calib_num_inference_steps", gen["num_inference_steps"]))
    t0 = time.perf_counter()
    ar = AutoRound(ctx.model_path, dataset=str(tsv), nsamples=settings["nsamples"], device_map=ctx.device,
                   enable_torch_compile=False, generator_seed=int(opts.get("seed", 0)),
                   num_inference_steps=gen["num_inference_steps"], calib_num_inference_steps=steps,
                   guidance_scale=gen["guidance_scale"],
                   pipeline_call_kwargs={k: gen[k] for k in ("height", "width", "max_sequence_length")
                                         if gen.get(k) is not None},
                   **{"batch_size": 1, "seed": 0, **{k: v for k, v in opts.items() if k != "nsamples"}})
    ar.quantize_and_save(output_dir=str(out / "pipeline"), format="auto_round")
    seconds = time.perf_counter() - t0
    qdir = out / "pipeline" / denoiser
    # auto-round 0.16.1 saves the denoiser as model*.safetensors and renames files in the pipeline folder instead of
    # in it; diffusers looks for diffusion_pytorch_model*.safetensors. Do the rename auto-round meant to do.
    if not any(qdir.glob("diffusion_pytorch_model*.safetensors")) and any(qdir.glob("model*.safetensors")):
        from auto_round.utils.model import rename_weights_files

        rename_weights_files(str(qdir))
    shutil.move(str(qdir), str(out / denoiser))
    shutil.rmtree(out / "pipeline")  # the other components are the bf16 model's own: the run loads those
    qcfg = json.loads((out / denoiser / "config.json").read_text(encoding="utf-8")).get("quantization_config")
    (out / "calibration.json").write_text(json.dumps({**settings, "seconds": seconds,
                                                      "quantization_config": qcfg}, indent=1, sort_keys=True),
                                          encoding="utf-8")


# auto-round's pure-torch kernels (auto_round_extension/torch/qlinear_torch*.py: its CPU route without the
# auto-round-lib package) unpack and scale the weights, then cast them to the input's dtype and matmul in it: any
# float dtype works. Their BackendInfo lists float16/bfloat16 only, and auto-round's post_init casts a float32 model
# to bf16, which diffusers refuses for a quantized model ("Casting a quantized model to a new `dtype` is
# unsupported"). So on a float32 plan the list is widened while the component loads, then put back.
TORCH_KERNELS = ("auto_round:torch", "auto_round:torch_zp")
TORCH_KERNELS_WHY = ("auto-round's torch kernels compute in their input's dtype but list only float16/bfloat16; "
                     "evalkit lets them take the run's planned dtype while loading (evalkit/quantizers/autoround.py)")


@contextlib.contextmanager
def _torch_kernels_accept(dtype: str) -> Iterator[list[str]]:
    """While open, auto-round's torch kernels accept `dtype` as a compute dtype. Yields the kernels widened."""
    from auto_round.inference.backend import BackendInfos

    widened = [k for k in TORCH_KERNELS if k in BackendInfos and dtype not in BackendInfos[k].compute_dtype]
    saved = {k: BackendInfos[k].compute_dtype for k in widened}
    for k in widened:
        BackendInfos[k].compute_dtype = [*saved[k], dtype]
    try:
        yield widened
    finally:
        for k, v in saved.items():
            BackendInfos[k].compute_dtype = v


class AutoRoundQuantizer(Quantizer):
    library = LIBRARY

    def prepare(self, backend: Backend, ctx: BuildContext) -> dict[str, Any] | None:
        from evalkit.families.base import build_cached
        from evalkit.families.registry import get_family

        denoiser = get_family(ctx.family).denoiser.name
        target, settings = cache_dir_for(ctx)
        t0 = time.perf_counter()
        made = not (target / ".evalkit-complete").exists()
        build_cached(target, lambda tmp: quantize(ctx, denoiser, settings, tmp))
        if made:
            release_device_memory()  # auto-round's pipeline and cached activations are not the backend's memory
        cal = json.loads((target / "calibration.json").read_text(encoding="utf-8"))
        return {"what": f"AutoRound {settings['options'].get('scheme', 'W4A16')} calibration (SignRound, "
                        f"{settings['options'].get('iters')} iterations a block) on the study's first "
                        f"{settings['nsamples']} prompts, run by auto-round {settings['auto_round']}",
                "path": str(target), "cached": not made, "seconds": time.perf_counter() - t0,
                "calibration_seconds": cal.get("seconds"), "settings": {k: v for k, v in settings.items()
                                                                        if k != "prompts"},
                "quantization_config": cal.get("quantization_config")}

    def load_component(self, backend: Backend, component: "Component", ctx: BuildContext, family: Any,
                       info: dict[str, Any]) -> Any:
        target, _ = cache_dir_for(ctx)
        folder = target / component.name
        q = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("quantization_config")
        info["resolved_config"] = {component.name: {"class": "diffusers.AutoRoundConfig", "config": q}}
        info["autoround_checkpoint"] = str(folder)
        return self.load_checkpoint(backend, component, ctx, family, info, {"path": str(folder)})

    def load_checkpoint(self, backend: Backend, component: "Component", ctx: BuildContext, family: Any,
                        info: dict[str, Any], checkpoint: Mapping[str, Any]) -> Any:
        from diffusers import AutoRoundConfig

        from evalkit.quantizers.checkpoint import load_folder_component

        # The kernel diffusers/auto-round use to run the packed weights ("auto": torch on CPU, Triton or Marlin on
        # CUDA); the quantization itself comes from the checkpoint's config.json.
        kernel = str(ctx.options.get("backend", "auto"))
        # The layers auto-round left unquantized (embedders, proj_out) take the run's planned dtype, so the whole
        # transformer computes as the reference does (float32 for the tiny model on a CPU without native bf16).
        dtype = ctx.compute_dtype(component.name)
        dtype_name = str(dtype).replace("torch.", "")
        with _torch_kernels_accept(dtype_name) as widened:
            model = load_folder_component(checkpoint["path"], ctx.model_path, component.name, ctx.device,
                                          dtype=dtype, quantization_config=AutoRoundConfig(backend=kernel))
        if widened:
            info["autoround_compute_dtype"] = {"dtype": dtype_name, "widened_kernels": widened,
                                               "why": TORCH_KERNELS_WHY}
        info["autoround_kernels"] = repr(getattr(getattr(model, "hf_quantizer", None), "used_backends", None))
        return model


BACKENDS = (
    Backend("autoround-w4a16", LIBRARY, "AutoRound W4A16 (int4 weights, group 128, symmetric, SignRound-tuned on "
            "the study's own prompts; block linears only)", kind="W4A16", roles=(DENOISER_ROLE,),
            supported_roles=(DENOISER_ROLE,), in_seed_study=False, in_default=False,
            options=MappingProxyType({"scheme": "W4A16", "group_size": 128, "sym": True, "iters": 200,
                                      "backend": "auto"})),
)
QUANTIZER = AutoRoundQuantizer()

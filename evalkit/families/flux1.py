"""Which Flux pipeline to load: a hub id from the local cache, a local directory, `tiny`, or `random:flux-dev`.

evalkit never downloads: a hub id resolves from the local Hugging Face cache only, and a missing
model gives an error that says how to supply it.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError, MissingWeightsError
from evalkit.io import file_lock
from evalkit.paths import cache_dir
from evalkit.clip_tokenizer import build_clip_tokenizer, clip_bpe_path  # noqa: F401 (re-exported)

DEFAULT_MODEL = "black-forest-labs/FLUX.1-dev"
TINY_VERSION = "tiny-flux-v1"
RANDOM_FLUX_DEV_VERSION = "random-flux-dev-v1"

# FLUX.1-dev's public configs (shared/notes/anchors.md). Shapes, not weights, decide memory and latency.
FLUX_DEV_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
FLUX_DEV_T5 = dict(
    d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128,
    feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6, dense_act_fn="gelu_new", is_gated_act=True,
)
FLUX_DEV_CLIP = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, vocab_size=49408, projection_dim=768, hidden_act="quick_gelu",
)
FLUX_DEV_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
)

# Small enough to run every CPU backend in seconds; inner width 256 so GGUF K-quants (256-blocks) apply.
TINY_TRANSFORMER = dict(
    patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=64, num_attention_heads=4,
    joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=True, axes_dims_rope=(16, 24, 24),
)
TINY_T5 = dict(d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, vocab_size=32128,
               feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True,
               relative_attention_num_buckets=32, relative_attention_max_distance=128)
TINY_CLIP = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=77, vocab_size=49408, projection_dim=64, hidden_act="quick_gelu")
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 64), layers_per_block=1,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=32,
                scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                 base_image_seq_len=256, max_image_seq_len=4096)


@dataclass(frozen=True)
class GenerationDefaults:
    height: int
    width: int
    num_inference_steps: int
    guidance_scale: float
    max_sequence_length: int


# The seed study's settings for real Flux; tiny ones for the embedded model.
FLUX_DEFAULTS = GenerationDefaults(1024, 1024, 50, 3.5, 512)
TINY_DEFAULTS = GenerationDefaults(128, 128, 4, 3.5, 64)


@dataclass(frozen=True)
class ModelInfo:
    spec: str
    kind: str  # "tiny" | "random" | "hub" | "local"
    path: str
    random_weights: bool
    quality_meaningful: bool
    defaults: GenerationDefaults
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_manifest(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("defaults")
        return d


def classify_model_spec(spec: str) -> str:
    """'tiny' | 'random' | 'local' | 'hub', without touching the disk beyond an existence check."""
    if spec == "tiny":
        return "tiny"
    if spec.startswith("random:"):
        return "random"
    if os.path.exists(os.path.expanduser(spec)) or spec.startswith(("/", "./", "../", "~", ".")):
        return "local"
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        return "hub"
    raise EvalkitError(
        f"--model {spec!r}: not a model. Use a Hugging Face id (e.g. {DEFAULT_MODEL}), a local diffusers directory, "
        "'tiny' or 'random:flux-dev'"
    )


def resolve_model(spec: str, device: str = "cpu", build: bool = True) -> ModelInfo:
    """Find (or, for tiny/random, build and cache) the pipeline directory for `spec`."""
    kind = classify_model_spec(spec)
    if kind == "tiny":
        path = ensure_tiny_pipeline() if build else cache_dir() / "models" / TINY_VERSION
        return ModelInfo(spec, "tiny", str(path), False, True, TINY_DEFAULTS,
                         note="embedded tiny Flux pipeline built from configs with seeded random weights; for tests and demos")
    if kind == "random":
        name = spec.split(":", 1)[1]
        if name != "flux-dev":
            raise EvalkitError(f"--model {spec!r}: unknown random architecture {name!r}; the only one is 'random:flux-dev'")
        path = ensure_random_flux_dev(device) if build else cache_dir() / "models" / RANDOM_FLUX_DEV_VERSION
        return ModelInfo(spec, "random", str(path), True, False, FLUX_DEFAULTS,
                         note="full-size FLUX.1-dev architecture with RANDOM weights: memory and latency are real, "
                              "images carry no quality information")
    if kind == "local":
        path = Path(os.path.expanduser(spec))
        if not path.exists():
            raise EvalkitError(f"--model {spec}: model directory not found")
        if not (path / "model_index.json").exists():
            raise EvalkitError(f"--model {spec}: not a diffusers pipeline directory (no model_index.json in {path})")
        return ModelInfo(spec, "local", str(path.resolve()), False, True, FLUX_DEFAULTS)
    return ModelInfo(spec, "hub", str(resolve_hub_model(spec)), False, True, FLUX_DEFAULTS)


def resolve_hub_model(repo_id: str) -> Path:
    """The local snapshot of a hub model, from the HF cache only (HF_HOME / HF_HUB_CACHE are honoured)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - a dependency of diffusers
        raise EvalkitError(f"huggingface_hub is not installed ({e})") from None
    try:
        path = snapshot_download(repo_id, local_files_only=True)
    except Exception as e:  # LocalEntryNotFoundError, GatedRepoError, ... all mean "not here"
        from huggingface_hub import constants

        raise MissingWeightsError(
            f"--model {repo_id}: not in the local Hugging Face cache ({constants.HF_HUB_CACHE}); evalkit never downloads. "
            f"On a machine with access run `hf download {repo_id}` (set HF_HOME to share the cache), "
            f"or pass --model /path/to/a/diffusers/dir. [{type(e).__name__}]"
        ) from None
    if not (Path(path) / "model_index.json").exists():
        raise EvalkitError(f"--model {repo_id}: cached snapshot {path} has no model_index.json (incomplete download?)")
    return Path(path)


def _build_cached(target: Path, builder: Any) -> Path:
    """Build into a temp dir then rename, so a killed build never leaves a half model that looks complete."""
    marker = target / ".evalkit-complete"
    if marker.exists():
        return target
    with file_lock(target):
        if marker.exists():
            return target
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        builder(tmp)
        (tmp / ".evalkit-complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def build_t5_tokenizer() -> Any:
    """A word-level unigram tokenizer in T5's format. Real T5's SentencePiece model cannot be had offline; for random
    or tiny weights only the sequence length matters, and Flux pads T5 input to max_sequence_length anyway."""
    import gzip
    import math

    from transformers import T5Tokenizer

    words: list[str] = []
    seen: set[str] = set()
    for line in gzip.open(clip_bpe_path()).read().decode("utf-8").split("\n")[1:]:
        parts = line.split()
        if len(parts) == 2 and parts[1].endswith("</w>"):
            w = (parts[0] + parts[1][:-4])
            if w.isalpha() and w.isascii() and w not in seen:
                seen.add(w)
                words.append(w)
        if len(words) >= 30000:
            break
    chars = [chr(c) for c in range(33, 127)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -10.0) for c in chars] + [("\u2581" + c, -9.0) for c in chars]
    pieces += [("\u2581" + w, -3.0 - math.log1p(i)) for i, w in enumerate(words)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def build_pipeline_components(transformer_cfg: dict, t5_cfg: dict, clip_cfg: dict, vae_cfg: dict) -> dict[str, Any]:
    """Instantiate the five components of a FluxPipeline from configs (weights from the current torch RNG)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    return dict(
        transformer=FluxTransformer2DModel(**transformer_cfg),
        text_encoder=CLIPTextModel(CLIPTextConfig(**clip_cfg)),
        text_encoder_2=T5EncoderModel(T5Config(**t5_cfg)),
        vae=AutoencoderKL(**vae_cfg),
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
        tokenizer=build_clip_tokenizer(),
        tokenizer_2=build_t5_tokenizer(),
    )


def _save_pipeline(components: dict[str, Any], out: Path) -> None:
    from diffusers import FluxPipeline

    FluxPipeline(**components).save_pretrained(out, safe_serialization=True)


def ensure_tiny_pipeline() -> Path:
    """The embedded tiny Flux pipeline, built once from configs with seed 0 and cached on disk."""

    def build(out: Path) -> None:
        import torch

        torch.manual_seed(0)
        comps = build_pipeline_components(TINY_TRANSFORMER, TINY_T5, TINY_CLIP, TINY_VAE)
        _save_pipeline(comps, out)

    return _build_cached(cache_dir() / "models" / TINY_VERSION, build)


def ensure_random_flux_dev(device: str) -> Path:
    """Full-size FLUX.1-dev with random bf16 weights, created on the GPU (fast) and saved once (~31 GiB on disk) so
    quantize-on-load backends can read it like real weights."""
    target = cache_dir() / "models" / RANDOM_FLUX_DEV_VERSION

    def build(out: Path) -> None:
        import torch

        if not torch.cuda.is_available():
            raise EvalkitError("random:flux-dev is built on a CUDA GPU (12B parameters); none is available here. "
                               "Use --model tiny on CPU")
        torch.manual_seed(0)
        prev = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            with torch.device("cuda"):
                comps = build_pipeline_components(FLUX_DEV_TRANSFORMER, FLUX_DEV_T5, FLUX_DEV_CLIP, FLUX_DEV_VAE)
        finally:
            torch.set_default_dtype(prev)
        with torch.no_grad():
            # Default init of 57 stacked blocks overflows bf16 within a few steps; halving keeps 50 steps finite.
            for name in ("transformer", "text_encoder_2"):
                for p in comps[name].parameters():
                    p.mul_(0.5)
        _save_pipeline(comps, out)
        del comps
        torch.cuda.empty_cache()

    if not (target / ".evalkit-complete").exists() and device == "cpu":
        raise EvalkitError("random:flux-dev needs a CUDA device to build and run (--device cuda); use --model tiny on CPU")
    return _build_cached(target, build)

"""A toy model family, registered from this one test-only module: what adding a family takes.

PixArt-Sigma's pipeline (a DiT with a T5 encoder and a DPM-Solver scheduler) at toy widths: a family unlike FLUX.1 in
its pipeline, its call arguments (true CFG with a negative prompt, resolution binning off) and its components.
Loaded with `--plugin tests/toy_family.py`, it registers itself on import.
"""

from __future__ import annotations

from types import MappingProxyType as Frozen
from typing import Any, Mapping

from evalkit.families.base import (DENOISER, DIFFUSERS, TEXT_ENCODER, TRANSFORMERS, VAE, Component, GenerationDefaults,
                                   ModelFamily, Tokenizer, Variant)
from evalkit.families.registry import register_family, unregister_family

TINY = Frozen({
    "transformer": dict(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=32, num_attention_heads=2,
                        in_channels=4, out_channels=8, cross_attention_dim=64, caption_channels=64,
                        norm_type="ada_norm_single", use_additional_conditions=False),
    "text_encoder": dict(d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, vocab_size=32128,
                         feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True),
    "vae": dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                norm_num_groups=32),
})


def build_modules(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    from diffusers import AutoencoderKL, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    return dict(transformer=PixArtTransformer2DModel(**configs["transformer"]),
                text_encoder=T5EncoderModel(T5Config(**configs["text_encoder"])),
                vae=AutoencoderKL(**configs["vae"]))


def build_extras() -> dict[str, Any]:
    from diffusers import DPMSolverMultistepScheduler

    from evalkit.families.tokenizers import build_t5_tokenizer

    return dict(tokenizer=build_t5_tokenizer(), scheduler=DPMSolverMultistepScheduler())


def call_arguments(gen: Mapping[str, Any]) -> dict[str, Any]:
    return dict(height=gen["height"], width=gen["width"], num_inference_steps=gen["num_inference_steps"],
                guidance_scale=gen["guidance_scale"], negative_prompt=gen.get("negative_prompt"),
                max_sequence_length=gen["max_sequence_length"], use_resolution_binning=False)


FAMILY = ModelFamily(
    key="toy-pixart", display="Toy PixArt", pipeline_class="PixArtSigmaPipeline",
    components=(Component("transformer", DENOISER, DIFFUSERS, quantized=True),
                Component("text_encoder", TEXT_ENCODER, TRANSFORMERS, quantized=True),
                Component("vae", VAE, DIFFUSERS)),
    variants=(Variant("toy-pixart-base", "example/toy-pixart", GenerationDefaults(64, 64, 3, 4.5, 64, ""), TINY,
                      {}, "toy widths; no published model"),),
    tiny_defaults=GenerationDefaults(64, 64, 3, 4.5, 64, ""),
    tiny_configs=TINY, build_modules=build_modules, build_extras=build_extras, call_arguments=call_arguments,
    tokenizers=(Tokenizer("tokenizer", "t5", None),),
)


def register() -> None:
    register_family(FAMILY, replace=True)


def unregister() -> None:
    unregister_family(FAMILY.key)


if __name__.startswith("evalkit_plugin_"):  # loaded with --plugin: register on import
    register()

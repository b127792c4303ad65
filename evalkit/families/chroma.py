"""Chroma (lodestones, 2025): `ChromaPipeline`, an 8.9B MM-DiT derived from FLUX.1-schnell (its modulation MLPs
replaced by one small "distilled guidance" approximator), with FLUX.1's T5-XXL encoder (no CLIP) and VAE, run with
true classifier-free guidance and a negative prompt.

Variant: chroma = lodestones/Chroma1-HD, the checkpoint diffusers' documentation uses.

Configs:
- transformer: Chroma1-HD transformer/config.json (as cloned in TensorStack/Chroma1-HD-ts; equal to
  ChromaTransformer2DModel's defaults: 19 double + 38 single blocks, 24 heads x 128, approximator 64 -> 5120 x 5
  layers; its extra keys guidance_embeds/pooled_projection_dim are ignored by the class).
- text_encoder and vae: FLUX.1's T5 v1.1 XXL encoder and AutoencoderKL, the very configs (diffusers-format Chroma
  repos were assembled from FLUX.1-dev's components), reused from evalkit/families/flux1.py.
- scheduler: FLUX.1-dev's config (Chroma1-HD's scheduler_config.json was not read). ChromaPipeline always passes mu
  from calculate_shift, which acts with use_dynamic_shifting=True.

Call (ChromaPipeline.__call__): `guidance_scale` > 1 is true CFG: the transformer runs twice per step (conditional,
then unconditional with the negative prompt; not batched). T5 runs with the attention mask and the transformer
masks all but the first padding token. Defaults: the diffusers docs' Chroma1-HD example
(docs/source/en/api/pipelines/chroma.md): 40 steps, guidance 3.0, that negative prompt, max_sequence_length 512,
1024² (the pipeline's default size). The pipeline's own defaults are 35 steps, guidance 5.0.

Generator: one CPU torch.Generator per prompt (the docs' example uses torch.Generator("cpu")). Regional compilation:
ChromaTransformer2DModel._repeated_blocks = (ChromaTransformerBlock, ChromaSingleTransformerBlock). GGUF: single-file
loadable; diffusers key names load without conversion, original ones go through diffusers'
convert_chroma_transformer_checkpoint_to_diffusers. K-quants leave x_embedder and distilled_guidance_layer.in_proj
(in_features 64) in bf16.
"""

from __future__ import annotations

from types import MappingProxyType as Frozen
from typing import Any, Mapping

from evalkit.families import flux1
from evalkit.families.base import (DENOISER, DIFFUSERS, TEXT_ENCODER, TRANSFORMERS, VAE, Component, GenerationDefaults,
                                   GGUFSupport, ModelFamily, Tokenizer, Variant, build_named, pipeline_arguments)

TRANSFORMER = dict(patch_size=1, in_channels=64, out_channels=None, num_layers=19, num_single_layers=38,
                   attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                   axes_dims_rope=(16, 56, 56), approximator_num_channels=64, approximator_hidden_dim=5120,
                   approximator_layers=5)
FULL = Frozen({"transformer": TRANSFORMER, "text_encoder": flux1.T5, "vae": flux1.FLUX_VAE})

# Tiny: inner width 256 (2 heads x 128) so every block Linear has in_features a multiple of 256 (K-quants apply as at
# full size); in_channels 64 = 16 latent channels x 2x2 packing and the approximator's input width 64, as real.
TINY = Frozen({
    "transformer": dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=128,
                        num_attention_heads=2, joint_attention_dim=256, axes_dims_rope=(16, 56, 56),
                        approximator_num_channels=64, approximator_hidden_dim=256, approximator_layers=2),
    "text_encoder": dict(vocab_size=32128, d_model=256, d_ff=256, d_kv=64, num_heads=4, num_layers=2,
                         feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True,
                         relative_attention_num_buckets=32, relative_attention_max_distance=128,
                         layer_norm_epsilon=1e-6),
    "vae": dict(flux1.FLUX_VAE, latent_channels=16, block_out_channels=(32, 32, 64), layers_per_block=1,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3),
})

NEGATIVE_PROMPT = ("low quality, ugly, unfinished, out of focus, deformed, disfigure, blurry, smudged, restricted "
                   "palette, flat colors")

# Published sizes (what the checkpoint holds; the meta test checks within 0.5%):
# - transformer: lodestones/Chroma1-HD Chroma1-HD.safetensors, 17,800,038,288 bytes bf16 in the Hub's listing (the
#   JSON header included, < 0.001%); the card's "8.9B parameter" agrees.
# - text_encoder and vae: FLUX.1's, the same figures as flux1.DEV_PARAMS.
PARAMS = Frozen({"transformer": 17_800_038_288 // 2, "text_encoder": flux1.DEV_PARAMS["text_encoder_2"],
                 "vae": flux1.DEV_PARAMS["vae"]})


def build_modules(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    from diffusers import AutoencoderKL, ChromaTransformer2DModel

    return build_named(configs, dict(transformer=lambda c: ChromaTransformer2DModel(**c),
                                     text_encoder=flux1.build_t5_encoder,
                                     vae=lambda c: AutoencoderKL(**c)))


def build_extras() -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from evalkit.families.tokenizers import build_t5_tokenizer

    return dict(scheduler=FlowMatchEulerDiscreteScheduler(**flux1.SCHEDULER), tokenizer=build_t5_tokenizer())


def call_arguments(gen: Mapping[str, Any]) -> dict[str, Any]:
    """True CFG with the negative prompt (the run's; the docs' by default): two transformer passes per step."""
    return pipeline_arguments(gen, negative_prompt=True)


FAMILY = ModelFamily(
    key="chroma",
    display="Chroma",
    pipeline_class="ChromaPipeline",
    components=(
        Component("transformer", DENOISER, DIFFUSERS, quantized=True,
                  note="8.9B MM-DiT (19 double + 38 single blocks, distilled-guidance approximator)"),
        Component("text_encoder", TEXT_ENCODER, TRANSFORMERS, quantized=True, note="T5 v1.1 XXL encoder (4.8B)"),
        Component("vae", VAE, DIFFUSERS, note="FLUX.1's AutoencoderKL (84M)"),
    ),
    variants=(
        Variant("chroma", "lodestones/Chroma1-HD", GenerationDefaults(1024, 1024, 40, 3.0, 512, NEGATIVE_PROMPT),
                FULL, PARAMS, "lodestones/Chroma1-HD transformer/config.json; FLUX.1's T5 and VAE configs; counts: "
                "Chroma1-HD.safetensors and FLUX.1's files in the Hub's listing (evalkit/families/chroma.py)"),
    ),
    tiny_defaults=GenerationDefaults(128, 128, 4, 3.0, 64, NEGATIVE_PROMPT),
    tiny_configs=TINY,
    build_modules=build_modules,
    build_extras=build_extras,
    call_arguments=call_arguments,
    tokenizers=(Tokenizer("tokenizer", "t5", None),),
    gguf=GGUFSupport("transformer", "chroma", original_key_markers=("double_blocks.", "single_blocks.",
                                                                   "model.diffusion_model."),
                     original_converter="convert_chroma_transformer_checkpoint_to_diffusers"),
    # FLUX.1's factor (see flux1.py) for the same 57 blocks and T5; unverified until the random build runs 40 steps
    # with CFG on a GPU with finite images.
    random_weight_scale=Frozen({"transformer": 0.5, "text_encoder": 0.5}),
    tokenizer_note="T5: a local word-level unigram (T5 pads to max_sequence_length, so only which prompts count as "
                   "truncated can differ)",
    preload_modules=("diffusers.pipelines.chroma.pipeline_chroma", "transformers.models.t5.modeling_t5"),
)

"""FLUX.1 (Black Forest Labs, 2024): `FluxPipeline`, a 12B MM-DiT with CLIP-L and T5-XXL text encoders.

Variants: FLUX.1-dev (guidance-distilled, 50 steps), FLUX.1-schnell (timestep-distilled, 4 steps, no guidance
embedding), FLUX.1-Krea-dev (a dev fine-tune with dev's architecture).

Configs: the `config.json` of each component in black-forest-labs/FLUX.1-dev and FLUX.1-schnell (also in diffusers'
scripts/convert_flux_to_diffusers.py). Defaults: each model card's example (dev: 1024², 50 steps, guidance 3.5,
max_sequence_length 512; schnell: 4 steps, guidance 0, 256; Krea-dev: 28 steps, guidance 4.5).
"""

from __future__ import annotations

from types import MappingProxyType as Frozen
from typing import Any, Mapping

from evalkit.families.base import (DENOISER, DIFFUSERS, TEXT_ENCODER, TRANSFORMERS, VAE, Component,
                                   GenerationDefaults, GGUFSupport, ModelFamily, Tokenizer, Variant)

TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
T5 = dict(
    d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128,
    feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6, dense_act_fn="gelu_new", is_gated_act=True,
)
CLIP = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, vocab_size=49408, projection_dim=768, hidden_act="quick_gelu",
)
FLUX_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
)
FULL = Frozen({"transformer": TRANSFORMER, "text_encoder": CLIP, "text_encoder_2": T5, "vae": FLUX_VAE})
SCHNELL = Frozen({**FULL, "transformer": {**TRANSFORMER, "guidance_embeds": False}})

# Small enough to run every CPU backend in seconds; inner width 256 so GGUF K-quants (256-blocks) apply.
TINY = Frozen({
    "transformer": dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=64,
                        num_attention_heads=4, joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=True,
                        axes_dims_rope=(16, 24, 24)),
    "text_encoder": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=77, vocab_size=49408, projection_dim=64, hidden_act="quick_gelu"),
    "text_encoder_2": dict(d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, vocab_size=32128,
                           feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True,
                           relative_attention_num_buckets=32, relative_attention_max_distance=128),
    "vae": dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 64), layers_per_block=1,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                norm_num_groups=32, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                use_post_quant_conv=False),
})
SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                 base_image_seq_len=256, max_image_seq_len=4096)

# Parameter counts of the released safetensors (Hugging Face's "Model size", to 0.1%); the meta test checks them.
DEV_PARAMS = Frozen({"transformer": 11_901_408_320, "text_encoder_2": 4_762_310_656, "text_encoder": 123_060_480,
                     "vae": 83_819_683})
SCHNELL_PARAMS = Frozen({**DEV_PARAMS, "transformer": 11_891_178_560})


def build_modules(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The four modules, in the order the tiny build has always drawn them from the RNG (same seed, same bytes)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    return dict(
        transformer=FluxTransformer2DModel(**configs["transformer"]),
        text_encoder=CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
        text_encoder_2=T5EncoderModel(T5Config(**configs["text_encoder_2"])),
        vae=AutoencoderKL(**configs["vae"]),
    )


def build_extras() -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from evalkit.families.tokenizers import build_clip_tokenizer, build_t5_tokenizer

    return dict(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), tokenizer=build_clip_tokenizer(),
                tokenizer_2=build_t5_tokenizer())


def call_arguments(gen: Mapping[str, Any]) -> dict[str, Any]:
    """Flux's guidance is distilled into the model (an embedding, no negative prompt); T5 is padded to
    max_sequence_length."""
    return dict(height=gen["height"], width=gen["width"], num_inference_steps=gen["num_inference_steps"],
                guidance_scale=gen["guidance_scale"], max_sequence_length=gen["max_sequence_length"])


FAMILY = ModelFamily(
    key="flux1",
    display="FLUX.1",
    pipeline_class="FluxPipeline",
    components=(
        Component("transformer", DENOISER, DIFFUSERS, quantized=True, note="12B MM-DiT"),
        Component("text_encoder", TEXT_ENCODER, TRANSFORMERS, note="CLIP ViT-L/14 text encoder (123M)"),
        Component("text_encoder_2", TEXT_ENCODER, TRANSFORMERS, quantized=True, note="T5 v1.1 XXL encoder (4.8B)"),
        Component("vae", VAE, DIFFUSERS),
    ),
    variants=(
        Variant("flux1-dev", "black-forest-labs/FLUX.1-dev", GenerationDefaults(1024, 1024, 50, 3.5, 512),
                FULL, DEV_PARAMS, "black-forest-labs/FLUX.1-dev config.json files; safetensors parameter counts",
                aliases=("flux-dev",)),
        Variant("flux1-schnell", "black-forest-labs/FLUX.1-schnell", GenerationDefaults(1024, 1024, 4, 0.0, 256),
                SCHNELL, SCHNELL_PARAMS, "black-forest-labs/FLUX.1-schnell config.json files (no guidance embedding)"),
        Variant("flux1-krea-dev", "black-forest-labs/FLUX.1-Krea-dev", GenerationDefaults(1024, 1024, 28, 4.5, 512),
                FULL, DEV_PARAMS, "black-forest-labs/FLUX.1-Krea-dev: FLUX.1-dev's architecture (model card)"),
    ),
    tiny_defaults=GenerationDefaults(128, 128, 4, 3.5, 64),
    tiny_configs=TINY,
    build_modules=build_modules,
    build_extras=build_extras,
    call_arguments=call_arguments,
    tokenizers=(Tokenizer("tokenizer", "clip", 77), Tokenizer("tokenizer_2", "t5", None)),
    gguf=GGUFSupport("transformer", "flux", original_key_markers=("double_blocks.", "single_blocks.", "model.diffusion_model."),
                     original_converter="convert_flux_transformer_checkpoint_to_diffusers"),
    # Default init of 57 stacked blocks overflows bf16 within a few steps; halving keeps 50 steps finite.
    random_weight_scale=Frozen({"transformer": 0.5, "text_encoder_2": 0.5}),
    preload_modules=("diffusers.pipelines.flux.pipeline_flux", "transformers.models.clip.modeling_clip",
                     "transformers.models.t5.modeling_t5"),
    tokenizer_note="CLIP: the real BPE (open-clip-torch's merges); T5: a local word-level unigram (T5 pads to "
                   "max_sequence_length, so only which prompts count as truncated can differ)",
)

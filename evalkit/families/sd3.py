"""Stable Diffusion 3.5 (Stability AI, 2024): `StableDiffusion3Pipeline`, an MMDiT with CLIP-L, CLIP-G and T5-XXL.

Variants: SD3.5 Large (8.1B, 38 blocks, width 2432) and SD3.5 Medium (2.5B MMDiT-X: 24 blocks, width 1536, a second
self-attention in its first 13 blocks). Both share the text encoders, VAE and scheduler (HF blog "Diffusers welcomes
Stable Diffusion 3.5 Large": they "stay exactly the same as in SD3 Medium").

Configs: transformer/config.json of stabilityai/stable-diffusion-3.5-large and -medium (official uploads "SD3.5 Large
Public Release" / "SD3.5 Medium Public Release", copies frankjoshua/stable-diffusion-3.5-large and -medium); text
encoders and VAE from the 3.5-large snapshot ceddf0a (copy ariG23498/sd-3.5-merged); scheduler: shift 3.0.

Defaults: each card's diffusers example: Large 28 steps, guidance 3.5; Medium 40 steps, guidance 4.5; 1024x1024;
classic CFG (one batched transformer call per step) with the negative prompt "" (the pipeline's default);
`max_sequence_length` 256, the pipeline's default (T5 is padded to it; up to 512 is allowed). Medium's optional
skip-layer guidance is off, as in its card's example.

Parameters: SD3's learned positional-embedding table (`pos_embed.pos_embed`, 192^2 x 2432 for Large, 384^2 x 1536 for
Medium, 10% of Medium) is a persistent buffer in diffusers, not a parameter: the checkpoint and the published figures
include it, and so do evalkit's counts (state_dict). Linear-only quantizers leave it in bf16.
"""

from __future__ import annotations

from types import MappingProxyType as Frozen
from typing import Any, Mapping

from evalkit.families import flux1
from evalkit.families.base import (DENOISER, DIFFUSERS, TEXT_ENCODER, TRANSFORMERS, VAE, Component, GenerationDefaults,
                                   GGUFSupport, ModelFamily, Tokenizer, Variant, build_named, pipeline_arguments)

LARGE = dict(
    attention_head_dim=64, caption_projection_dim=2432, in_channels=16, joint_attention_dim=4096,
    num_attention_heads=38, num_layers=38, out_channels=16, patch_size=2, pooled_projection_dim=2048,
    pos_embed_max_size=192, qk_norm="rms_norm", sample_size=128,
)
MEDIUM = dict(LARGE, caption_projection_dim=1536, num_attention_heads=24, num_layers=24, pos_embed_max_size=384,
              dual_attention_layers=tuple(range(13)))
# The text encoders and VAE are FLUX.1's layouts (evalkit/families/flux1.py) with SD3's own token ids, embeddings and
# latent scaling (the 3.5-large snapshot's config.json files).
CLIP_L = dict(flux1.CLIP, layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1)  # ViT-L/14 text tower
CLIP_G = dict(CLIP_L, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              projection_dim=1280, hidden_act="gelu")  # OpenCLIP ViT-bigG/14 text tower + projection
T5_XXL = dict(flux1.T5, tie_word_embeddings=False)  # google/t5-v1_1-xxl encoder
SD3_VAE = dict(flux1.FLUX_VAE, scaling_factor=1.5305, shift_factor=0.0609)
SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)
_ENCODERS = {"text_encoder": CLIP_L, "text_encoder_2": CLIP_G, "text_encoder_3": T5_XXL, "vae": SD3_VAE}
FULL_LARGE = Frozen({"transformer": LARGE, **_ENCODERS})
FULL_MEDIUM = Frozen({"transformer": MEDIUM, **_ENCODERS})

# Inner width 5 heads x 64 = 320, as SD3.5-Large's 2432 not a multiple of 256: GGUF K-quants (256-blocks) cannot
# take the attention weights and the converter falls back per tensor (tests check it); the feed-forward's
# 1280-wide input can. Block 0 is MMDiT-X (Medium's dual attention), block 1 Large's plain block: one tiny build
# runs both code paths. CLIP widths 32 + 32 = the pooled width 64; T5's 64 = joint_attention_dim.
_TINY_CLIP = dict(CLIP_L, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  projection_dim=32)  # 2 layers: the pipeline reads hidden_states[-2]
TINY = Frozen({
    "transformer": dict(LARGE, sample_size=16, num_layers=2, num_attention_heads=5, caption_projection_dim=320,
                        joint_attention_dim=64, pooled_projection_dim=64, pos_embed_max_size=16,
                        dual_attention_layers=(0,)),
    "text_encoder": _TINY_CLIP,
    "text_encoder_2": dict(_TINY_CLIP, hidden_act="gelu"),
    "text_encoder_3": dict(T5_XXL, d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2),
    "vae": dict(SD3_VAE, block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8),
})

# Checkpoint elements (parameters + the pos_embed buffer, tied weights once), each cited; checked within 0.5%.
_ENCODER_PARAMS = {
    # CLIP ViT-L/14's text tower, 123,060,480 (Hugging Face model size, as in the FLUX.1 record), plus its 768x768
    # text projection (no bias) that SD3 uses for the pooled embedding.
    "text_encoder": 123_060_480 + 768 * 768,
    # text_encoder_2/model.safetensors: 1.39 GB in fp16 (stable-diffusion-3.5-large listing) = 695M.
    "text_encoder_2": 695_000_000,
    # T5 v1.1 XXL encoder: Hugging Face model size, as in the FLUX.1 record.
    "text_encoder_3": 4_762_310_656,
    # The same VAE layout as FLUX.1's (16 channels, no quant convs): 83,819,683 (FLUX.1 record); vae/ is 168 MB fp16.
    "vae": 83_819_683,
}
# transformer/: shards 9.99 + 6.31 GB in bf16 (stable-diffusion-3.5-large listing, "SD3.5 Large Public Release") =
# 8.15B elements; Stability AI's "8.1B" is that rounded.
LARGE_PARAMS = Frozen({"transformer": 8_150_000_000, **_ENCODER_PARAMS})
# transformer/diffusion_pytorch_model.safetensors: 4.94 GB in bf16 (stable-diffusion-3.5-medium listing) = 2.47B;
# Stability AI's "2.5B" rounds it (its parameters alone, without the 226M pos_embed table, are 2.24B).
MEDIUM_PARAMS = Frozen({"transformer": 2_470_000_000, **_ENCODER_PARAMS})


def build_modules(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return build_named(configs, dict(
        transformer=lambda c: SD3Transformer2DModel(**c),
        text_encoder=lambda c: CLIPTextModelWithProjection(CLIPTextConfig(**c)).eval(),
        text_encoder_2=lambda c: CLIPTextModelWithProjection(CLIPTextConfig(**c)).eval(),
        text_encoder_3=lambda c: flux1.build_t5_encoder(c).eval(),
        vae=lambda c: AutoencoderKL(**c),
    ))


def build_extras() -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from evalkit.families.tokenizers import build_clip_tokenizer, build_t5_tokenizer

    clip_g = build_clip_tokenizer()
    clip_g.pad_token = "!"  # SD3's CLIP-G tokenizer pads with "!" (its tokenizer_2/special_tokens_map.json)
    return dict(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), tokenizer=build_clip_tokenizer(),
                tokenizer_2=clip_g, tokenizer_3=build_t5_tokenizer(), image_encoder=None, feature_extractor=None)


def call_arguments(gen: Mapping[str, Any]) -> dict[str, Any]:
    """Classic CFG (guidance_scale > 1) with the negative prompt, batched with the prompt in one transformer call."""
    return pipeline_arguments(gen, negative_prompt=True)


FAMILY = ModelFamily(
    key="sd3.5",
    display="SD3.5",
    pipeline_class="StableDiffusion3Pipeline",
    components=(
        Component("transformer", DENOISER, DIFFUSERS, quantized=True,
                  note="MMDiT: 8.1B (Large) / 2.5B MMDiT-X (Medium), positional table included"),
        Component("text_encoder", TEXT_ENCODER, TRANSFORMERS, note="CLIP ViT-L/14 text encoder (124M)"),
        Component("text_encoder_2", TEXT_ENCODER, TRANSFORMERS, note="OpenCLIP ViT-bigG/14 text encoder (695M)"),
        Component("text_encoder_3", TEXT_ENCODER, TRANSFORMERS, quantized=True,
                  note="T5 v1.1 XXL encoder (4.8B; an encoder, not an LLM)"),
        Component("vae", VAE, DIFFUSERS),
    ),
    variants=(
        Variant("sd3.5-large", "stabilityai/stable-diffusion-3.5-large",
                GenerationDefaults(1024, 1024, 28, 3.5, 256, ""), FULL_LARGE, LARGE_PARAMS,
                "stabilityai/stable-diffusion-3.5-large config.json files (copies named in evalkit/families/sd3.py); "
                "counts: Hub file sizes, Hugging Face model sizes"),
        Variant("sd3.5-medium", "stabilityai/stable-diffusion-3.5-medium",
                GenerationDefaults(1024, 1024, 40, 4.5, 256, ""), FULL_MEDIUM, MEDIUM_PARAMS,
                "stabilityai/stable-diffusion-3.5-medium config.json files (copies named in evalkit/families/sd3.py); "
                "counts: Hub file sizes, Hugging Face model sizes"),
    ),
    tiny_defaults=GenerationDefaults(128, 128, 4, 3.5, 64, ""),
    tiny_configs=TINY,
    build_modules=build_modules,
    build_extras=build_extras,
    call_arguments=call_arguments,
    # tokenizer_2 (CLIP-G) has CLIP-L's BPE and 77-token limit: the same counts, not listed twice
    tokenizers=(Tokenizer("tokenizer", "clip", 77), Tokenizer("tokenizer_3", "t5", None)),
    size_multiple=16,
    tiny_size_multiple=16,
    gguf=GGUFSupport("transformer", "sd3", original_key_markers=("joint_blocks.", "model.diffusion_model."),
                     original_converter="convert_sd3_transformer_checkpoint_to_diffusers"),
    # SD3Transformer2DModel declares no _repeated_blocks; its 38 (24) JointTransformerBlocks are the repeated region.
    compile_blocks=("JointTransformerBlock",),
    random_weight_scale=Frozen({"transformer": 0.5, "text_encoder_3": 0.5}),
    tokenizer_note="CLIP (both): the real BPE (open-clip-torch's merges); T5: a local word-level unigram (T5 pads to "
                   "max_sequence_length, so only which prompts count as truncated can differ)",
    preload_modules=("diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3",
                     "transformers.models.clip.modeling_clip", "transformers.models.t5.modeling_t5"),
)

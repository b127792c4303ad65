"""FLUX.1 (Black Forest Labs, 2024): `FluxPipeline`, a 12B MM-DiT with CLIP-L and T5-XXL text encoders.

Variants: FLUX.1-dev (guidance-distilled, 50 steps), FLUX.1-schnell (timestep-distilled, 4 steps, no guidance
embedding), FLUX.1-Krea-dev (a dev fine-tune with dev's architecture).

Configs: the `config.json` of each component in black-forest-labs/FLUX.1-dev and FLUX.1-schnell (also in diffusers'
scripts/convert_flux_to_diffusers.py); schnell differs only in `guidance_embeds: false` and its scheduler (shift 1.0,
no dynamic shifting). Krea-dev: FLUX.1-dev's architecture (BFL model_cards/FLUX.1-Krea-dev.md: the same 12B
guidance-distilled rectified flow transformer; krea-ai/flux-krea runs it with the FLUX.1 code).

Defaults, each from the variant's own card or reference script:
- dev: 1024², 50 steps, guidance 3.5, max_sequence_length 512 (the FLUX.1-dev card's diffusers example);
- schnell: 1024², 4 steps, guidance 0.0, max_sequence_length 256 (the FLUX.1-schnell card's diffusers example;
  diffusers' docs: "max_sequence_length cannot be more than 256, guidance_scale needs to be 0");
- Krea-dev: 1024², 28 steps, guidance 4.5, max_sequence_length 512 (krea-ai/flux-krea inference.py defaults; its
  README recommends 28-32 steps, guidance 3.5-5.0).

Generator: evalkit passes one CPU `torch.Generator` per prompt; FluxPipeline draws the latents with `randn_tensor` on
the CPU generator, so a seed gives the same starting noise on any device. Regional compilation:
`FluxTransformer2DModel._repeated_blocks` (FluxTransformerBlock, FluxSingleTransformerBlock). GGUF: the transformer
is single-file loadable; a file with diffusers' key names loads without conversion, one with BFL's/city96's names
is mapped by diffusers' converter.
"""

from __future__ import annotations

from types import MappingProxyType as Frozen
from typing import Any, Mapping

from evalkit.families.base import (DENOISER, DIFFUSERS, TEXT_ENCODER, TRANSFORMERS, VAE, Component, GenerationDefaults,
                                   GGUFSupport, ModelFamily, Tokenizer, Variant, build_named, pipeline_arguments)

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
# FLUX.1-dev's scheduler_config.json. Tiny and random builds of every variant get it (build_extras is per family):
# schnell's own (shift 1.0, no dynamic shifting) changes the sigmas, not the work per step, and random builds measure
# only memory and latency; a real schnell snapshot loads its own.
SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                 base_image_seq_len=256, max_image_seq_len=4096)

# Published sizes of the released checkpoints, as parameter counts (the meta-device test compares what each config
# builds -- parameters plus persistent buffers, tied tensors once -- within 0.5%). Byte figures are the Hugging Face
# Hub's file listings (quoted verbatim in public download manifests; evalkit never downloads). A safetensors index's
# `total_size` is the tensor bytes alone; a single file's size also holds its JSON header (tens of kB, < 0.03% here).
# The cards' "12 billion parameter" is a rounded name, 0.8% off, too coarse to test against.
# - transformer: `total_size` of transformer/diffusion_pytorch_model.safetensors.index.json, bf16: FLUX.1-dev
#   23,802,816,640 bytes, FLUX.1-schnell 23,782,357,120 (exo-explore/exo src/exo/shared/models/model_cards.py,
#   _IMAGE_BASE_MODEL_CARDS, which lists FLUX.1-Krea-dev with dev's figure). Schnell is 10.2M smaller: no guidance
#   embedder.
# - text_encoder_2 (T5 v1.1 XXL encoder): `total_size` of text_encoder_2/model.safetensors.index.json, 9,524,621,312
#   bytes bf16 (same source).
# - text_encoder (CLIP ViT-L/14 text tower): comfyanonymous/flux_text_encoders clip_l.safetensors, 246,144,152 bytes
#   fp16 (the tower FLUX.1 ships as text_encoder/).
# - vae: black-forest-labs/FLUX.1-dev ae.safetensors (BFL's format of the same autoencoder), 335,304,388 bytes fp32.
DEV_PARAMS = Frozen({"transformer": 23_802_816_640 // 2, "text_encoder_2": 9_524_621_312 // 2,
                     "text_encoder": 246_144_152 // 2, "vae": 335_304_388 // 4})
SCHNELL_PARAMS = Frozen({**DEV_PARAMS, "transformer": 23_782_357_120 // 2})
PARAMS_SOURCE = ("HF Hub file sizes: transformer and T5 index total_size (bf16), clip_l.safetensors (fp16), "
                 "ae.safetensors (fp32); see evalkit/families/flux1.py")


def build_t5_encoder(config: Mapping[str, Any]) -> Any:
    """A T5 v1.1 encoder from its config: FLUX.1's text_encoder_2, reused by the families that take FLUX.1's T5
    (Chroma's text_encoder, SD3.5's text_encoder_3)."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**config))


def build_modules(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The four modules, in the order the tiny build has always drawn them from the RNG (same seed, same bytes)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    return build_named(configs, dict(
        transformer=lambda c: FluxTransformer2DModel(**c),
        text_encoder=lambda c: CLIPTextModel(CLIPTextConfig(**c)),
        text_encoder_2=build_t5_encoder,
        vae=lambda c: AutoencoderKL(**c),
    ))


def build_extras() -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from evalkit.families.tokenizers import build_clip_tokenizer, build_t5_tokenizer

    return dict(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), tokenizer=build_clip_tokenizer(),
                tokenizer_2=build_t5_tokenizer())


def call_arguments(gen: Mapping[str, Any]) -> dict[str, Any]:
    """Flux's guidance is distilled into the model (an embedding, no negative prompt); T5 is padded to
    max_sequence_length."""
    return pipeline_arguments(gen)


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
                FULL, DEV_PARAMS, f"black-forest-labs/FLUX.1-dev config.json files; {PARAMS_SOURCE}",
                aliases=("flux-dev",)),
        Variant("flux1-schnell", "black-forest-labs/FLUX.1-schnell", GenerationDefaults(1024, 1024, 4, 0.0, 256),
                SCHNELL, SCHNELL_PARAMS, "black-forest-labs/FLUX.1-schnell config.json files (no guidance "
                f"embedding); {PARAMS_SOURCE}"),
        Variant("flux1-krea-dev", "black-forest-labs/FLUX.1-Krea-dev", GenerationDefaults(1024, 1024, 28, 4.5, 512),
                FULL, DEV_PARAMS, "black-forest-labs/FLUX.1-Krea-dev: FLUX.1-dev's architecture (BFL model card); "
                "defaults from krea-ai/flux-krea inference.py; parameter counts are dev's"),
    ),
    tiny_defaults=GenerationDefaults(128, 128, 4, 3.5, 64),
    tiny_configs=TINY,
    build_modules=build_modules,
    build_extras=build_extras,
    call_arguments=call_arguments,
    tokenizers=(Tokenizer("tokenizer", "clip", 77), Tokenizer("tokenizer_2", "t5", None)),
    gguf=GGUFSupport("transformer", "flux",
                     original_key_markers=("double_blocks.", "single_blocks.", "model.diffusion_model."),
                     original_converter="convert_flux_transformer_checkpoint_to_diffusers"),
    # Default init of 57 stacked blocks overflows bf16 within a few steps; halving keeps 50 steps finite (the
    # random FLUX.1-dev rows of benchmarks/results/flux-dev-random-h200.md were made with it). The other families
    # start from this factor, unverified until their random builds run on a GPU.
    random_weight_scale=Frozen({"transformer": 0.5, "text_encoder_2": 0.5}),
    preload_modules=("diffusers.pipelines.flux.pipeline_flux", "transformers.models.clip.modeling_clip",
                     "transformers.models.t5.modeling_t5"),
    tokenizer_note="CLIP: the real BPE (open-clip-torch's merges); T5: a local word-level unigram (T5 pads to "
                   "max_sequence_length, so only which prompts count as truncated can differ)",
)

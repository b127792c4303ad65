"""Z-Image (Tongyi-MAI, Alibaba, 2025): `ZImagePipeline`, a 6B single-stream DiT (S3-DiT) conditioned on Qwen3-4B.

Configs: transformer/config.json of Tongyi-MAI/Z-Image-Turbo (snapshot 0e36c2b, as copied in huggingface.co/epispasm/
zit_foretea and rootlocalghost/Z-Image-Turbo; it differs from diffusers 0.42.1's class defaults only in axes_lens);
text_encoder/config.json = Qwen/Qwen3-4B's (copy smartdigitalnetworks/Z-Image-Turbo, "Duplicate from
Tongyi-MAI/Z-Image-Turbo"); the VAE is FLUX.1's (the Z-Image paper, arXiv:2511.22699; the repo's vae file is 168 MB
= FLUX.1's 83.8M parameters in bf16); scheduler_config.json {shift 3.0, no dynamic shift} (copy
TensorStack/Z-Image-Turbo-ts).

Defaults: the Turbo card's example, 1024x1024, guidance 0 (CFG off: the Turbo model is distilled; with 0 the
negative prompt is never encoded), 8 steps. The card says `num_inference_steps=9  # This actually results in 8 DiT
forwards`, written for the diffusers of its release. In diffusers 0.42.1 the step count IS the number of transformer
calls (default sigmas linspace(1, 1/n, n); 9 steps were counted as 9 calls on the tiny build) and this diffusers'
own ZImagePipeline example passes 8 (Hub discussion Tongyi-MAI/Z-Image-Turbo #158: after diffusers PR #13730 "9 can
now be changed to 8"). evalkit uses 8: the card's 8 function evaluations, so latency is the card's cost.
`max_sequence_length` 512 is the pipeline's default: the text encoder runs on 512 padded tokens, and the transformer
on the prompt's real tokens only (the pipeline masks the padding away).
"""

from __future__ import annotations

import functools
from types import MappingProxyType as Frozen
from typing import Any, Mapping

from evalkit.families import flux1, flux2_klein
from evalkit.families.base import (DENOISER, DIFFUSERS, TEXT_ENCODER, TRANSFORMERS, VAE, Component, GenerationDefaults,
                                   GGUFSupport, ModelFamily, Tokenizer, Variant, build_named, pipeline_arguments)
from evalkit.families.tokenizers import SMALL_VOCAB_PADDED, random_qwen_tokenizers

TRANSFORMER = dict(
    all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30, n_refiner_layers=2,
    n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True, cap_feat_dim=2560, rope_theta=256.0, t_scale=1000.0,
    axes_dims=(32, 48, 48), axes_lens=(1536, 512, 512),
)
# Qwen3-4B's config.json, as FLUX.2 [klein] 4B's text encoder; loaded as Qwen3Model (no lm_head: the pipeline reads
# hidden_states[-2])
TEXT_ENCODER_CONFIG = flux2_klein.QWEN3_4B
FLUX_VAE = flux1.FLUX_VAE  # FLUX.1's autoencoder, config for config (module docstring)
SCHEDULER = dict(num_train_timesteps=1000, use_dynamic_shifting=False, shift=3.0)
FULL = Frozen({"transformer": TRANSFORMER, "text_encoder": TEXT_ENCODER_CONFIG, "vae": FLUX_VAE})

# dim 192 = 3 heads x 64: the feed-forward is int(dim / 3 * 8) wide, 512 here (dim 256 would give 682, which
# quanto's int4 CPU packing refuses: out_features must be a multiple of 16; the real 3840 gives 10240). GGUF K-quants
# take the 512-wide inputs and fall back on the 192-wide ones. One refiner layer per stream; text encoder 2 layers
# (the pipeline reads the second-to-last hidden state).
TINY = Frozen({
    "transformer": dict(TRANSFORMER, dim=192, n_layers=2, n_refiner_layers=1, n_heads=3, n_kv_heads=3,
                        cap_feat_dim=64, axes_dims=(16, 24, 24)),  # axes dims sum to the head dim
    "text_encoder": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, vocab_size=SMALL_VOCAB_PADDED,
                         max_position_embeddings=1024, rms_norm_eps=1e-6, rope_theta=1000000,
                         tie_word_embeddings=True, bos_token_id=0, eos_token_id=2),
    "vae": dict(FLUX_VAE, block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8),
})

# Checkpoint elements of the released weights, each cited; the meta test checks the configs within 0.5%.
PARAMS = Frozen({
    # transformer/ is stored in fp32: three shards of 24.62 GB in all (mashbox-labs/Z-Image-Turbo-TPU card; the
    # Tongyi-MAI/Z-Image-Turbo listing shows the first and last, 9.97 and 4.67 GB) / 4 bytes = 6.155B elements.
    # The card's "6B" is that rounded.
    "transformer": 6_155_000_000,
    # Qwen3-4B without lm_head: `"params": 4022468096` in telcom/dee-z-image's model_summary.json; the repo's
    # text_encoder/ holds 8.05 GB of bf16 (Hub listing) = 4.02B.
    "text_encoder": 4_022_468_096,
    # FLUX.1's VAE (the FLUX.1 record: Hugging Face model size of black-forest-labs/FLUX.1-dev's vae).
    "vae": 83_819_683,
})


def build_modules(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    return build_named(configs, dict(
        transformer=lambda c: ZImageTransformer2DModel(**c),
        vae=lambda c: AutoencoderKL(**c),
        text_encoder=lambda c: Qwen3Model(Qwen3Config(**c)).eval(),
    ))


def build_extras() -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from evalkit.families.tokenizers import build_qwen_tokenizer

    # The pipeline renders [{"role": "user", "content": prompt}] with Qwen3's chat template (enable_thinking=True).
    return dict(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), tokenizer=build_qwen_tokenizer(qwen3=True))


def call_arguments(gen: Mapping[str, Any]) -> dict[str, Any]:
    """Classic CFG, on only when guidance_scale > 0 (the Turbo default 0 runs the transformer once per step)."""
    return pipeline_arguments(gen, negative_prompt=True)


TOKENIZER_NOTE = ("Qwen3: a small byte-level BPE (8,192 tokens) in Qwen2's format trained here, with Qwen3's chat "
                  "template reduced to the turns Z-Image renders; the text encoder is padded to max_sequence_length "
                  "whatever the tokenizer, the transformer sees only the prompt's real tokens, whose count can differ "
                  "from the real vocabulary's (docs/models.md)")

FAMILY = ModelFamily(
    key="z-image",
    display="Z-Image",
    pipeline_class="ZImagePipeline",
    components=(
        Component("transformer", DENOISER, DIFFUSERS, quantized=True,
                  note="6.2B single-stream DiT (30 layers + 2x2 refiner layers)"),
        Component("text_encoder", TEXT_ENCODER, TRANSFORMERS, quantized=True,
                  note="an LLM used as the text encoder: Qwen3-4B (4.02B, Qwen3Model without lm_head; its "
                       "second-to-last hidden state)"),
        Component("vae", VAE, DIFFUSERS, note="FLUX.1's VAE (84M)"),
    ),
    variants=(
        Variant("z-image-turbo", "Tongyi-MAI/Z-Image-Turbo", GenerationDefaults(1024, 1024, 8, 0.0, 512), FULL, PARAMS,
                "Tongyi-MAI/Z-Image-Turbo config.json files (copies named in evalkit/families/z_image.py); counts: "
                "fp32 shard sizes (transformer), model_summary.json (Qwen3-4B), FLUX.1's VAE",
                note="8 steps: the card's 8 transformer evaluations (its '9' counted a step that diffusers 0.42 no "
                     "longer takes)"),
    ),
    tiny_defaults=GenerationDefaults(128, 128, 4, 0.0, 64),
    tiny_configs=TINY,
    build_modules=build_modules,
    build_extras=build_extras,
    call_arguments=call_arguments,
    tokenizers=(Tokenizer("tokenizer", "qwen", None),),
    size_multiple=16,
    tiny_size_multiple=16,
    # A file in the original (Tongyi / ComfyUI) layout fuses q,k,v and names x_embedder./final_layer. without the
    # "all_" prefix; diffusers' converter maps it. evalkit's own files use diffusers' names (no conversion).
    gguf=GGUFSupport("transformer", "z_image", original_key_markers=("x_embedder.", "final_layer.",
                                                                     "model.diffusion_model."),
                     original_converter="convert_z_image_transformer_checkpoint_to_diffusers"),
    random_weight_scale=Frozen({"transformer": 0.5, "text_encoder": 0.5}),
    # Qwen's real vocabulary (Qwen3's tokens and template) where qwen-tokenizer is installed
    random_tokenizers=functools.partial(random_qwen_tokenizers, TOKENIZER_NOTE, qwen3=True),
    tokenizer_note=TOKENIZER_NOTE,
    preload_modules=("diffusers.pipelines.z_image.pipeline_z_image", "transformers.models.qwen3.modeling_qwen3"),
)

"""Qwen-Image (Alibaba Qwen team, 2025): `QwenImagePipeline`, a 20B MMDiT conditioned on Qwen2.5-VL-7B.

Configs (each equal to diffusers 0.42.1's class defaults, a second check): transformer from the Qwen/Qwen-Image
transformer/config.json as copied in huggingface.co/callgg/qi-decoder and a Qwen-Image snapshot whose config keeps
`"_name_or_path": "Qwen/Qwen-Image"`; VAE from the snapshot 9e31a1d vae/config.json (copy wavespeed/Qwen-Image-e4m3);
scheduler from the family's scheduler_config.json (copy devsquad8338/FireRed-Image-Edit-1.0); text encoder from
Qwen/Qwen2.5-VL-7B-Instruct config.json (Qwen's own AWQ repo, and the Qwen-Image text_encoder/config.json copy in
hfpox/qfn). Technical report arXiv:2508.02324, Table 1: 60 layers, 24 heads x 128.

Defaults: the model card's example (reproduced in the Qwen-Image Space's app.py): 50 steps, true CFG 4.0 with the
negative prompt " " (true CFG needs both a scale above 1 and a negative prompt; it runs the transformer twice per step),
1328x1328 for 1:1 (the card's aspect-ratio table; its example picks 16:9, 1664x928, and evalkit's studies are square).
The card's "positive magic" suffix (", Ultra HD, 4K, cinematic composition.") is not added: the prompt file is the
study's input, and CLIP score reads the prompt as written. `max_sequence_length` 512 is the pipeline's default (it
truncates the prompt embeddings; the tokenizer does not pad, so the sequence length is the prompt's own length).
"""

from __future__ import annotations

import functools
from types import MappingProxyType as Frozen
from typing import Any, Mapping

from evalkit.families.base import (DENOISER, DIFFUSERS, TEXT_ENCODER, TRANSFORMERS, VAE, Component, GenerationDefaults,
                                   GGUFSupport, ModelFamily, Tokenizer, Variant, build_named, pipeline_arguments)
from evalkit.families.tokenizers import SMALL_VOCAB_PADDED, random_qwen_tokenizers

TRANSFORMER = dict(
    patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56),
)
_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517,
                 -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
                1.6382, 1.1253, 2.8251, 1.916)
VAE_CONFIG = dict(
    base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
    temperal_downsample=[False, True, True], dropout=0.0, latents_mean=list(_LATENTS_MEAN),
    latents_std=list(_LATENTS_STD),
)
# Qwen2.5-VL-7B-Instruct in its config.json's flat layout. The vision tower (0.68B of the 8.29B) is part of the
# checkpoint and of memory although text-to-image never runs it; its values other than the width are
# Qwen2_5_VLVisionConfig's defaults, set here because that class's default hidden_size (3584) is not the 7B's (1280).
TEXT_ENCODER_CONFIG = dict(
    hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
    hidden_act="silu", max_position_embeddings=128000, max_window_layers=28, rms_norm_eps=1e-6,
    rope_scaling={"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"}, rope_theta=1000000.0,
    sliding_window=32768, use_sliding_window=False, tie_word_embeddings=False, vocab_size=152064,
    bos_token_id=151643, eos_token_id=151645, image_token_id=151655, video_token_id=151656,
    vision_start_token_id=151652, vision_end_token_id=151653, vision_token_id=151654,
    vision_config=dict(depth=32, hidden_act="silu", hidden_size=1280, intermediate_size=3420, num_heads=16,
                       in_chans=3, out_hidden_size=3584, patch_size=14, spatial_merge_size=2, spatial_patch_size=14,
                       temporal_patch_size=2, tokens_per_second=2, window_size=112,
                       fullatt_block_indexes=[7, 15, 23, 31]),
)
SCHEDULER = dict(
    num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
    base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential",
)
FULL = Frozen({"transformer": TRANSFORMER, "text_encoder": TEXT_ENCODER_CONFIG, "vae": VAE_CONFIG})

# Inner width 4 heads x 64 = 256, so GGUF K-quants (256-blocks) apply; the VAE keeps the real layout (z_dim 16, x8)
# at 1/12 of the width; the text encoder is 2 layers x 64 with a one-block vision tower (the class needs one).
TINY = Frozen({
    "transformer": dict(patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=64,
                        num_attention_heads=4, joint_attention_dim=64, guidance_embeds=False,
                        axes_dims_rope=(16, 24, 24)),  # rope dims sum to the head dim
    "text_encoder": dict(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=SMALL_VOCAB_PADDED, max_position_embeddings=2048,
                         rms_norm_eps=1e-6, rope_theta=1000000.0,
                         rope_scaling={"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"},
                         bos_token_id=0, eos_token_id=2),  # the small tokenizer's <|endoftext|>, <|im_end|>
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           fullatt_block_indexes=[0]),
        vocab_size=SMALL_VOCAB_PADDED, bos_token_id=0, eos_token_id=2, image_token_id=SMALL_VOCAB_PADDED - 4,
        video_token_id=SMALL_VOCAB_PADDED - 3,
        vision_start_token_id=SMALL_VOCAB_PADDED - 2, vision_end_token_id=SMALL_VOCAB_PADDED - 1),
    "vae": dict(VAE_CONFIG, base_dim=8, num_res_blocks=1),
})

# The pipeline wraps every prompt in this template and drops its first 34 tokens (prompt_template_encode_start_idx):
# trained into the small tokenizer so its prefix is 34 tokens too (tests check it).
PROMPT_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
                   "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
                   "<|im_end|>\n<|im_start|>assistant\n")
TEMPLATE_PREFIX_TOKENS = 34

# Checkpoint elements (parameters + persistent buffers) of the released weights, each cited; the meta test checks
# the configs against them within 0.5%.
PARAMS = Frozen({
    # The transformer in bf16: wavespeed/Qwen-Image-bf16's five shards 9.97 + 9.99 + 9.99 + 9.93 + 0.982 GB =
    # 40.862 GB = 20.431B elements; Qwen/Qwen-Image's own transformer/ folder is 40.9 GB (its mirrors
    # frankjoshua/Qwen-Image, Runware/Qwen-Image). The card's "20B" is that rounded.
    "transformer": 20_431_000_000,
    # Hugging Face "Model size" of Qwen/Qwen2.5-VL-7B-Instruct: 8.29B (lm_head and vision tower included).
    "text_encoder": 8_290_000_000,
    # Technical report Table 1: VAE encoder 54M + decoder 73M; vae/ is 254 MB of bf16 (Runware/Qwen-Image) = 127M.
    "vae": 127_000_000,
})


def build_modules(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    return build_named(configs, dict(
        transformer=lambda c: QwenImageTransformer2DModel(**c),
        vae=lambda c: AutoencoderKLQwenImage(**c),
        text_encoder=lambda c: Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**c)).eval(),
    ))


def build_extras() -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from evalkit.families.tokenizers import build_qwen_tokenizer

    return dict(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
                tokenizer=build_qwen_tokenizer(fixed_texts=[PROMPT_TEMPLATE.format("a cat")]))


def call_arguments(gen: Mapping[str, Any]) -> dict[str, Any]:
    """True CFG: `true_cfg_scale` (evalkit's guidance) with a negative prompt; `guidance_scale` is only for
    guidance-distilled transformers, which Qwen-Image is not."""
    return pipeline_arguments(gen, negative_prompt=True, guidance="true_cfg_scale")


TOKENIZER_NOTE = ("Qwen2: a small byte-level BPE (8,192 tokens) in Qwen2's format trained here, not Qwen's "
                  "151,643-token vocabulary; Qwen-Image does not pad, so its token counts (the text encoder's "
                  "sequence length) can differ from the real model's (docs/models.md says by how much); the template "
                  "prefix is 34 tokens as with the real one")

FAMILY = ModelFamily(
    key="qwen-image",
    display="Qwen-Image",
    pipeline_class="QwenImagePipeline",
    components=(
        Component("transformer", DENOISER, DIFFUSERS, quantized=True, note="20.4B MMDiT, 60 blocks"),
        Component("text_encoder", TEXT_ENCODER, TRANSFORMERS, quantized=True,
                  note="an LLM used as the text encoder: Qwen2.5-VL-7B-Instruct (8.29B with its 0.68B vision tower, "
                       "which text-to-image never runs)"),
        Component("vae", VAE, DIFFUSERS, note="Qwen-Image VAE (Wan-style, 127M)"),
    ),
    variants=(
        Variant("qwen-image", "Qwen/Qwen-Image", GenerationDefaults(1328, 1328, 50, 4.0, 512, " "), FULL, PARAMS,
                "Qwen/Qwen-Image config.json files (copies named in evalkit/families/qwen_image.py), equal to "
                "diffusers 0.42.1's class defaults; counts: Hub file sizes (transformer), Hub model size "
                "(Qwen2.5-VL-7B), arXiv:2508.02324 Table 1 (VAE)"),
    ),
    tiny_defaults=GenerationDefaults(128, 128, 4, 4.0, 64, " "),
    tiny_configs=TINY,
    build_modules=build_modules,
    build_extras=build_extras,
    call_arguments=call_arguments,
    tokenizers=(Tokenizer("tokenizer", "qwen", None),),
    # VAE x8, then 2x2 patches; the pipeline itself rounds to multiples of 16
    size_multiple=16,
    tiny_size_multiple=16,
    # Single-file loadable with an identity mapping: a file must already use diffusers' key names.
    gguf=GGUFSupport("transformer", "qwen_image"),
    random_weight_scale=Frozen({"transformer": 0.5, "text_encoder": 0.5}),
    # Qwen's real vocabulary where qwen-tokenizer is installed: Qwen-Image's sequence length is the token count
    random_tokenizers=functools.partial(random_qwen_tokenizers, TOKENIZER_NOTE),
    tokenizer_note=TOKENIZER_NOTE,
    preload_modules=("diffusers.pipelines.qwenimage.pipeline_qwenimage",
                     "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl"),
)

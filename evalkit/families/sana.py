"""SANA-1.5 (NVIDIA / MIT, 2025): `SanaPipeline`, a linear-attention DiT on a 32x DC-AE latent, conditioned on
Gemma-2-2B-IT. SANA-Sprint, the few-step distillation, is its own family (evalkit/families/sana_sprint.py: another
pipeline class, scheduler and call) built from the components defined here.

Configs: diffusers' scripts/convert_sana_to_diffusers.py (model "SanaMS1.5_4800M_P1_D60": 60 blocks, width 2240 =
70 heads x 32, cross-attention 20 x 112, caption channels 2304, mlp_ratio 2.5, qk_norm "rms_norm_across_heads",
sample_size 1024 // 32); the text encoder it loads, Efficient-Large-Model/gemma-2-2b-it (= google/gemma-2-2b-it's
config, which is transformers' Gemma2Config defaults); the DC-AE f32c32 "sana-1.0" config
(scripts/convert_dcae_to_diffusers.py, and Efficient-Large-Model/Sana_600M_1024px_diffusers vae/config.json; the 1.1
weights keep its shapes); scheduler: the script's flow DPM-Solver at 1024 px (flow_shift 3.0).

Defaults: the SANA-1.5 model card / nvlabs.github.io/Sana docs: 1024x1024, 20 steps, guidance 4.5 (classic CFG with
the negative prompt "", batched), `max_sequence_length` 300 and the pipeline's default complex human instruction
(CHI: eight lines prepended to every prompt, so the text encoder reads about 190 more tokens than the prompt; the
transformer still sees 300: <bos> and the prompt's last 299 positions). Resolution binning (the card's and the
pipeline's default) renders at the nearest trained aspect-ratio size and resizes back: on for sizes the bins cover
(both sides >= 512 px, the smallest side of the 1024-px bins; 1024x1024 is itself a bin), off below (the tiny build's
128 px would otherwise render at 1024 px and shrink).

Weight layout: 48% of the transformer's weights sit in the GLUMBConv feed-forward's 1x1 and depthwise Conv2d layers,
which Linear-only quantizers (bitsandbytes, torchao, quanto, diffusers' GGUFLinear) leave in bf16; the Linear layers
take 2240-wide inputs (8.75 x 256), so GGUF K-quants fall back for nearly all of them.
"""

from __future__ import annotations

from types import MappingProxyType as Frozen
from typing import Any, Mapping

from evalkit.families.base import (DENOISER, DIFFUSERS, TEXT_ENCODER, TRANSFORMERS, VAE, Component, GenerationDefaults,
                                   GGUFSupport, ModelFamily, Tokenizer, Variant, build_named, pipeline_arguments)
from evalkit.families.tokenizers import SMALL_VOCAB

TRANSFORMER_COMMON = dict(
    in_channels=32, out_channels=32, num_attention_heads=70, attention_head_dim=32, num_cross_attention_heads=20,
    cross_attention_head_dim=112, cross_attention_dim=2240, caption_channels=2304, mlp_ratio=2.5, dropout=0.0,
    attention_bias=False, sample_size=32, patch_size=1, norm_elementwise_affine=False, norm_eps=1e-6,
    interpolation_scale=None, qk_norm="rms_norm_across_heads",
)
GEMMA2_2B = dict(  # google/gemma-2-2b-it config.json (= Gemma2Config's defaults in transformers 5.23)
    hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4,
    head_dim=256, hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192, rms_norm_eps=1e-6,
    rope_theta=10000.0, attention_bias=False, query_pre_attn_scalar=256, sliding_window=4096,
    final_logit_softcapping=30.0, attn_logit_softcapping=50.0, vocab_size=256000, pad_token_id=0, eos_token_id=1,
    bos_token_id=2,
)
DC_AE = dict(  # dc-ae-f32c32-sana-1.x: six stages (x32), 32 latent channels
    in_channels=3, latent_channels=32, attention_head_dim=32,
    encoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
    decoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
    encoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
    decoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
    encoder_layers_per_block=(2, 2, 2, 3, 3, 3), decoder_layers_per_block=(3, 3, 3, 3, 3, 3),
    encoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)), decoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
    upsample_block_type="interpolate", downsample_block_type="Conv", decoder_norm_types="rms_norm",
    decoder_act_fns="silu", scaling_factor=0.41407,
)
SCHEDULER = dict(flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction")
FULL = Frozen({"transformer": dict(TRANSFORMER_COMMON, num_layers=60), "text_encoder": GEMMA2_2B, "vae": DC_AE})

# Inner width 8 heads x 32 = 256 (the real head dim 32), cross-attention 2 x 128; sample_size 32 as the real model
# (it sizes no weight without interpolation_scale; it picks the 1024-px bins). DC-AE keeps its six stages (x32) and
# 32 latent channels at 8-32 channels; Gemma 2 layers x 64 on the small Gemma-format tokenizer.
TINY_TRANSFORMER = dict(TRANSFORMER_COMMON, num_attention_heads=8, attention_head_dim=32, num_layers=2,
                        num_cross_attention_heads=2, cross_attention_head_dim=128, cross_attention_dim=256,
                        caption_channels=64)
TINY_TEXT = dict(GEMMA2_2B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, vocab_size=SMALL_VOCAB)
TINY_VAE = dict(DC_AE, attention_head_dim=8, encoder_block_out_channels=(8, 8, 16, 16, 32, 32),
                decoder_block_out_channels=(8, 8, 16, 16, 32, 32), encoder_layers_per_block=(1,) * 6,
                decoder_layers_per_block=(1,) * 6)
TINY = Frozen({"transformer": TINY_TRANSFORMER, "text_encoder": TINY_TEXT, "vae": TINY_VAE})

# Gemma-2-2B-IT: the text_encoder/ folder of the Sana repos holds 4.99 GB + 241 MB of bf16 (SANA1.5_1.6B_1024px_
# diffusers listing) = 2.616B elements (Hugging Face model size of google/gemma-2-2b-it: 2.61B).
GEMMA_PARAMS = 2_615_500_000
# DC-AE: vae/diffusion_pytorch_model.safetensors is 1.25 GB of fp32 (Sana_1600M_512px_diffusers listing) = 312.5M.
DC_AE_PARAMS = 312_500_000
# The published transformer sizes are nominal: SANA-1.5's "4.8B" is 3 x the 1.6B it grew from ("scaling from 1.6B
# (20 blocks) to 4.8B (60 blocks)", arXiv:2501.18427), and the 60-block model computes to 4.72B. The precise figure
# these blocks are checked against is the 20-block SANA 1.6B checkpoint, the same width, heads and embeddings:
# Efficient-Large-Model/Sana_1600M_1024px_diffusers transformer/diffusion_pytorch_model.safetensors, 3.21 GB of fp16
# (bf16 in terminusresearch/sana-1.6b-1024px) = 1.605B elements (tests build these configs at 20 blocks).
SANA_1600M_CHECKPOINT = 1_605_000_000
SANA_1600M_BLOCKS = 20
PARAMS = Frozen({"transformer": 4_800_000_000, "text_encoder": GEMMA_PARAMS, "vae": DC_AE_PARAMS})
NOMINAL = ("transformer",)  # components whose published figure is nominal (tests check SANA_1600M_CHECKPOINT)

# Smallest side of the 1024-px aspect-ratio bins (ASPECT_RATIO_1024_BIN: 512 x 2048): below it binning would render
# at a much larger size than asked and shrink the image.
BINNING_MIN_SIDE = 512


def build_modules(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    from diffusers import AutoencoderDC, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    return build_named(configs, dict(
        transformer=lambda c: SanaTransformer2DModel(**c),
        vae=lambda c: AutoencoderDC(**c),
        text_encoder=lambda c: Gemma2Model(Gemma2Config(**c)).eval(),
    ))


def build_tokenizer() -> Any:
    from evalkit.families.tokenizers import build_gemma_tokenizer

    # The complex human instruction is the pipeline's default text before every prompt: trained in as text.
    return build_gemma_tokenizer(fixed_texts=complex_human_instruction())


def complex_human_instruction() -> list[str]:
    """The pipeline's own default CHI (read from its signature, so a diffusers that changes it is followed)."""
    import inspect

    from diffusers import SanaPipeline

    return list(inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default)


def build_extras() -> dict[str, Any]:
    from diffusers import DPMSolverMultistepScheduler

    return dict(scheduler=DPMSolverMultistepScheduler(**SCHEDULER), tokenizer=build_tokenizer())


def binning(gen: Mapping[str, Any]) -> bool:
    return min(gen["height"], gen["width"]) >= BINNING_MIN_SIDE


def call_arguments(gen: Mapping[str, Any]) -> dict[str, Any]:
    """Classic CFG with the negative prompt; the CHI stays the pipeline's default; binning as the module says."""
    return {**pipeline_arguments(gen), "negative_prompt": gen.get("negative_prompt") or "",
            "use_resolution_binning": binning(gen)}


TOKENIZER_NOTE = ("Gemma: a small BPE (8,192 tokens) in Gemma's format (byte fallback, <bos> first) trained here; no "
                  "installable package ships Gemma's 256,000-token vocabulary. The text encoder's input is the CHI "
                  "plus the prompt, cut to max_sequence_length - 2 tokens after the CHI and padded to that length, so "
                  "the counts decide only which prompts are cut (docs/models.md)")

COMPONENTS = (
    Component("transformer", DENOISER, DIFFUSERS, quantized=True,
              note="linear-attention DiT; 48% of its weights are 1x1/depthwise Conv2d that Linear-only quantizers "
                   "keep in bf16"),
    Component("text_encoder", TEXT_ENCODER, TRANSFORMERS, quantized=True,
              note="an LLM used as the text encoder: Gemma-2-2B-IT (2.6B, Gemma2Model without lm_head; its last "
                   "hidden state)"),
    Component("vae", VAE, DIFFUSERS, note="DC-AE f32c32 (312M)"),
)
# SanaTransformer2DModel declares no _repeated_blocks; its SanaTransformerBlocks are the repeated region.
COMPILE_BLOCKS = ("SanaTransformerBlock",)
# Sana's converter maps the original checkpoint's names (blocks.N..., x_embedder., t_embedder.)
GGUF = GGUFSupport("transformer", "sana", original_key_markers=("blocks.", "x_embedder.", "t_embedder."),
                   original_converter="convert_sana_transformer_to_diffusers")
PRELOAD = ("diffusers.pipelines.sana.pipeline_sana", "transformers.models.gemma2.modeling_gemma2")

FAMILY = ModelFamily(
    key="sana",
    display="SANA-1.5",
    pipeline_class="SanaPipeline",
    components=COMPONENTS,
    variants=(
        Variant("sana-1.5-4.8b", "Efficient-Large-Model/SANA1.5_4.8B_1024px_diffusers",
                GenerationDefaults(1024, 1024, 20, 4.5, 300, ""), FULL, PARAMS,
                "diffusers scripts/convert_sana_to_diffusers.py (SanaMS1.5_4800M_P1_D60), gemma-2-2b-it and DC-AE "
                "f32c32 config.json; counts: Hub file sizes",
                note="the transformer's '4.8B' is nominal (3 x 1.6B); its blocks are checked against the 20-block "
                     "SANA 1.6B checkpoint (1.605B), and the 60-block model is 4.72B"),
    ),
    tiny_defaults=GenerationDefaults(128, 128, 4, 4.5, 64, ""),
    tiny_configs=TINY,
    build_modules=build_modules,
    build_extras=build_extras,
    call_arguments=call_arguments,
    tokenizers=(Tokenizer("tokenizer", "gemma", None),),
    size_multiple=32,  # DC-AE x32, patch 1
    tiny_size_multiple=32,
    gguf=GGUF,
    compile_blocks=COMPILE_BLOCKS,
    random_weight_scale=Frozen({"transformer": 0.5, "text_encoder": 0.5}),
    tokenizer_note=TOKENIZER_NOTE,
    preload_modules=PRELOAD,
)

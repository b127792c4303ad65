"""FLUX.2 [dev] (Black Forest Labs, 2025): `Flux2Pipeline`, a 32B MM-DiT whose text encoder is a 24B LLM.

The FLUX.2 transformer, VAE and scheduler are shared with FLUX.2 [klein] (evalkit/families/flux2_klein.py, its own
family because it is another pipeline class with another text encoder and call); the builders here serve both.

Configs:
- transformer: diffusers scripts/convert_flux2_to_diffusers.py `get_flux2_transformer_config("flux2-dev")`, equal to
  BFL's reference `Flux2Params()` (black-forest-labs/flux2 src/flux2/model.py: hidden 6144, 48 heads, 8 double and
  48 single blocks, context 15360, axes [32]*4, theta 2000, mlp_ratio 3); guidance_embeds: FLUX.2 [dev] is
  guidance-distilled.
- text_encoder: mistralai/Mistral-Small-3.2-24B-Instruct-2506 (the conversion script's text_encoder_id; BFL's
  Mistral3SmallEmbedder), its config.json as embedded in modelscope/DiffSynth-Studio
  diffsynth/models/flux2_text_encoder.py, plus `tie_word_embeddings: False`: transformers 5 ties Mistral3's lm_head by
  default, but the checkpoint holds a separate lm_head and loading it does not tie (23.34B tied vs 24.01B real).
- vae: FLUX.2-dev vae/config.json (= AutoencoderKLFlux2's defaults; identical in the klein repos).
- scheduler: diffusers/FLUX.2-dev-bnb-4bit scheduler/scheduler_config.json (HF staff repack). The pipeline passes its
  own sigmas and mu (compute_empirical_mu), so only use_dynamic_shifting and time_shift_type act.

Call (Flux2Pipeline.__call__): no negative prompt; `guidance_scale` feeds the guidance embedder (distilled guidance).
The prompt is wrapped in a chat template with BFL's fixed system message, padded/truncated to max_sequence_length
(template and system message included), and the hidden states of layers 10, 20 and 30 are stacked (3 x 5120 =
15360). Defaults: 1024², 50 steps, guidance 4.0, max_sequence_length 512 (BFL docs/flux2_dev_hf.md and
model_cards/FLUX.2-dev.md: "28 steps can be a good trade-off"; BFL cli.py: num_steps 50, guidance 4.0, 512).

Generator: one CPU torch.Generator per prompt, latents drawn by randn_tensor (a list of generators needs one per
image). Regional compilation: Flux2Transformer2DModel._repeated_blocks = (Flux2TransformerBlock,
Flux2SingleTransformerBlock). GGUF: the transformer is single-file loadable; diffusers key names load without
conversion (evalkit's own converter writes them; the tests load its files); BFL/city96 key names go through
diffusers' convert_flux2_transformer_checkpoint_to_diffusers. Every transformer Linear has in_features a multiple of
256 except x_embedder (128), which K-quants leave in bf16.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType as Frozen
from typing import Any, Mapping

from evalkit.families.base import (DENOISER, DIFFUSERS, TEXT_ENCODER, TRANSFORMERS, VAE, Component, GenerationDefaults,
                                   GGUFSupport, ModelFamily, Tokenizer, Variant, build_named, pipeline_arguments)
from evalkit.families.tokenizers import MISTRAL_IMAGE_TOKEN_ID, MISTRAL_PAD_TOKEN_ID

TRANSFORMER_COMMON = Frozen(dict(patch_size=1, in_channels=128, out_channels=None, timestep_guidance_channels=256,
                                 mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, eps=1e-6))
DEV_TRANSFORMER = dict(TRANSFORMER_COMMON, num_layers=8, num_single_layers=48, attention_head_dim=128,
                       num_attention_heads=48, joint_attention_dim=15360, guidance_embeds=True)
FLUX2_VAE = Frozen(dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    act_fn="silu", latent_channels=32, norm_num_groups=32, sample_size=1024, force_upcast=True, use_quant_conv=True,
    use_post_quant_conv=True, mid_block_add_attention=True, batch_norm_eps=1e-4, batch_norm_momentum=0.1,
    patch_size=(2, 2),
))
MISTRAL_SMALL_3_2 = dict(
    text_config=dict(
        model_type="mistral", attention_dropout=0.0, head_dim=128, hidden_act="silu", hidden_size=5120,
        initializer_range=0.02, intermediate_size=32768, max_position_embeddings=131072, num_attention_heads=32,
        num_hidden_layers=40, num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=1000000000.0, sliding_window=None,
        use_cache=True, vocab_size=131072,
    ),
    vision_config=dict(
        model_type="pixtral", attention_dropout=0.0, head_dim=64, hidden_act="silu", hidden_size=1024,
        image_size=1540, initializer_range=0.02, intermediate_size=4096, num_attention_heads=16, num_channels=3,
        num_hidden_layers=24, patch_size=14, rope_theta=10000.0,
    ),
    image_token_index=10, multimodal_projector_bias=False, projector_hidden_act="gelu", spatial_merge_size=2,
    vision_feature_layer=-1, tie_word_embeddings=False,  # see the module docstring
)
SCHEDULER = Frozen(dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096, invert_sigmas=False,
                        shift_terminal=None, use_karras_sigmas=False, use_exponential_sigmas=False,
                        use_beta_sigmas=False, time_shift_type="exponential", stochastic_sampling=False))
FULL = Frozen({"transformer": DEV_TRANSFORMER, "text_encoder": MISTRAL_SMALL_3_2, "vae": FLUX2_VAE})

# Tiny: inner width 256 (2 heads x 128, the real head size and rope axes) so every block Linear has in_features a
# multiple of 256 (GGUF K-quants apply as at full size); in_channels 128 = 32 latent channels x 2x2 patch, as real.
TINY_TRANSFORMER = Frozen(dict(TRANSFORMER_COMMON, num_layers=1, num_single_layers=1, attention_head_dim=128,
                               num_attention_heads=2, joint_attention_dim=768))  # 3 x the tiny encoders' 256
# AutoencoderKLFlux2 with 3 small blocks (scale factor 4), the real 32 latent channels, quant convs and BatchNorm.
TINY_VAE = Frozen(dict(FLUX2_VAE, down_block_types=("DownEncoderBlock2D",) * 3,
                       up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 32, 64), layers_per_block=1,
                       sample_size=128))
# Narrow, but one layer deeper than the deepest hidden state the pipeline reads (30): with exactly 30 layers,
# hidden_states[30] would be the final-norm output (transformers 5), not a raw residual stream as in the real 40.
TINY_MISTRAL3 = dict(
    text_config=dict(
        model_type="mistral", vocab_size=8256, hidden_size=256, intermediate_size=256, num_hidden_layers=31,
        num_attention_heads=2, num_key_value_heads=1, head_dim=128, hidden_act="silu", max_position_embeddings=4096,
        rms_norm_eps=1e-5, rope_theta=1000000000.0, sliding_window=None, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=MISTRAL_PAD_TOKEN_ID,
    ),
    vision_config=dict(
        model_type="pixtral", hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=1,
        head_dim=64, image_size=56, patch_size=14, num_channels=3, rope_theta=10000.0, hidden_act="silu",
    ),
    image_token_index=MISTRAL_IMAGE_TOKEN_ID, spatial_merge_size=2, projector_hidden_act="gelu",
    multimodal_projector_bias=False, vision_feature_layer=-1, tie_word_embeddings=False,
)
TINY = Frozen({"transformer": dict(TINY_TRANSFORMER, guidance_embeds=True), "text_encoder": TINY_MISTRAL3,
               "vae": TINY_VAE})

# Published sizes (the meta test checks what the configs build within 0.5%). No figure precise enough to test was
# found for either large component: the card's "32 billion parameter" transformer and the "24B" of
# Mistral-Small-3.2-24B are rounded names (the transformer's 32.22B is +0.7% from 32B). Both are kept in
# ROUNDED_PARAMS and checked within their rounding. BFL's own reference class, Flux2(Flux2Params()), instantiated on
# the meta device has exactly the 32,223,281,152 parameters the diffusers config builds (the research notes
# ran it), so the config is BFL's architecture. The VAE: FLUX.2-klein-4B's
# vae/diffusion_pytorch_model.safetensors (the same VAE), 168,000,000 bytes bf16 in the Hub's listing (3 s.f.).
VAE_PARAMS = Frozen({"vae": 168_000_000 // 2})
# component -> (rounded published count, relative half-width of its rounding, source)
ROUNDED_PARAMS = Frozen({
    "flux2-dev": {"transformer": (32e9, 0.5 / 32, "BFL model_cards/FLUX.2-dev.md: 'a 32 billion parameter "
                                                  "rectified flow transformer'"),
                  "text_encoder": (24e9, 0.5 / 24, "mistralai/Mistral-Small-3.2-24B-Instruct-2506: '24B'")},
})


def build_transformer(config: Mapping[str, Any]) -> Any:
    """A FLUX.2 transformer (dev and klein share the class)."""
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(**config)


def build_vae(config: Mapping[str, Any]) -> Any:
    """The FLUX.2 VAE. The published config.json carries force_upcast, which this class does not take (from_pretrained
    ignores it with a warning): dropped here."""
    from diffusers import AutoencoderKLFlux2

    return AutoencoderKLFlux2(**{k: v for k, v in config.items() if k != "force_upcast"})


def build_scheduler() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**SCHEDULER)


def build_modules(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    return build_named(configs, dict(transformer=build_transformer,
                                     text_encoder=lambda c: Mistral3ForConditionalGeneration(Mistral3Config(**c)),
                                     vae=build_vae))


def build_extras() -> dict[str, Any]:
    """Scheduler and a local Mistral-kind tokenizer, with BFL's system message (sent before every prompt) trained in
    as text so that its words are single tokens, as with the real vocabulary."""
    from diffusers.pipelines.flux2.pipeline_flux2 import SYSTEM_MESSAGE

    from evalkit.families.tokenizers import build_mistral_tokenizer

    return dict(scheduler=build_scheduler(), tokenizer=build_mistral_tokenizer(fixed_texts=[SYSTEM_MESSAGE]))


def call_arguments(gen: Mapping[str, Any]) -> dict[str, Any]:
    """Distilled guidance (an embedding, no negative prompt); the chat-templated prompt padded to
    max_sequence_length. The encoder layers read (10, 20, 30) stay the pipeline's default."""
    return pipeline_arguments(gen)


def supplied_components(model_path: str) -> dict[str, Any]:
    """FLUX.2-dev's model_index.json names PixtralProcessor as its tokenizer, which transformers 5 imports only with
    torchvision (evalkit does not install it: no CPU build). Then load the tokenizer inside the processor's folder:
    the text-to-image path only calls `tokenizer.apply_chat_template` (prompt upsampling would need the processor).
    Verified on a tiny FLUX.2 directory naming PixtralProcessor, not yet on a real snapshot."""
    from transformers.utils import is_torchvision_available

    index = json.loads((Path(model_path) / "model_index.json").read_text(encoding="utf-8"))
    declared = index.get("tokenizer") or [None, None]
    if declared[-1] != "PixtralProcessor" or is_torchvision_available():
        return {}
    from evalkit.families.tokenizers import load_tokenizer_with_chat_template

    tok = load_tokenizer_with_chat_template(Path(model_path) / "tokenizer")
    return {"tokenizer": tok}


# Where the GGUF files of a FLUX.2 transformer with BFL's / city96's key names are recognised, and mapped.
GGUF = GGUFSupport("transformer", "flux2", original_key_markers=("double_blocks.", "single_blocks.",
                                                                "model.diffusion_model."),
                   original_converter="convert_flux2_transformer_checkpoint_to_diffusers")
# FLUX.1's factor (see flux1.py) for 8 + 48 blocks and a 40-layer LLM: FLUX.2-dev's and klein's random builds gave
# finite images over their card's steps with it (benchmarks/results/flux2-*-random-h100-2026-12-06/).
RANDOM_WEIGHT_SCALE = Frozen({"transformer": 0.5, "text_encoder": 0.5})
TOKENIZER_NOTE = ("a local 8k byte-level BPE of the {kind} kind with its chat template (evalkit/families/"
                  "tokenizers.py): the pipeline pads the templated prompt to max_sequence_length, so the text "
                  "encoder's work is the real one; the counts can differ from the real tokenizer's, and the template"
                  "{extra} takes part of max_sequence_length, so a prompt is truncated some tokens before its count "
                  "reaches the limit")

FAMILY = ModelFamily(
    key="flux2",
    display="FLUX.2-dev",  # no brackets: rich (the CLI tables) would read "[dev]" as markup
    pipeline_class="Flux2Pipeline",
    components=(
        Component("transformer", DENOISER, DIFFUSERS, quantized=True, note="32B MM-DiT (8 double + 48 single blocks)"),
        Component("text_encoder", TEXT_ENCODER, TRANSFORMERS, quantized=True,
                  note="an LLM as the text encoder: Mistral-Small-3.2-24B, a VLM (24.0B). Only the hidden states of "
                       "layers 10, 20 and 30 reach the image: the Pixtral vision tower (0.40B) and projector are "
                       "held but unused, layers 31-40 and lm_head (0.67B, all 512 positions' logits) are computed "
                       "but never affect it"),
        Component("vae", VAE, DIFFUSERS, note="AutoencoderKLFlux2 (84M, 32 latent channels, BatchNorm latent stats)"),
    ),
    variants=(
        Variant("flux2-dev", "black-forest-labs/FLUX.2-dev", GenerationDefaults(1024, 1024, 50, 4.0, 512),
                FULL, VAE_PARAMS, "diffusers convert_flux2_to_diffusers.py (flux2-dev) = BFL Flux2Params; "
                "Mistral-Small-3.2-24B-Instruct-2506 config.json; FLUX.2 vae/config.json; counts: VAE from the Hub's "
                "file listing, transformer and text encoder only rounded (32B, 24B): see evalkit/families/flux2.py",
                note="104.9 GiB of bf16 weights: one H200 holds them"),
    ),
    tiny_defaults=GenerationDefaults(128, 128, 4, 4.0, 128),
    tiny_configs=TINY,
    build_modules=build_modules,
    build_extras=build_extras,
    call_arguments=call_arguments,
    tokenizers=(Tokenizer("tokenizer", "mistral", None),),
    gguf=GGUF,
    random_weight_scale=RANDOM_WEIGHT_SCALE,
    tokenizer_note=TOKENIZER_NOTE.format(kind="Mistral (tekken)", extra=" with BFL's system message"),
    preload_modules=("diffusers.pipelines.flux2.pipeline_flux2", "transformers.models.mistral3.modeling_mistral3",
                     "transformers.models.pixtral.modeling_pixtral"),
    supplied_components=supplied_components,
    # 2: the tiny build's tokenizer is trained by the shared byte_level_bpe (evalkit/families/tokenizers.py), with
    # BFL's system message; the weights are version 1's
    version="2",
)

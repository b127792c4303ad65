"""FLUX.2 [klein] 4B and 9B (Black Forest Labs, 2026): `Flux2KleinPipeline`, FLUX.2's transformer at 4B / 9B with
Qwen3-4B / Qwen3-8B as the text encoder, step-distilled to 4 steps.

A family of its own beside FLUX.2 [dev] (evalkit/families/flux2.py), because it is another pipeline class with
another text encoder, tokenizer and call: a directory's model_index.json names Flux2KleinPipeline, and that is what
tells evalkit it is klein. The transformer, VAE and scheduler builders are flux2.py's; the tokenizer is Z-Image's
Qwen3 one (evalkit/families/tokenizers.py), and random builds take Qwen's real vocabulary where it is installed.

Configs:
- transformer: diffusers scripts/convert_flux2_to_diffusers.py, "klein-4b" (hidden 3072 = 24 heads x 128, 5 double +
  20 single blocks, context 7680) and "klein-9b" (32 heads, 8 + 24 blocks, context 12288); no guidance embedder.
- text_encoder: Qwen/Qwen3-4B and Qwen/Qwen3-8B config.json (BFL src/flux2/text_encoder.py:
  Qwen3Embedder("Qwen/Qwen3-{4B,8B}"), OUTPUT_LAYERS_QWEN3 = [9, 18, 27]; hidden/intermediate sizes as in the klein
  repos' text_encoder/config.json; joint_attention_dim = 3 x hidden).
- vae: FLUX.2's (the klein repos' vae/config.json is FLUX.2-dev's). scheduler: FLUX.2-dev's config is used (klein's
  own scheduler_config.json was not read); the pipeline passes its own sigmas and mu.

Call (Flux2KleinPipeline.__call__): the prompt goes through Qwen3's chat template (enable_thinking=False), is padded
to max_sequence_length, and hidden states 9, 18, 27 are stacked. No guidance embedder: with `is_distilled` (true in
the distilled repos' model_index.json, and in evalkit's builds) guidance_scale > 1 is ignored with a warning; the
base (undistilled) checkpoints run CFG against an empty prompt. Defaults: the distilled cards' diffusers example,
1024², 4 steps, guidance 1.0, max_sequence_length 512. The pipeline's own defaults (50 steps, 4.0) are the base
variants', so evalkit always passes the card's values.

Generator, regional compilation and GGUF: as FLUX.2 [dev] (the same transformer class).
"""

from __future__ import annotations

import functools
from types import MappingProxyType as Frozen
from typing import Any, Mapping

from evalkit.families import flux2
from evalkit.families.base import (DENOISER, DIFFUSERS, TEXT_ENCODER, TRANSFORMERS, VAE, Component, GenerationDefaults,
                                   ModelFamily, Tokenizer, Variant, build_named, pipeline_arguments)
from evalkit.families.tokenizers import random_qwen_tokenizers

KLEIN_4B_TRANSFORMER = dict(flux2.TRANSFORMER_COMMON, num_layers=5, num_single_layers=20, attention_head_dim=128,
                            num_attention_heads=24, joint_attention_dim=7680, guidance_embeds=False)
KLEIN_9B_TRANSFORMER = dict(flux2.TRANSFORMER_COMMON, num_layers=8, num_single_layers=24, attention_head_dim=128,
                            num_attention_heads=32, joint_attention_dim=12288, guidance_embeds=False)
QWEN3_COMMON = Frozen(dict(
    attention_bias=False, attention_dropout=0.0, bos_token_id=151643, eos_token_id=151645, head_dim=128,
    hidden_act="silu", initializer_range=0.02, max_position_embeddings=40960, max_window_layers=36,
    num_attention_heads=32, num_hidden_layers=36, num_key_value_heads=8, rms_norm_eps=1e-6, rope_theta=1000000,
    sliding_window=None, use_cache=True, use_sliding_window=False, vocab_size=151936,
))
QWEN3_4B = dict(QWEN3_COMMON, hidden_size=2560, intermediate_size=9728, tie_word_embeddings=True)
QWEN3_8B = dict(QWEN3_COMMON, hidden_size=4096, intermediate_size=12288, tie_word_embeddings=False)
FULL_4B = Frozen({"transformer": KLEIN_4B_TRANSFORMER, "text_encoder": QWEN3_4B, "vae": flux2.FLUX2_VAE})
FULL_9B = Frozen({"transformer": KLEIN_9B_TRANSFORMER, "text_encoder": QWEN3_8B, "vae": flux2.FLUX2_VAE})

# One layer deeper than the deepest hidden state read (27), so every layer read is a raw residual stream.
TINY_QWEN3 = dict(vocab_size=8256, hidden_size=256, intermediate_size=256, num_hidden_layers=28,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=128, hidden_act="silu",
                  max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=1000000, tie_word_embeddings=True,
                  attention_bias=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
TINY = Frozen({"transformer": dict(flux2.TINY_TRANSFORMER, guidance_embeds=False), "text_encoder": TINY_QWEN3,
               "vae": flux2.TINY_VAE})

# Published sizes (what the checkpoint holds; the meta test checks within 0.5%):
# - text_encoder: `total_size` of Qwen/Qwen3-4B's and Qwen/Qwen3-8B's model.safetensors.index.json, 8,044,936,192
#   and 16,381,470,720 bytes bf16 (Qwen3-4B ties lm_head to the embeddings; Qwen3-8B holds both). Qwen's cards
#   say 4.0B and 8.2B.
# - transformer (4B): FLUX.2-klein-4B transformer/diffusion_pytorch_model.safetensors, 7,751,106,000 bytes bf16 in
#   the Hub's listing (to the kB; the same weights as the repo's flux-2-klein-4b.safetensors).
# - transformer (9B): no figure precise enough was found; "a 9B flow model" (BFL) is 0.9% from the 9.08B the config
#   builds, checked within its rounding (ROUNDED_PARAMS). BFL's reference Flux2 class with klein-9B's shapes, less
#   its guidance embedder, has exactly the parameter count the diffusers config builds (the research notes ran it).
# - vae: FLUX.2's, as in flux2.VAE_PARAMS.
PARAMS_4B = Frozen({"transformer": 7_751_106_000 // 2, "text_encoder": 8_044_936_192 // 2, **flux2.VAE_PARAMS})
PARAMS_9B = Frozen({"text_encoder": 16_381_470_720 // 2, **flux2.VAE_PARAMS})
ROUNDED_PARAMS = Frozen({
    "flux2-klein-9b": {"transformer": (9e9, 0.5 / 9, "BFL FLUX.2-klein-9B card: 'a 9B flow model with an 8B Qwen3 "
                                                     "text embedder'")},
})
SOURCE = ("diffusers convert_flux2_to_diffusers.py ({name}); Qwen/{qwen} config.json; FLUX.2 vae/config.json; "
          "counts: Hub file listings and index total_size, see evalkit/families/flux2_klein.py")


def build_modules(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return build_named(configs, dict(transformer=flux2.build_transformer,
                                     text_encoder=lambda c: Qwen3ForCausalLM(Qwen3Config(**c)),
                                     vae=flux2.build_vae))


def build_extras() -> dict[str, Any]:
    """Scheduler, the small Qwen3 tokenizer (Z-Image's: both pipelines render one user turn with Qwen3's template),
    and `is_distilled` (a pipeline config flag): the distilled variants'."""
    from evalkit.families.tokenizers import build_qwen_tokenizer

    return dict(scheduler=flux2.build_scheduler(), tokenizer=build_qwen_tokenizer(qwen3=True), is_distilled=True)


def call_arguments(gen: Mapping[str, Any]) -> dict[str, Any]:
    """No guidance embedder and no negative prompt: guidance 1.0 runs the transformer once per step."""
    return pipeline_arguments(gen)


TOKENIZER_NOTE = flux2.TOKENIZER_NOTE.format(kind="Qwen3", extra="")
_QWEN_NOTE = ("an LLM as the text encoder: Qwen3-4B (klein 4B, 4.02B, lm_head tied to the embeddings) or Qwen3-8B "
              "(klein 9B, 8.19B, a separate 0.62B lm_head). Only the hidden states of layers 9, 18 and 27 reach the "
              "image: layers 28-36 and the logits are computed but never affect it")

FAMILY = ModelFamily(
    key="flux2-klein",
    display="FLUX.2-klein",  # no brackets: rich would read "[klein]" as markup
    pipeline_class="Flux2KleinPipeline",
    components=(
        Component("transformer", DENOISER, DIFFUSERS, quantized=True,
                  note="FLUX.2 MM-DiT: 3.9B (5 double + 20 single blocks) or 9.1B (8 + 24)"),
        Component("text_encoder", TEXT_ENCODER, TRANSFORMERS, quantized=True, note=_QWEN_NOTE),
        Component("vae", VAE, DIFFUSERS, note="FLUX.2's AutoencoderKLFlux2 (84M)"),
    ),
    variants=(
        Variant("flux2-klein-4b", "black-forest-labs/FLUX.2-klein-4B", GenerationDefaults(1024, 1024, 4, 1.0, 512),
                FULL_4B, PARAMS_4B, SOURCE.format(name="klein-4b", qwen="Qwen3-4B"),
                note="the text encoder is as large as the transformer (50% of the pipeline's parameters)"),
        Variant("flux2-klein-9b", "black-forest-labs/FLUX.2-klein-9B", GenerationDefaults(1024, 1024, 4, 1.0, 512),
                FULL_9B, PARAMS_9B, SOURCE.format(name="klein-9b", qwen="Qwen3-8B")),
    ),
    tiny_defaults=GenerationDefaults(128, 128, 4, 1.0, 128),
    tiny_configs=TINY,
    build_modules=build_modules,
    build_extras=build_extras,
    call_arguments=call_arguments,
    tokenizers=(Tokenizer("tokenizer", "qwen3", None),),
    gguf=flux2.GGUF,
    random_weight_scale=flux2.RANDOM_WEIGHT_SCALE,
    # Qwen's real vocabulary (Qwen3's tokens and template) where qwen-tokenizer is installed, as for Z-Image
    random_tokenizers=functools.partial(random_qwen_tokenizers, TOKENIZER_NOTE, qwen3=True),
    tokenizer_note=TOKENIZER_NOTE,
    preload_modules=("diffusers.pipelines.flux2.pipeline_flux2_klein", "transformers.models.qwen3.modeling_qwen3"),
    # 2: the tiny build's tokenizer is the shared Qwen3 one (Z-Image's), no longer a klein-only BPE; the weights are
    # version 1's
    version="2",
)

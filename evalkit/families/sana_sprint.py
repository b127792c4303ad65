"""SANA-Sprint (NVIDIA / MIT, 2025): `SanaSprintPipeline`, SANA's transformer distilled (continuous-time consistency)
to one to four steps, with a guidance embedding instead of classifier-free guidance.

A family of its own, not a variant of evalkit/families/sana.py: it loads with another pipeline class and scheduler
(SCMScheduler), takes other call arguments (no negative prompt, no CFG: guidance_scale feeds the transformer's
guidance embedder; max/intermediate timesteps), and its checkpoints' model_index.json names SanaSprintPipeline. The
components, tokenizer, GGUF support and regional-compile blocks are SANA's, imported from sana.py.

Configs: diffusers' scripts/convert_sana_to_diffusers.py for the Sprint 1.6B (SANA's 20-block 1.6B with
guidance_embeds, guidance_embeds_scale 0.1 and timestep_scale 1.0, as in the Sprint 0.6B diffusers config copy
huggingface.co/deAPI-ai/sanasprint06b1024); SCMScheduler(prediction_type "trigflow", sigma_data 0.5).

Defaults: the Sprint model card / nvlabs.github.io/Sana/docs/sana_sprint: `num_inference_steps=2` at 1024x1024 with
the pipeline's guidance_scale 4.5 (scaled by 0.1 into the embedder; one transformer call per step) and its timesteps
[1.5708, 1.3]; max_sequence_length 300 and the complex human instruction, resolution binning as SANA's.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType as Frozen
from typing import Any, Mapping

from evalkit.families import sana
from evalkit.families.base import GenerationDefaults, Variant, pipeline_arguments

GUIDANCE = dict(guidance_embeds=True, guidance_embeds_scale=0.1, timestep_scale=1.0)
FULL = Frozen({**sana.FULL, "transformer": dict(sana.TRANSFORMER_COMMON, num_layers=20, **GUIDANCE)})
TINY = Frozen({**sana.TINY, "transformer": dict(sana.TINY_TRANSFORMER, **GUIDANCE)})
SCHEDULER = dict(num_train_timesteps=1000, prediction_type="trigflow", sigma_data=0.5)
# The intermediate timestep the card's 2-step schedule uses; the pipeline refuses one for any other step count.
INTERMEDIATE_TIMESTEP = 1.3

# The transformer's "1.6B" is nominal; like SANA-1.5's it is checked against the 20-block SANA 1.6B checkpoint
# (sana.SANA_1600M_CHECKPOINT): the same blocks, plus the 5.9M guidance embedder.
PARAMS = Frozen({"transformer": 1_600_000_000, "text_encoder": sana.GEMMA_PARAMS, "vae": sana.DC_AE_PARAMS})
NOMINAL = ("transformer",)


# Found by the tiny study (tests/test_families_sana.py reproduces both): SANA's linear attention hands its output
# projection a transposed view, which reshapes to a non-contiguous 2-D matrix when the transformer runs one image;
# SanaPipeline always runs two (CFG batches the negative prompt), Sprint one. optimum-quanto's CPU matmuls for int4
# and int8 weights (torch's _weight_int4pack_mm / _weight_int8pack_mm) refuse it. Seen on CPU; CUDA is unverified.
QUANTO_REASON = ("optimum-quanto's {} CPU matmul needs a contiguous input, and SANA's linear attention gives its "
                 "output projection a transposed one when one image runs without CFG")
KNOWN_INCOMPATIBLE = Frozen({("quanto-int4", "cpu"): QUANTO_REASON.format("int4"),
                             ("quanto-int8", "cpu"): QUANTO_REASON.format("int8")})


def build_extras() -> dict[str, Any]:
    from diffusers import SCMScheduler

    return dict(scheduler=SCMScheduler(**SCHEDULER), tokenizer=sana.build_tokenizer())


def call_arguments(gen: Mapping[str, Any]) -> dict[str, Any]:
    """No negative prompt and no CFG: guidance_scale is the embedder's input."""
    return {**pipeline_arguments(gen), "use_resolution_binning": sana.binning(gen),
            "intermediate_timesteps": INTERMEDIATE_TIMESTEP if gen["num_inference_steps"] == 2 else None}


# SANA's record with what Sprint changes: pipeline, variant, tiny build, scheduler and call, and its known CPU
# failures. The components and their builder, the tokenizer, size multiples, GGUF, compile blocks and random-weight
# scale are SANA's.
FAMILY = dataclasses.replace(
    sana.FAMILY,
    key="sana-sprint",
    display="SANA-Sprint",
    pipeline_class="SanaSprintPipeline",
    variants=(
        Variant("sana-sprint-1.6b", "Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers",
                GenerationDefaults(1024, 1024, 2, 4.5, 300), FULL, PARAMS,
                "diffusers scripts/convert_sana_to_diffusers.py (Sprint 1.6B), gemma-2-2b-it and DC-AE f32c32 "
                "config.json; counts: Hub file sizes",
                note="the transformer's '1.6B' is nominal; its blocks are checked against the 20-block SANA 1.6B "
                     "checkpoint (1.605B; Sprint adds a 5.9M guidance embedder)"),
    ),
    tiny_defaults=GenerationDefaults(128, 128, 2, 4.5, 64),
    tiny_configs=TINY,
    build_extras=build_extras,
    call_arguments=call_arguments,
    preload_modules=("diffusers.pipelines.sana.pipeline_sana_sprint", "transformers.models.gemma2.modeling_gemma2"),
    known_incompatible=KNOWN_INCOMPATIBLE,
)

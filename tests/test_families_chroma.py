"""Chroma (`chroma`): the record matches ChromaPipeline, the full-size config matches Chroma1-HD's published size,
evalkit calls it with true CFG and the docs' negative prompt (two transformer passes a step), and the tiny build runs
the whole study with every CPU backend (slow)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from family_checks import (check_gguf_from_bf16, check_listed_by_evalkit_models, check_published_counts,
                           check_regional_compile, denoiser_calls_per_step, run_study)
from evalkit.families import chroma, flux1
from evalkit.families.registry import find_variant
from evalkit.io import read_json


def test_the_record_matches_the_diffusers_pipeline() -> None:
    import diffusers
    from diffusers.loaders import single_file_utils
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    family = chroma.FAMILY
    params = inspect.signature(diffusers.ChromaPipeline.__init__).parameters
    required = {n for n, p in params.items() if n != "self" and p.default is inspect.Parameter.empty}
    assert required == {c.name for c in family.components} | {"tokenizer", "scheduler"}
    assert diffusers.ChromaTransformer2DModel._repeated_blocks == ["ChromaTransformerBlock",
                                                                   "ChromaSingleTransformerBlock"]
    assert "ChromaTransformer2DModel" in SINGLE_FILE_LOADABLE_CLASSES
    assert callable(getattr(single_file_utils, family.gguf.original_converter))
    assert [c.name for c in family.quantizable() if c.quantized] == ["transformer", "text_encoder"]
    # The text encoder and VAE are FLUX.1's, config for config.
    assert chroma.FULL["text_encoder"] is flux1.T5 and chroma.FULL["vae"] is flux1.FLUX_VAE


def test_card_defaults_are_the_docs_example_not_the_pipeline_defaults() -> None:
    import diffusers

    call = inspect.signature(diffusers.ChromaPipeline.__call__).parameters
    fam, v = find_variant("chroma")
    assert fam is chroma.FAMILY and v.hub_id == "lodestones/Chroma1-HD"
    d = v.defaults
    assert (d.height, d.width, d.num_inference_steps, d.guidance_scale, d.max_sequence_length) == \
        (1024, 1024, 40, 3.0, 512)
    assert d.negative_prompt.startswith("low quality, ugly") and d.negative_prompt.endswith("flat colors")
    assert (call["num_inference_steps"].default, call["guidance_scale"].default) == (35, 5.0)
    assert chroma.FAMILY.tiny_defaults.negative_prompt == d.negative_prompt  # the tiny build runs CFG too


def test_full_size_config_matches_the_published_size() -> None:
    check_published_counts(chroma.FAMILY)


def test_true_cfg_runs_the_transformer_twice_per_step() -> None:
    assert denoiser_calls_per_step("chroma") == 2


def test_the_negative_prompt_reaches_the_pipeline() -> None:
    """ChromaPipeline runs CFG against an empty negative prompt when given none, so two passes a step do not show
    that evalkit passes the docs' one: the image must change with it."""
    import diffusers
    import torch

    from evalkit.families.registry import ensure_tiny

    family = chroma.FAMILY
    pipe = diffusers.ChromaPipeline.from_pretrained(str(ensure_tiny(family)))
    pipe.set_progress_bar_config(disable=True)
    d = family.tiny_defaults
    images = []
    for negative in (d.negative_prompt, ""):
        gen = {"height": 32, "width": 32, "num_inference_steps": 2, "guidance_scale": d.guidance_scale,
               "max_sequence_length": d.max_sequence_length, "negative_prompt": negative}
        with torch.no_grad():
            images.append(pipe(prompt="A red cube", generator=torch.Generator("cpu").manual_seed(0), output_type="np",
                               **family.call_arguments(gen)).images)
    assert abs(images[0] - images[1]).max() > 1e-4


def test_gguf_made_by_evalkit_loads_without_key_conversion(tmp_path: Path) -> None:
    assert check_gguf_from_bf16("chroma", tmp_path)["gguf_linear"] > 0


def test_regional_compile_wraps_each_repeated_block() -> None:
    assert check_regional_compile("chroma")["repeated_blocks"] == ["ChromaSingleTransformerBlock",
                                                                   "ChromaTransformerBlock"]


def test_evalkit_models_lists_every_variant() -> None:
    check_listed_by_evalkit_models(chroma.FAMILY)


@pytest.mark.slow
def test_the_tiny_build_runs_the_study_with_every_cpu_backend(tmp_path: Path) -> None:
    # run_study checks every GGUF backend's file and record: diffusers key names, loaded without conversion
    study = run_study("chroma", tmp_path)
    assert read_json(study.run / "manifest.json")["generation"]["negative_prompt"] == chroma.NEGATIVE_PROMPT

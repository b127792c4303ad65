"""SD3.5 (#25): the tiny build through the whole study with every CPU backend, both variants' full-size configs
against the published checkpoints (the positional table is a buffer they include), the cards' calls, regional
compilation of the blocks the class does not declare, and GGUF K-quants falling back where a width is not a multiple
of 256 (SD3.5-Large's 2432; the tiny build's 320) (evalkit/families/sd3.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from family_checks import check_listed_by_evalkit_models, check_published_counts, run_study
from evalkit.families import sd3

FAMILY = sd3.FAMILY


@pytest.mark.slow
def test_the_tiny_build_runs_the_study_with_every_cpu_backend(tmp_path: Path) -> None:
    # run_study checks the GGUF files' keys: the positional table is a buffer, so the file must hold it too, or
    # diffusers would run SD3's converter.
    study = run_study(FAMILY.key, tmp_path)
    assert {"torchao-int8wo", "quanto-int8", "gguf-q2_k", "bnb-nf4", "fp8-layerwise"} <= set(study.backends)
    # The T5 is quantized, the CLIPs are not (0.8B together; the card's pipelines keep them in bf16).
    q = study.record("torchao-int8wo")["quantization"]
    assert q["components_quantized"] == ["transformer", "text_encoder_3"]
    assert q["quantized_linear_count"]["text_encoder"] == q["quantized_linear_count"]["text_encoder_2"] == 0
    _check_k_quants_fall_back_per_tensor(study.record("gguf-q2_k")["quantization"]["gguf_file"],
                                        study.record("gguf-q4_1")["quantization"]["gguf_file"])


def _check_k_quants_fall_back_per_tensor(q2_k: str, q4_1: str) -> None:
    """As SD3.5-Large's 2432-wide layers: Q2_K (256-blocks) takes the 1280-wide feed-forward inputs and leaves the
    320-wide ones in BF16; Q4_1 (32-blocks) takes both. Read from the files evalkit made."""
    import gguf

    for path, qtype, block in ((q2_k, "Q2_K", 256), (q4_1, "Q4_1", 32)):
        types: dict[str, set[str]] = {"fits": set(), "odd": set()}
        for t in gguf.GGUFReader(path).tensors:
            shape = tuple(int(x) for x in reversed(t.shape.tolist()))
            if len(shape) == 2 and t.name.endswith(".weight") and shape[0] * shape[1] > 1024:
                types["fits" if shape[-1] % block == 0 else "odd"].add(t.tensor_type.name)
        if block == 256:
            assert types == {"fits": {qtype}, "odd": {"BF16"}}, types
        else:
            assert types["fits"] == {qtype} and types["odd"] <= {"BF16"}, types


def test_full_size_matches_the_published_checkpoints() -> None:
    assert all(FAMILY.variant(name) is not None for name in ("sd3.5-large", "sd3.5-medium"))
    check_published_counts(FAMILY)


def test_the_positional_table_is_a_buffer_the_counts_include() -> None:
    """Medium's 384^2 x 1536 table is 9% of its checkpoint; counting parameters alone would miss 2.5B by 10%."""
    import torch

    from evalkit.families.base import component_parameter_counts

    v = FAMILY.variant("sd3.5-medium")
    ckpt = component_parameter_counts(FAMILY, v.configs)["transformer"]
    with torch.device("meta"):
        params = sum(p.numel() for p in FAMILY.build_modules(v.configs)["transformer"].parameters())
    assert ckpt - params == 384 * 384 * 1536
    assert abs(params - v.published_params["transformer"]) / v.published_params["transformer"] > 0.05


def test_calls_follow_the_cards() -> None:
    large, medium = FAMILY.variant("sd3.5-large").defaults, FAMILY.variant("sd3.5-medium").defaults
    assert (large.num_inference_steps, large.guidance_scale) == (28, 3.5)
    assert (medium.num_inference_steps, medium.guidance_scale) == (40, 4.5)
    assert large.max_sequence_length == medium.max_sequence_length == 256 and large.negative_prompt == ""
    args = sd3.call_arguments({"height": 1024, "width": 1024, "num_inference_steps": 28, "guidance_scale": 3.5,
                               "max_sequence_length": 256, "negative_prompt": ""})
    assert args == {"height": 1024, "width": 1024, "num_inference_steps": 28, "guidance_scale": 3.5,
                    "negative_prompt": "", "max_sequence_length": 256}


def test_the_clip_g_tokenizer_pads_as_sd3s() -> None:
    extras = sd3.build_extras()
    assert extras["tokenizer_2"].pad_token == "!" and extras["tokenizer"].pad_token == "<|endoftext|>"
    assert extras["tokenizer"]("a red cube").input_ids == extras["tokenizer_2"]("a red cube").input_ids


def test_regional_compile_uses_the_familys_blocks() -> None:
    from types import SimpleNamespace

    import torch
    from diffusers import SD3Transformer2DModel

    from evalkit.errors import EvalkitError
    from evalkit.generate.worker.compile_options import apply_compile, resolve_compile

    settings = resolve_compile(None, "torchao-int8wo", FAMILY.denoiser.name)
    with torch.device("meta"):
        pipe = SimpleNamespace(transformer=SD3Transformer2DModel(**sd3.TINY["transformer"]))
    with pytest.raises(EvalkitError, match="declares no repeated blocks"):
        apply_compile(pipe, settings)
    rec = apply_compile(pipe, settings, FAMILY.compile_blocks)
    assert rec["repeated_blocks"] == ["JointTransformerBlock"] and rec["compiled_regions"] == 2


def test_evalkit_models_lists_every_variant() -> None:
    check_listed_by_evalkit_models(FAMILY)

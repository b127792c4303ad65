"""FLUX.1 (`flux1`: dev, schnell, Krea-dev): variants and their card defaults, the full-size configs against the
published checkpoint sizes, distilled guidance and regional compilation on the tiny build, `evalkit models --json`
listing every variant of every built-in family, and the whole study with every CPU backend (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from family_checks import (check_listed_by_evalkit_models, check_published_counts, check_regional_compile,
                           denoiser_calls_per_step, evalkit_models_json, run_study)
from evalkit.families import flux1
from evalkit.families.registry import find_variant

EVERY_VARIANT = {"flux1": {"flux1-dev", "flux1-schnell", "flux1-krea-dev"}, "flux2": {"flux2-dev"},
                 "flux2-klein": {"flux2-klein-4b", "flux2-klein-9b"}, "chroma": {"chroma"}}


def test_variants_and_card_defaults() -> None:
    defaults = {v.name: v.defaults for v in flux1.FAMILY.variants}
    cut = lambda d: (d.height, d.width, d.num_inference_steps, d.guidance_scale, d.max_sequence_length)  # noqa: E731
    assert cut(defaults["flux1-dev"]) == (1024, 1024, 50, 3.5, 512)
    assert cut(defaults["flux1-schnell"]) == (1024, 1024, 4, 0.0, 256)
    assert cut(defaults["flux1-krea-dev"]) == (1024, 1024, 28, 4.5, 512)
    assert find_variant("flux-dev")[1].name == "flux1-dev"  # the old name still works
    schnell = find_variant("flux1-schnell")[1]
    assert schnell.configs["transformer"]["guidance_embeds"] is False
    assert find_variant("flux1-krea-dev")[1].configs == find_variant("flux1-dev")[1].configs


def test_full_size_configs_match_the_published_sizes() -> None:
    check_published_counts(flux1.FAMILY)


def test_the_count_includes_persistent_buffers_and_counts_tied_tensors_once() -> None:
    """What a checkpoint holds: a BatchNorm's running statistics yes, CLIP's (non-persistent) position ids no,
    T5's shared embedding once."""
    import torch

    from evalkit.families import base

    fam = flux1.FAMILY
    counts = base.component_parameter_counts(fam, fam.tiny_configs)
    with torch.device("meta"):
        built = fam.build_modules(fam.tiny_configs)
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in built.items()}
    assert counts == params  # FLUX.1 has no persistent buffers; T5's tied embedding is counted once
    from evalkit.families import flux2

    vae = base.component_parameter_counts(flux2.FAMILY, flux2.FULL)["vae"]
    with torch.device("meta"):
        module = flux2.build_vae(flux2.FLUX2_VAE)
    assert vae - sum(p.numel() for p in module.parameters()) == 2 * 128 + 1  # BatchNorm2d(128) mean, var, count


def test_distilled_guidance_runs_the_transformer_once_per_step() -> None:
    assert denoiser_calls_per_step("flux1") == 1


def test_regional_compile_wraps_each_repeated_block() -> None:
    assert check_regional_compile("flux1")["repeated_blocks"] == ["FluxSingleTransformerBlock", "FluxTransformerBlock"]


def test_evalkit_models_json_lists_every_variant() -> None:
    rows = evalkit_models_json()
    assert {k: {v["name"] for v in r["variants"]} for k, r in rows.items() if k in EVERY_VARIANT} == EVERY_VARIANT
    for r in rows.values():
        assert r["tiny"]["spec"] == f"tiny:{r['family']}"
        for v in r["variants"]:
            assert v["forms"]["random"]["spec"] == f"random:{v['name']}" and "/" in v["hub_id"]
            assert v["published_params"] and v["source"]
    check_listed_by_evalkit_models(flux1.FAMILY)


@pytest.mark.slow
def test_the_tiny_build_runs_the_study_with_every_cpu_backend(tmp_path: Path) -> None:
    study = run_study("flux1", tmp_path)
    assert "text_encoder_2" in study.record("torchao-int8wo")["quantization"]["components_quantized"]
    assert "text_encoder" not in study.record("torchao-int8wo")["quantization"]["components_quantized"]

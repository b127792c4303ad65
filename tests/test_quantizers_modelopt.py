"""NVIDIA ModelOpt (#26): its configs built with modelopt's own classes (and the three workarounds each shown to be
needed), and a backend run on the tiny model on CPU: census, partial layers, bit-identical rerun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalkit.families.registry import get_family
from evalkit.io import read_json
from evalkit.quantizers.base import BuildContext
from evalkit.quantizers.registry import BACKENDS, quantizer_for

pytest.importorskip("modelopt", reason="nvidia-modelopt is not installed (pip install nvidia-modelopt)")

NAMES = ("modelopt-fp8", "modelopt-fp8-fp8", "modelopt-int8", "modelopt-int4", "modelopt-nf4", "modelopt-nvfp4")


def _config(name: str, model_path: Path):
    b = BACKENDS[name]
    ctx = BuildContext(device="cpu", capability=None, model_path=str(model_path), options=b.options, cache_dir="",
                       family="flux1")
    return quantizer_for(b).config(b, get_family("flux1").denoiser, ctx)


@pytest.mark.parametrize("name", NAMES)
def test_each_recipe_is_a_modelopt_config_diffusers_can_serialise(name: str, tiny_model_path: Path) -> None:
    from diffusers import NVIDIAModelOptConfig
    import modelopt.torch.quantization.config as mcfg

    cfg = _config(name, tiny_model_path)
    assert isinstance(cfg, NVIDIAModelOptConfig)
    assert cfg.quant_type == BACKENDS[name].options["quant_type"]
    # from_pretrained dumps the config for its user agent with sorted keys: that must not raise (workaround 2)
    json.dumps(cfg.to_dict(), sort_keys=True)
    # modelopt's process-wide default is put back as modelopt keeps it (workaround 1 is undone after use)
    assert isinstance(mcfg._default_disabled_quantizer_cfg, list)
    # weights are really quantized (not fake-quantized): diffusers asks modelopt for real-quant weights
    weight = cfg.modelopt_config["quant_cfg"]["*weight_quantizer"]
    assert weight.get("fake_quant") is False
    if name == "modelopt-fp8-fp8":
        assert cfg.modelopt_config["quant_cfg"]["*input_quantizer"].get("enable", True) is not False
    if name == "modelopt-nf4":  # blocks of 128: narrower layers of the tiny transformer stay bf16
        assert "x_embedder" in cfg.modules_to_not_convert and "context_embedder" in cfg.modules_to_not_convert


def test_the_workarounds_are_still_needed() -> None:
    """If a diffusers or modelopt upgrade fixes these, this fails: drop the workaround it names."""
    from diffusers import NVIDIAModelOptConfig

    with pytest.raises(TypeError, match="not a mapping"):  # workaround 1
        NVIDIAModelOptConfig(quant_type="FP8")
    from evalkit.quantizers.modelopt import modelopt_config

    raw = modelopt_config(quant_type="INT4", block_quantize=128, channel_quantize=-1)
    with pytest.raises(TypeError, match="not supported between"):  # workaround 2: the parent's to_dict
        json.dumps(NVIDIAModelOptConfig.to_dict(raw), sort_keys=True)


def test_modelopt_runs_on_cpu_with_packed_weights_and_reruns_bit_identically(study: Path, study_rerun: Path) -> None:
    rec = read_json(study / "generation" / "modelopt-int4.json")
    assert rec["status"] == "ok", rec["reason"]
    q = rec["quantization"]
    types = q["layer_types"]["transformer"]
    packed = sum(n for k, n in types.items() if "QTensorWrapper" in k)
    # workaround 3 ran and packed every quantized layer; modelopt's default exclusions keep the two proj_out in bf16
    compress = q["post_load"]["modelopt_compress"]["transformer"]
    assert compress["compressed_from_root"] and compress["packed_before"] == 0
    assert packed == compress["packed_after"] == q["quantized_linear_count"]["transformer"] == 28
    # the two kept out hold unquantized weights in the run's compute dtype (bf16, or float32 for the tiny model on a
    # CPU without native bf16: the manifest's plan says which); partial_reason None below: nothing computed under it
    planned = read_json(study / "manifest.json")["compute"]["dtypes"]["transformer"]
    assert types[f"RealQuantQuantLinear[Parameter:{planned}]"] == 2 and q["linear_count"]["transformer"] == 30
    assert q["partial_reason"] is None and q["library"] == "nvidia-modelopt"
    assert q["resolved_config"]["transformer"]["config"]["quant_type"] == "INT4"  # the recipe is kept beside post_load
    again = read_json(study_rerun / "generation" / "modelopt-int4.json")
    assert [i["sha256"] for i in again["images"]] == [i["sha256"] for i in rec["images"]]

"""AutoRound (#26): evalkit quantizes with auto-round from bf16, calibrating on the study's own prompts, once
(cached, recorded as `prepare`), and diffusers loads the result; census and bit-identical rerun on CPU.

The study runs SignRound with 2 iterations a block (tests/quant_fixtures.py says why 2 is the fewest that still
tune), so calibration costs about a minute of the session, paid once: the rerun reads evalkit's cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalkit.io import read_json
from evalkit.quantizers.registry import parse_backend_list
from quant_fixtures import AUTOROUND_ITERS, STUDY_PROMPTS

pytest.importorskip("auto_round", reason="auto-round is not installed (pip install auto-round)")


def test_calibration_is_recorded_off_the_load_clock_and_paid_once(study: Path, study_rerun: Path) -> None:
    first = read_json(study / "generation" / "autoround-w4a16.json")
    assert first["status"] == "ok", first["reason"]
    prep = first["prepare"]
    # made by this session's study (or found, with EVALKIT_TEST_CACHE kept between sessions); its time is recorded
    assert prep["calibration_seconds"] > 0 and (prep["cached"] or prep["seconds"] >= prep["calibration_seconds"])
    assert prep["settings"]["options"]["iters"] == AUTOROUND_ITERS and prep["settings"]["nsamples"] == 2
    assert prep["settings"]["generation"]["height"] == 32 and prep["settings"]["generation"]["num_inference_steps"] == 4
    assert prep["quantization_config"]["quant_method"] == "auto-round" and prep["quantization_config"]["bits"] == 4
    # the calibration set is the study's own prompts, kept beside the checkpoint
    cal = json.loads((Path(prep["path"]) / "calibration.json").read_text())
    assert cal["prompts"] == STUDY_PROMPTS.splitlines()
    assert first["load_time_s"] < prep["calibration_seconds"]  # calibration is not loading
    again = read_json(study_rerun / "generation" / "autoround-w4a16.json")
    assert again["prepare"]["cached"] is True and again["prepare"]["path"] == prep["path"]
    assert [i["sha256"] for i in again["images"]] == [i["sha256"] for i in first["images"]]


def test_the_quantized_transformer_is_autorounds_packed_layers(study: Path) -> None:
    q = read_json(study / "generation" / "autoround-w4a16.json")["quantization"]
    types = q["layer_types"]["transformer"]
    packed = sum(n for k, n in types.items() if k.startswith("QuantLinear[") and k.endswith(":int32]"))
    # auto-round quantizes the linears inside the blocks (20 of the tiny transformer's 30), GPTQ-packed int32
    assert packed == q["quantized_linear_count"]["transformer"] == 20 and q["partial_reason"] is None
    assert q["resolved_config"]["transformer"]["config"]["iters"] == AUTOROUND_ITERS


def test_diffusers_alone_refuses_to_quantize_from_bf16(tiny_model_path: Path) -> None:
    """Why evalkit runs auto-round itself: diffusers' AutoRoundConfig only loads prequantized checkpoints."""
    import torch
    from diffusers import AutoRoundConfig, FluxTransformer2DModel

    with pytest.raises(ValueError, match="pre-quantized"):
        FluxTransformer2DModel.from_pretrained(str(tiny_model_path), subfolder="transformer", dtype=torch.bfloat16,
                                               quantization_config=AutoRoundConfig(bits=4))


def test_calibrating_backends_run_only_when_named_or_with_all() -> None:
    assert "autoround-w4a16" not in [s.name for s in parse_backend_list("default")]
    assert "autoround-w4a16" in [s.name for s in parse_backend_list("all")]
    assert "autoround-w4a16" in [s.name for s in parse_backend_list("bf16,autoround-w4a16")]


def test_the_torch_kernels_take_the_planned_dtype_only_while_loading() -> None:
    """auto-round's torch kernels matmul in their input's dtype but list only float16/bfloat16, and its post_init
    would cast a float32-planned model to bf16 (which diffusers refuses for a quantized model): on a float32 plan the
    list is widened while loading, then put back; a bf16 plan changes nothing."""
    import torch
    from auto_round.inference.backend import BackendInfos
    from auto_round_extension.torch.qlinear_torch import QuantLinear

    from evalkit.quantizers.autoround import TORCH_KERNELS, _torch_kernels_accept

    before = {k: list(BackendInfos[k].compute_dtype) for k in TORCH_KERNELS}
    with _torch_kernels_accept("bfloat16") as widened:
        assert widened == []
    with _torch_kernels_accept("float32") as widened:
        assert widened == list(TORCH_KERNELS)
        assert all("float32" in BackendInfos[k].compute_dtype for k in TORCH_KERNELS)
    assert {k: list(BackendInfos[k].compute_dtype) for k in TORCH_KERNELS} == before
    # what makes widening honest: the kernel's forward computes in its input's dtype
    layer = QuantLinear(bits=4, group_size=128, infeatures=128, outfeatures=64, bias=True)
    for dtype in (torch.float32, torch.bfloat16):
        assert layer(torch.randn(3, 128, dtype=dtype)).dtype == dtype

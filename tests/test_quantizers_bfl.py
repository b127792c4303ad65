"""BFL (#26): evalkit writes fp8r/NVFP4 checkpoints in BFL's layout from the bf16 weights (once, cached), and
diffusers' BFLQuantizationConfig loads them through from_single_file; census and bit-identical rerun on CPU."""

from __future__ import annotations

from pathlib import Path

from evalkit.io import read_json
from evalkit.quantizers import checkpoint
from evalkit.quantizers.registry import quantizer_for_library


def test_bfl_nvfp4_is_written_once_and_loads_quantized(study: Path, study_rerun: Path, tiny_model_path: Path) -> None:
    rec = read_json(study / "generation" / "bfl-nvfp4.json")
    assert rec["status"] == "ok", rec["reason"]
    prep = rec["prepare"]
    assert prep["checkpoint"]["quantized_linears"] == 20 and prep["checkpoint"]["seconds"] > 0
    assert prep["checkpoint"]["calibration_prompts"] == 2  # the study's prompts calibrate NVFP4's input scales
    q = rec["quantization"]
    # the linears inside the repeated blocks, as BFL's checkpoints have it; embedders and proj_out stay bf16
    assert q["layer_types"]["transformer"]["BFLNVFP4Linear[Parameter:uint8]"] == 20
    assert q["quantized_linear_count"]["transformer"] == 20 and q["partial_reason"] is None
    # the file is BFL's layout: read back by the BFL library, the size of the model it came from
    facts = quantizer_for_library("bfl").read_file(prep["path"])
    assert facts["scheme"] == "nvfp4" and facts["quantized_linears"] == 20
    assert facts["params"] == checkpoint.component_params(tiny_model_path, "transformer")
    again = read_json(study_rerun / "generation" / "bfl-nvfp4.json")
    assert again["prepare"]["cached"] is True and again["prepare"]["path"] == prep["path"]
    assert [i["sha256"] for i in again["images"]] == [i["sha256"] for i in rec["images"]]


def test_only_files_with_bfl_scales_are_bfls(tmp_path: Path, tiny_model_path: Path) -> None:
    plain = next((tiny_model_path / "transformer").glob("*.safetensors"))
    assert quantizer_for_library("bfl").read_file(str(plain)) is None  # bf16 weights, no weight_scale
    (tmp_path / "x.gguf").write_bytes(b"GGUF" + bytes(60))
    assert quantizer_for_library("bfl").read_file(str(tmp_path / "x.gguf")) is None

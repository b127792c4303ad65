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


def test_a_bfl_transformer_computes_in_the_runs_planned_dtype(tmp_path: Path, tiny_model_path: Path) -> None:
    """BFL's linears dequantize to their `compute_dtype` whatever the input: loaded under a float32 plan (the tiny
    model on a CPU without native bf16) every layer must compute in float32, under a bf16 plan in bf16. A fixed bf16
    met the float32 plan's activations: 'mat1 and mat2 must have the same dtype'."""
    import torch
    from diffusers.quantizers.bfl.utils import BFLFP8RLinear

    from evalkit.quantizers.base import BuildContext
    from evalkit.quantizers.bfl import load_bfl_file, write_checkpoint

    path = tmp_path / "transformer-fp8r.safetensors"
    base = {"device": "cpu", "capability": None, "model_path": str(tiny_model_path), "options": {},
            "cache_dir": str(tmp_path), "family": "flux1"}
    write_checkpoint(BuildContext(**base), "transformer", "fp8r", path)
    for planned in ("float32", "bfloat16"):
        want = getattr(torch, planned)
        model = load_bfl_file(str(path), BuildContext(**base, compute_dtypes={"transformer": planned}), "transformer")
        layers = [m for m in model.modules() if isinstance(m, BFLFP8RLinear)]
        assert len(layers) == 20 and {m.compute_dtype for m in layers} == {want}, planned
        # the layers BFL leaves unquantized (embedders, norms, proj_out) are in the planned dtype too
        floats = {t.dtype for n, t in model.named_parameters() if t.is_floating_point() and t.element_size() > 1
                  and not n.endswith(".weight_scale")}
        assert floats == {want}, (planned, floats)
        x = torch.randn(3, layers[0].in_features, dtype=want)
        assert layers[0](x).dtype == want

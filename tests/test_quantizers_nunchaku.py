"""Nunchaku Lite (#26): prequantized only, and refused by diffusers on CPU and on Hopper. Its config objects are
checked without running, and evalkit's reasons quote diffusers' own refusal texts (read from validate_environment
with the capability faked, so a diffusers that changes them fails here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalkit.quantizers import checkpoint, nunchaku
from evalkit.quantizers.registry import BACKENDS, availability, backend_rows, parse_backend


def _validate(monkeypatch: pytest.MonkeyPatch, precision: str, capability: tuple[int, int]) -> str:
    import torch
    from diffusers import NunchakuLiteQuantizationConfig
    from diffusers.quantizers.nunchaku import nunchaku_quantizer as nq

    cfg = NunchakuLiteQuantizationConfig(svdq_w4a4={"precision": precision, "group_size": 64 if precision == "int4"
                                                    else 16, "rank": 32, "targets": ["transformer_blocks.0.ff.net.2"]})
    monkeypatch.setattr(nq, "is_kernels_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    with pytest.raises(ValueError) as e:
        nq.NunchakuLiteQuantizer(cfg).validate_environment()
    return str(e.value)


def test_the_hopper_and_blackwell_reasons_are_diffusers_own(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _validate(monkeypatch, "int4", (9, 0)) in nunchaku.device_reason("int4", "cuda", (9, 0))
    assert _validate(monkeypatch, "nvfp4", (8, 9)).startswith("Loading Nunchaku NVFP4 checkpoints requires a Blackwell")
    assert "Blackwell" in nunchaku.device_reason("nvfp4", "cuda", (8, 9))
    assert nunchaku.device_reason("int4", "cuda", (8, 9)) is None  # Ada: the GPU itself is accepted


def test_cpu_refusal_quotes_diffusers(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from diffusers import NunchakuLiteQuantizationConfig
    from diffusers.quantizers.nunchaku import nunchaku_quantizer as nq

    monkeypatch.setattr(nq, "is_kernels_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = NunchakuLiteQuantizationConfig(svdq_w4a4={"precision": "int4", "group_size": 64, "rank": 32,
                                                    "targets": ["x"]})
    with pytest.raises(ValueError) as e:
        nq.NunchakuLiteQuantizer(cfg).validate_environment()
    assert str(e.value) in nunchaku.device_reason("int4", "cpu", None)


@pytest.mark.parametrize("device, capability, expect", [
    ("cpu", None, "needs a CUDA GPU"),
    ("cuda", (9, 0), "refuses Hopper"),
    ("cuda", (10, 0), "prequantized only"),
])
def test_the_backends_never_run_and_say_why(device: str, capability, expect: str) -> None:
    rows = {r["name"]: r for r in backend_rows(device, capability)}
    for name in ("nunchaku-svdq-int4", "nunchaku-svdq-nvfp4"):
        assert rows[name]["runs_here"] is False and expect in rows[name]["reason"]
        assert "prequantized only" in rows[name]["reason"] and "--backend NAME=DIR" in rows[name]["reason"]
    assert "Blackwell" in rows["nunchaku-svdq-nvfp4"]["reason"] or capability == (10, 0) or device == "cpu"


def test_a_nunchaku_checkpoint_folder_is_recognised_and_refused_here(tmp_path: Path, tiny_model_path: Path) -> None:
    folder = tmp_path / "svdq"
    folder.mkdir()
    cfg = json.loads((tiny_model_path / "transformer" / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "nunchaku_lite", "svdq_w4a4": {"precision": "int4",
                                  "group_size": 64, "rank": 32, "targets": ["transformer_blocks.0.ff.net.2"]}}
    (folder / "config.json").write_text(json.dumps(cfg))
    from evalkit.families.registry import get_family

    entry = checkpoint.fit_to_model(checkpoint.read_checkpoint("svdq", str(folder)), str(tiny_model_path),
                                    get_family("flux1"))
    try:
        checkpoint.register_checkpoints([entry])
        assert entry["library"] == "nunchaku" and BACKENDS["svdq"].layer_marker == "SVDQW4A4Linear"
        status, reason = availability(parse_backend("svdq"), "cuda", (9, 0))
        assert status == "skipped" and "refuses Hopper" in reason
        status, reason = availability(parse_backend("svdq"), "cuda", (12, 0))  # a GPU diffusers accepts
        assert status == "skipped" and ("remote kernels" in reason or "kernels package" in reason)
        assert "Hopper" not in reason
    finally:
        checkpoint.forget_checkpoints()

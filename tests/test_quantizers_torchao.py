"""torchao additions of #26: the per-row fp8 name, the NVFP4/MX prototypes that say why they cannot run on Hopper
and CPU (their configs built without running), and the CUDA int4 recipe's kernel choice (MSLK's CUTLASS kernels
where mslk serves the GPU, else tinygemm, with the reason and the kernel really used in the record)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from evalkit.families.registry import get_family
from evalkit.quantizers import torchao as ao
from evalkit.quantizers.base import BuildContext
from evalkit.quantizers.registry import BACKENDS, availability, parse_backend, quantizer_for


def _ctx(name: str, model_path: Path, device: str = "cpu", capability=None, **options) -> BuildContext:
    return BuildContext(device=device, capability=capability, model_path=str(model_path),
                        options={**BACKENDS[name].options, **options}, cache_dir="", family="flux1")


def test_fp8dq_row_is_the_per_row_recipe_fp8dq_always_was() -> None:
    spec = parse_backend("torchao-fp8dq-row+compile")
    assert spec.name == "torchao-fp8dq+compile" and spec.backend is BACKENDS["torchao-fp8dq"]
    assert "torchao-fp8dq-row" not in BACKENDS  # one recipe, one directory in a run


@pytest.mark.parametrize("name, cls", [
    ("torchao-nvfp4", "NVFP4DynamicActivationNVFP4WeightConfig"),
    ("torchao-mxfp8", "MXDynamicActivationMXWeightConfig"),
    ("torchao-mxfp4", "MXDynamicActivationMXWeightConfig"),
])
def test_sm100_prototypes_build_their_configs_and_refuse_hopper_and_cpu(name: str, cls: str,
                                                                        tiny_model_path: Path) -> None:
    import torch

    b = BACKENDS[name]
    cfg = quantizer_for(b).config(b, get_family("flux1").denoiser, _ctx(name, tiny_model_path, "cuda", (10, 0)))
    assert type(cfg.quant_type).__name__ == cls
    if name == "torchao-mxfp4":
        assert cfg.quant_type.weight_dtype == torch.float4_e2m1fn_x2
    if name.startswith("torchao-mx"):  # 32-wide blocks: the tiny x_embedder (16 inputs) stays bf16
        assert "x_embedder" in cfg.modules_to_not_convert
    for device, cap, why in (("cpu", None, "SM100"), ("cuda", (9, 0), "this GPU: 9.0")):
        status, reason = availability(parse_backend(name), device, cap)
        assert status == "skipped" and "SM100 (Blackwell)" in reason and why in reason
    assert availability(parse_backend(name), "cuda", (10, 0)) == ("ok", None)


def test_cuda_int4_takes_mslk_where_it_serves_the_gpu_else_tinygemm(tiny_model_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    b = BACKENDS["torchao-int4wo"]
    q = quantizer_for(b)
    comp = get_family("flux1").denoiser
    monkeypatch.setattr(ao, "mslk_int4_unusable", lambda cap: None)
    assert q.config(b, comp, _ctx("torchao-int4wo", tiny_model_path, "cuda", (9, 0))).quant_type.int4_packing_format \
        == "preshuffled"
    monkeypatch.setattr(ao, "mslk_int4_unusable", lambda cap: "the mslk module is not installed")
    cfg = q.config(b, comp, _ctx("torchao-int4wo", tiny_model_path, "cuda", (9, 0)))
    assert cfg.quant_type.int4_packing_format == "tile_packed_to_4d"
    cfg = q.config(b, comp, _ctx("torchao-int4wo", tiny_model_path, "cuda", (9, 0), int4_packing_format="plain"))
    assert cfg.quant_type.int4_packing_format == "plain"  # the option wins
    cfg = q.config(b, comp, _ctx("torchao-int4wo", tiny_model_path, "cuda", (9, 0), int4_packing_format="intx"))
    assert type(cfg.quant_type).__name__ == "IntxWeightOnlyConfig"  # the no-MSLK route that compiles to cuBLAS


def test_mslk_is_judged_by_gpu_generation_and_by_what_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "SM90 only" in ao.mslk_int4_unusable((8, 0)) and "SM90 only" in ao.mslk_int4_unusable((10, 0))
    assert "pip install mslk-cuda" in ao.mslk_int4_unusable((9, 0))  # not installed here
    (tmp_path / "mslk").mkdir()
    (tmp_path / "mslk" / "__init__.py").write_text("")  # an mslk that registers no kernel (PyPI's placeholder-like)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mslk", raising=False)
    assert "registers no bf16i4bf16_shuffled op" in ao.mslk_int4_unusable((9, 0))


def test_int4_records_the_kernel_its_weights_run(tiny_model_path: Path) -> None:
    import torch
    from torchao.quantization import IntxWeightOnlyConfig, PerGroup, quantize_

    lin = torch.nn.Sequential(torch.nn.Linear(64, 8, dtype=torch.bfloat16), torch.nn.Linear(3, 8))
    quantize_(lin[0], IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32), version=2))
    b = BACKENDS["torchao-int4wo"]
    done = quantizer_for(b).post_load(b, SimpleNamespace(transformer=lin), (get_family("flux1").denoiser,),
                                      _ctx("torchao-int4wo", tiny_model_path))
    assert done["int4_kernel"] == {ao.INT4_KERNELS["IntxUnpackedToInt8Tensor"]: 1}
    assert quantizer_for(BACKENDS["torchao-int8wo"]).post_load(BACKENDS["torchao-int8wo"], None, (), None) is None

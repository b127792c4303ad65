"""SDNQ (#26): configs through diffusers' factory and sdnq's own class, the process-wide dynamo limits sdnq raises
put back, and a backend run on the tiny model on CPU: census, the tiny T5 left bf16 and said so, bit-identical rerun."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from evalkit.families.registry import get_family
from evalkit.io import read_json
from evalkit.quantizers.base import BuildContext
from evalkit.quantizers.registry import BACKENDS, quantizer_for

pytest.importorskip("sdnq", reason="sdnq is not installed (pip install sdnq)")

NAMES = ("sdnq-int8", "sdnq-uint4", "sdnq-fp8", "sdnq-uint4-svd", "sdnq-int8-mm")


@pytest.mark.parametrize("name", NAMES)
def test_each_recipe_is_sdnqs_own_config_for_both_kinds_of_component(name: str) -> None:
    import sdnq

    b = BACKENDS[name]
    family = get_family("flux1")
    ctx = BuildContext(device="cpu", capability=None, model_path="", options=b.options, cache_dir="", family="flux1")
    for comp in (family.denoiser, family.component("text_encoder_2")):
        cfg = quantizer_for(b).config(b, comp, ctx)
        assert isinstance(cfg, sdnq.SDNQConfig)
        assert cfg.weights_dtype == b.options["weights_dtype"]
        assert cfg.use_svd is (name == "sdnq-uint4-svd")
        assert cfg.use_quantized_matmul is (name == "sdnq-int8-mm")


def test_sdnq_raises_dynamo_limits_at_import_and_evalkit_puts_them_back() -> None:
    code = ("import torch._dynamo.config as c; before = (c.recompile_limit, c.accumulated_recompile_limit); "
            "import sdnq; raised = (c.recompile_limit, c.accumulated_recompile_limit); "
            "from evalkit.quantizers.sdnq import restore_dynamo_limits; done = restore_dynamo_limits(); "
            "print(before, raised, (c.recompile_limit, c.accumulated_recompile_limit), sorted(done['restored']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == (
        "(8, 256) (8192, 8192) (8, 256) ['accumulated_recompile_limit', 'recompile_limit']")


def test_no_forkserver_imports_sdnq() -> None:
    """Its import changes torch for the whole process: only an sdnq backend's own worker may import it."""
    from evalkit.generate.worker.run import preload_modules

    assert not [m for m in preload_modules(gpu=False) + preload_modules(gpu=True) if m.split(".")[0] == "sdnq"]


def test_sdnq_runs_on_cpu_quantized_and_reruns_bit_identically(study: Path, study_rerun: Path) -> None:
    rec = read_json(study / "generation" / "sdnq-uint4-svd.json")
    assert rec["status"] == "ok", rec["reason"]
    q = rec["quantization"]
    types = q["layer_types"]["transformer"]
    sdnq_layers = sum(n for k, n in types.items() if k.startswith("SDNQLinear["))
    # sdnq's Flux skip list keeps the embedders, proj_out and norm linears in bf16: 19 of the tiny model's 30
    assert sdnq_layers == q["quantized_linear_count"]["transformer"] == 19
    # every linear of the tiny T5 is under sdnq's 16,384-value minimum: left bf16, and the record says so
    assert q["quantized_linear_count"]["text_encoder_2"] == 0
    assert "text_encoder_2: no layer was quantized" in q["partial_reason"]
    assert rec["prepare"]["restored"]["recompile_limit"]["restored_to"] == 8
    assert rec["recipe"]["options"] == {"weights_dtype": "uint4", "use_svd": True}
    again = read_json(study_rerun / "generation" / "sdnq-uint4-svd.json")
    assert [i["sha256"] for i in again["images"]] == [i["sha256"] for i in rec["images"]]

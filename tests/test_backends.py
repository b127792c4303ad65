"""Every backend that can run on CPU generates on the tiny model, and its layers really are quantized.
Backends that cannot run here are recorded as skipped with a reason; nothing crashes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_evalkit
from evalkit.errors import EvalkitError
from evalkit.quantizers.registry import BACKENDS, availability, parse_backend, parse_backend_list
from evalkit.quantizers.base import Library
from evalkit.io import read_json

# What must generate on CPU (environment.md), and which components each must have quantized there.
CPU_EXPECTED = {
    "quanto-int8": ("transformer", "text_encoder_2"),
    "quanto-int4": ("transformer", "text_encoder_2"),
    "quanto-fp8": ("transformer", "text_encoder_2"),
    "torchao-int8wo": ("transformer", "text_encoder_2"),
    "torchao-fp8wo": ("transformer", "text_encoder_2"),
    "torchao-int8dq": ("transformer", "text_encoder_2"),
    "torchao-int4wo": ("transformer", "text_encoder_2"),  # the IntxWeightOnly int4 route on CPU
    "gguf-q8_0": ("transformer",),
    "gguf-q4_1": ("transformer",),
    "gguf-q2_k": ("transformer",),
    "fp8-layerwise": ("transformer",),
    # bitsandbytes through transformers on T5; diffusers' bnb quantizer needs a GPU for the transformer.
    "bnb-nf4": ("text_encoder_2",),
    "bnb-4bit": ("text_encoder_2",),
    "bnb-nf4-dq": ("text_encoder_2",),
    "bnb-8bit": ("text_encoder_2",),
}
# #26's libraries that run on CPU: the least share of the transformer's linears each quantizes on the tiny model, by
# design (ModelOpt keeps proj_out in bf16, and NF4 layers narrower than its block; SDNQ's skip list keeps embedders,
# proj_out and norms; BFL quantizes the linears inside the blocks), and whether the T5 is quantized too (SDNQ's
# minimum layer size leaves every linear of the tiny T5 in bf16, said in partial_reason).
NEW_CPU_EXPECTED = {
    **{f"modelopt-{k}": (0.9, False) for k in ("fp8", "fp8-fp8", "int8", "int4", "nvfp4")},
    "modelopt-nf4": (0.8, False),
    **{f"sdnq-{k}": (0.6, False) for k in ("int8", "uint4", "fp8", "uint4-svd", "int8-mm")},
    "bfl-fp8r": (0.6, False), "bfl-nvfp4": (0.6, False),
}


@pytest.fixture(scope="module")
def all_backends_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Path:
    d = tmp_path_factory.mktemp("allbackends")
    prompts = d / "one.txt"
    prompts.write_text("A cat holding a sign that says hello world\n", encoding="utf-8")
    cfg = d / "options.toml"
    cfg.write_text("[backends.bnb-8bit]\nllm_int8_threshold = 5.0\n", encoding="utf-8")
    out = d / "run"
    r = run_evalkit("generate", str(prompts), "--model", "tiny", "--height", "32", "--width", "32", "--warmup", "0",
                    # the opt-in backends of #26's libraries that run on CPU too: every one's census is checked
                    "--backends", ",".join(["default", "bf16+offload", *NEW_CPU_EXPECTED]), "--config", str(cfg),
                    "--jobs", "2", "--out", str(out),
                    timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.parametrize("name", sorted(CPU_EXPECTED))
def test_cpu_backend_generates_with_quantized_layers(all_backends_run: Path, name: str) -> None:
    rec = read_json(all_backends_run / "generation" / f"{name}.json")
    assert rec["status"] == "ok", f"{name}: {rec.get('reason')}"
    assert len(rec["images"]) == 1 and (all_backends_run / rec["images"][0]["path"]).exists()
    q = rec["quantization"]
    assert tuple(q["components_quantized"]) == CPU_EXPECTED[name]
    for comp in ("transformer", "text_encoder_2"):
        n, total = q["quantized_linear_count"][comp], q["linear_count"][comp]
        if comp in CPU_EXPECTED[name]:
            # Most Linears of the component are quantized. Not all: GGUF keeps odd-width layers in bf16, and
            # diffusers' layerwise casting skips norm and proj_out layers by design.
            assert n > 0 and n >= 0.75 * total, (name, comp, q["layer_types"][comp])
            marker = BACKENDS[name].library.layer_marker  # the marker of real quantization, per library
            assert marker, name
            assert any(marker in k for k in q["layer_types"][comp]), (name, q["layer_types"][comp])
        else:
            assert n == 0, (name, comp, q["layer_types"][comp])
    assert q["resolved_config"], name
    # A quantized component is smaller than the bf16 one.
    ref = read_json(all_backends_run / "generation" / "bf16.json")["footprint"]
    for comp in CPU_EXPECTED[name]:
        if comp == "transformer":
            assert rec["footprint"][comp]["bytes"] < ref[comp]["bytes"], (name, comp)


@pytest.mark.parametrize("name", sorted(NEW_CPU_EXPECTED))
def test_new_library_backend_generates_quantized_on_cpu(all_backends_run: Path, name: str) -> None:
    rec = read_json(all_backends_run / "generation" / f"{name}.json")
    if not BACKENDS[name].library.available():
        assert rec["status"] == "skipped" and "pip install" in rec["reason"]
        return
    assert rec["status"] == "ok", f"{name}: {rec.get('reason')}"
    q = rec["quantization"]
    share, t5 = NEW_CPU_EXPECTED[name]
    n, total = q["quantized_linear_count"]["transformer"], q["linear_count"]["transformer"]
    assert n >= share * total, (name, q["layer_types"]["transformer"])
    marker = BACKENDS[name].library.layer_marker
    assert sum(v for k, v in q["layer_types"]["transformer"].items() if marker in k) == n, (name, marker)
    assert (q["quantized_linear_count"]["text_encoder_2"] > 0) is t5, name
    ref = read_json(all_backends_run / "generation" / "bf16.json")["footprint"]["transformer"]["bytes"]
    assert rec["footprint"]["transformer"]["bytes"] < ref, name


def test_cpu_narrowing_of_bnb_is_stated(all_backends_run: Path) -> None:
    rec = read_json(all_backends_run / "generation" / "bnb-nf4.json")
    assert "transformer left in bf16 on CPU" in (rec["quantization"]["note"] or "")
    # The report flags it as quantizing less than its name says (issue #13.7).
    assert "transformer left in bf16 on CPU" in (rec["quantization"]["partial_reason"] or "")
    assert read_json(all_backends_run / "generation" / "quanto-int8.json")["quantization"]["partial_reason"] is None


def test_backend_options_from_config_reach_the_quantizer(all_backends_run: Path) -> None:
    rec = read_json(all_backends_run / "generation" / "bnb-8bit.json")
    assert rec["recipe"]["options"]["llm_int8_threshold"] == 5.0
    assert rec["quantization"]["resolved_config"]["text_encoder_2"]["config"]["llm_int8_threshold"] == 5.0


def test_backends_that_cannot_run_on_cpu_are_skipped_with_reasons(all_backends_run: Path) -> None:
    summary = read_json(all_backends_run / "summary.json")
    fp8dq = summary["backends"]["torchao-fp8dq"]
    assert fp8dq["status"] == "skipped" and "8.9" in fp8dq["reason"]
    off = summary["backends"]["bf16+offload"]
    assert off["status"] == "skipped" and "accelerator" in off["reason"]
    for name, b in summary["backends"].items():
        assert b["status"] in ("ok", "skipped"), (name, b["reason"])
        if b["status"] != "ok":
            assert b["reason"], name
    assert {n for n, b in BACKENDS.items() if b.in_default} <= set(summary["backends"])


def test_components_flag_limits_what_is_quantized(tmp_path: Path, tiny_model_path: Path) -> None:
    p = tmp_path / "p.txt"
    p.write_text("a red cube\n")
    r = run_evalkit("generate", str(p), "--model", "tiny", "--height", "32", "--width", "32", "--warmup", "0",
                    "--backends", "quanto-int8", "--components", "text_encoder_2", "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr[-2000:]
    q = read_json(tmp_path / "run" / "generation" / "quanto-int8.json")["quantization"]
    assert q["components_quantized"] == ["text_encoder_2"]
    assert q["quantized_linear_count"]["transformer"] == 0 and q["quantized_linear_count"]["text_encoder_2"] > 0


# ---------------------------------------------------------------------------------------------------------------
# Units: names, modifiers, availability


def test_modifiers_parse_in_canonical_order() -> None:
    assert parse_backend("bnb-nf4+offload+compile").name == "bnb-nf4+compile+offload"
    assert parse_backend("bnb-nf4+compile+offload").modifiers == ("compile", "offload")
    with pytest.raises(EvalkitError, match="twice"):
        parse_backend("bf16+compile+compile")
    with pytest.raises(EvalkitError, match="one of"):
        parse_backend("bf16+offload+group-offload")
    with pytest.raises(EvalkitError, match="Did you mean: torchao-int8wo"):
        parse_backend("torchao-int8w")


def test_backend_list_always_starts_with_the_reference() -> None:
    specs = parse_backend_list("bnb-nf4,quanto-int8")
    assert [s.name for s in specs] == ["bf16", "bnb-nf4", "quanto-int8"]
    # `default` leaves out what calibrates for minutes first (AutoRound); `all` is every backend
    assert {s.name for s in parse_backend_list("default")} == {n for n, b in BACKENDS.items() if b.in_default}
    assert {s.name for s in parse_backend_list("all")} == set(BACKENDS)
    seed = {s.name for s in parse_backend_list("seed")}
    assert "torchao-int8dq" not in seed and "gguf-q2_k" in seed and len(seed) == 14


def test_known_incompatible_pair_fails_cleanly_with_its_reason() -> None:
    status, reason = availability(parse_backend("bnb-8bit+offload"), "cuda", (9, 0))
    assert status == "failed" and "10653" in reason
    assert availability(parse_backend("bnb-8bit+offload"), "cuda", (9, 0), attempt_known_failures=True)[0] == "ok"
    assert availability(parse_backend("bnb-nf4+offload"), "cuda", (9, 0))[0] == "ok"


def test_capability_gate() -> None:
    status, reason = availability(parse_backend("torchao-fp8dq"), "cuda", (8, 0))
    assert status == "skipped" and ">= 8.9" in reason and "8.0" in reason
    assert availability(parse_backend("torchao-fp8dq"), "cuda", (9, 0))[0] == "ok"


def test_missing_package_names_the_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    quanto = BACKENDS["quanto-int8"].library
    monkeypatch.setattr(Library, "available", lambda self: self is not quanto)
    status, reason = availability(parse_backend("quanto-int8"), "cpu", None)
    assert status == "skipped" and f"pip install {quanto.pip_name}" in reason
    assert availability(parse_backend("torchao-int8wo"), "cpu", None)[0] == "ok"


def test_every_backend_reaches_its_librarys_quantizer(all_backends_run: Path) -> None:
    """Behaviour is reached through the library's Quantizer (no string keys into loading tables): every backend's
    library has one, and the prepare step of quanto-int4 ran off the load clock."""
    from evalkit.quantizers.base import Quantizer
    from evalkit.quantizers.registry import backend_list, quantizer_for

    for b in backend_list():
        q = quantizer_for(b)
        assert isinstance(q, Quantizer) and q.library is b.library, b.name
    # quanto-int4 builds optimum-quanto's kernels before the load clock: quanto_cuda on CUDA, quanto_cpp on CPU.
    rec = read_json(all_backends_run / "generation" / "quanto-int4.json")
    assert rec["status"] == "ok" and rec["prepare"]["extension"] == "quanto_cpp"
    summary = read_json(all_backends_run / "summary.json")["backends"]["quanto-int4"]
    assert isinstance(summary["prepare_time_s"], float)


@pytest.mark.parametrize("name,on_gpu", [("bf16", False), ("torchao-int8wo", True), ("quanto-int8", True),
                                         ("quanto-int4", True), ("quanto-int8+offload", False)])
def test_quantize_on_load_happens_on_the_gpu_for_torchao_and_quanto(monkeypatch, name, on_gpu) -> None:
    """torchao and optimum-quanto quantize each layer where it is loaded. On CUDA, without offloading, evalkit loads
    with device_map="cuda" so that happens on the GPU (quanto on the CPU took 158 s for int8 and did not finish int4
    in 7 minutes at full size: benchmarks/results/gpu-2026-11-21.md). On the CPU, and with offloading, never."""
    import diffusers

    from evalkit.families.registry import default_family
    from evalkit.generate.worker import loading
    from evalkit.quantizers.base import BuildContext
    from evalkit.quantizers.registry import parse_backend

    spec = parse_backend(name)
    if not spec.backend.library.available():
        pytest.skip(f"{spec.backend.library.pip_name} is not installed here")
    seen: list[dict] = []
    monkeypatch.setattr(diffusers.FluxPipeline, "from_pretrained", classmethod(lambda cls, path, **kw: seen.append(kw)))
    for device in ("cuda", "cpu"):
        ctx = BuildContext(device=device, capability=(9, 0) if device == "cuda" else None, model_path="/nonexistent",
                           options={}, cache_dir="/nonexistent")
        _, info = loading.load_pipeline(spec, ctx, default_family(), None)
        expect = on_gpu and device == "cuda"
        assert (seen[-1].get("device_map") == "cuda") is expect, (name, device, seen[-1])
        assert (info.get("device_map") == "cuda") is expect


def test_torchao_recipes_state_config_version_2_and_the_record_shows_it(all_backends_run: Path) -> None:
    from importlib import metadata

    for name in ("torchao-int8wo", "torchao-fp8wo", "torchao-int8dq", "torchao-int4wo"):
        q = read_json(all_backends_run / "generation" / f"{name}.json")["quantization"]
        assert q["library_version"] == metadata.version("torchao"), name
        for comp in CPU_EXPECTED[name]:
            assert q["resolved_config"][comp]["config_version"] == 2, (name, comp)


def test_torchao_version_is_passed_only_where_the_installed_signature_takes_it() -> None:
    from dataclasses import dataclass

    from evalkit.quantizers.torchao import TORCHAO_CONFIG_VERSION, torchao_config

    @dataclass
    class Old:  # a torchao config from before versions
        group_size: int = 0

    @dataclass
    class New:
        group_size: int = 0
        version: int = 1

    assert torchao_config(Old, group_size=3) == Old(3)
    assert torchao_config(New, group_size=3) == New(3, TORCHAO_CONFIG_VERSION) and TORCHAO_CONFIG_VERSION == 2

    @dataclass
    class Tuning:
        version: int = 1
        set_inductor_config: bool = True

    assert torchao_config(Tuning) == Tuning(TORCHAO_CONFIG_VERSION, False)


def test_quantizing_with_torchao_leaves_inductor_and_matmul_precision_alone(tiny_model_path: Path) -> None:
    """torchao's configs default to switching on inductor's coordinate-descent tuning for the whole process (and, in
    0.17, TF32): with evalkit's recipes, loading a torchao backend changes neither."""
    pytest.importorskip("torchao")
    import torch
    import torch._inductor.config as inductor
    from torchao.quantization import quantize_

    from evalkit.families.registry import default_family
    from evalkit.quantizers.base import BuildContext
    from evalkit.quantizers.registry import BACKENDS, quantizer_for

    ctx = BuildContext(device="cpu", capability=None, model_path=str(tiny_model_path), options={}, cache_dir="/tmp")
    denoiser = default_family().denoiser
    before = (inductor.coordinate_descent_tuning, inductor.coordinate_descent_check_all_directions,
              torch.get_float32_matmul_precision())
    try:
        for name in ("torchao-int8wo", "torchao-int8dq", "torchao-fp8wo"):
            cfg = quantizer_for(BACKENDS[name]).config(BACKENDS[name], denoiser, ctx)
            assert getattr(cfg.quant_type, "set_inductor_config", False) is False, name
            quantize_(torch.nn.Sequential(torch.nn.Linear(64, 64)).to(torch.bfloat16), cfg.quant_type)
            assert (inductor.coordinate_descent_tuning, inductor.coordinate_descent_check_all_directions,
                    torch.get_float32_matmul_precision()) == before, name
    finally:
        inductor.coordinate_descent_tuning, inductor.coordinate_descent_check_all_directions = before[:2]
        torch.set_float32_matmul_precision(before[2])


def test_one_recipe_builder_merges_the_users_options(tmp_path: Path) -> None:
    """The worker's record and the record of a backend that never ran state the same recipe, user options included
    (they used to disagree: only the worker merged --config options in)."""
    from evalkit.quantizers.registry import parse_backend
    from evalkit.generate.spawn import write_unrun_record
    from evalkit.records import build_manifest
    from evalkit.rundir import RunDir

    spec = parse_backend("bnb-8bit+offload")
    recipe = spec.recipe({"llm_int8_threshold": 5.0})
    assert recipe["options"]["llm_int8_threshold"] == 5.0 and recipe["modifiers"] == ["offload"]
    assert recipe["library"] == spec.backend.library.key
    rd = RunDir(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps(build_manifest(
        prompts=[], backends=[spec.name], run_id=None, generation={"height": 64, "width": 64},
        config={"backend_options": {"bnb-8bit": {"llm_int8_threshold": 5.0}}})))
    write_unrun_record(rd, spec, "failed", "known incompatible")
    assert read_json(rd.generation_record(spec.name))["recipe"] == recipe

"""`+compile` settings: read from `--config`, validated with one-line errors, applied (regional or whole), recorded."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from evalkit.errors import EvalkitError
from evalkit.generate.worker.compile_options import (DEFAULT_PRESET, PRESETS, apply_compile, prepare_compile_cache,
                                              resolve_compile, woq_int8pack_guard)
from evalkit.generate.stage import load_config
from conftest import run_evalkit


def _toml(tmp_path: Path, text: str) -> str:
    p = tmp_path / "options.toml"
    p.write_text(text, encoding="utf-8")
    return str(p)


def test_compile_table_and_per_backend_override_resolve(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[compile]\nmode = "max-autotune"\ndynamic = false\n\n'
                           '[backends.bnb-nf4]\ndouble_quant = true\n[backends.bnb-nf4.compile]\nfullgraph = false\n'
                           'regional = false\n\n[backends.torchao-int8wo.compile]\npreset = "seed"\n')
    backend_options, compile_config = load_config(path)
    # The compile sub-table is not a quantizer option (and so not part of the run's identity).
    assert backend_options == {"bnb-nf4": {"double_quant": True}, "torchao-int8wo": {}}
    assert compile_config["file"] == path
    plain = resolve_compile(compile_config, "bf16", "transformer")
    assert (plain.preset, plain.mode, plain.dynamic, plain.regional) == (DEFAULT_PRESET, "max-autotune", False, True)
    bnb = resolve_compile(compile_config, "bnb-nf4", "transformer")
    assert (bnb.mode, bnb.fullgraph, bnb.regional, bnb.dynamic) == ("max-autotune", False, False, False)
    seed = resolve_compile(compile_config, "torchao-int8wo", "transformer")
    assert seed == replace(PRESETS["seed"], component="transformer")  # the component: the family's denoiser
    # The seed study's torchao setting: the whole transformer, max-autotune, one graph.
    assert (seed.regional, seed.mode, seed.fullgraph, seed.component) == (False, "max-autotune", True, "transformer")


def test_default_is_regional_with_mode_default() -> None:
    s = resolve_compile(load_config(None)[1], "bf16", "transformer")
    assert s == replace(PRESETS[DEFAULT_PRESET], component="transformer") and s.regional and s.mode == "default"
    # Coordinate-descent tuning costs minutes of compile at full size: only the seed study's preset asks for it.
    assert not s.coordinate_descent_tuning and PRESETS["seed"].coordinate_descent_tuning


def test_compile_owns_the_inductor_tuning_flags(tiny_model_path: Path) -> None:
    """Whatever loading left behind (torchao's recommended setter turns tuning on), compiling sets the flags its
    settings say and the record states them."""
    import torch._inductor.config as inductor

    before = (inductor.coordinate_descent_tuning, inductor.coordinate_descent_check_all_directions)
    try:
        from diffusers import FluxTransformer2DModel

        class Pipe:
            transformer = FluxTransformer2DModel.from_pretrained(tiny_model_path, subfolder="transformer")

        inductor.coordinate_descent_tuning = True  # as torchao's setter leaves it
        rec = apply_compile(Pipe, resolve_compile({}, "torchao-int8wo", "transformer"))
        assert rec["inductor"]["coordinate_descent_tuning"] is False and inductor.coordinate_descent_tuning is False
        rec = apply_compile(Pipe, resolve_compile({"global": {"coordinate_descent_tuning": True}}, "bf16", "transformer"))
        assert rec["inductor"]["coordinate_descent_check_all_directions"] is True
    finally:
        inductor.coordinate_descent_tuning, inductor.coordinate_descent_check_all_directions = before


def test_woq_int8pack_guard_declines_the_rewrite_and_keys_the_cache(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Inductor lowers torchao's int8 weight-only matmul, `mm(x, w_int8.to(bf16)) * scale`, to
    aten._weight_int8pack_mm (on CUDA too since torch 2.9, where that kernel is built for a few rows). The guard
    declines it on the devices it names. CUDA is the default; here it is told to decline CPU so that the CPU can show
    it working. Its choice must also reach the FX graph cache's key, or a kernel cached under the other choice
    would be reused silently."""
    import torch
    import torch._inductor.config as inductor
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setattr(inductor, "fx_graph_cache", True)
    monkeypatch.setattr(inductor, "post_grad_custom_pre_pass", None)

    def woq(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:  # torchao's Int8Tensor, weight-only
        y = torch.mm(x.reshape(-1, x.shape[-1]), w.t().to(x.dtype)) * s
        return y.reshape(*x.shape[:-1], w.shape[0])

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 32, generator=g).to(torch.bfloat16)
    w = torch.randint(-127, 128, (48, 32), generator=g, dtype=torch.int8)
    s = torch.rand(48, generator=g).to(torch.bfloat16)
    runs = []
    try:
        for reject in ((), ("cpu",), ()):
            torch._dynamo.reset()
            counters.clear()
            guard = woq_int8pack_guard(reject)
            with torch.no_grad():
                y = torch.compile(woq)(x, w, s)
            runs.append((guard, counters["inductor"].get("woq_matcher_count", 0), y))
    finally:
        woq_int8pack_guard(())
    (g0, n0, y0), (g1, n1, y1), (g2, _, y2) = runs
    assert g0["patterns"] > 0 and g1["reject_devices"] == ["cpu"]
    assert n0 >= 1 and n1 == 0  # torch's rewrite, then declined
    assert g0["cache_key"] != g1["cache_key"]
    # The int8pack kernel rounds differently from bf16 mm + mul: the declined run computed the plain way
    assert torch.equal(y1, woq(x, w, s)) and not torch.equal(y0, y1)
    assert torch.equal(y2, y0)  # torch's choice again (from the cache, keyed apart from the declined run)


@pytest.mark.parametrize("text, key", [
    ('[compile]\nmode = "fast"\n', "[compile].mode"),
    ('[compile]\nfullgraph = "yes"\n', "[compile].fullgraph"),
    ('[compile]\ndynamic = 1\n', "[compile].dynamic"),
    ('[compile]\ncomponent = "not a name"\n', "[compile].component"),
    ('[compile]\npreset = "fastest"\n', "[compile].preset"),
    ('[compile]\nregonal = true\n', "[compile].regonal"),
    ('[compile]\ncoordinate_descent_tuning = "on"\n', "[compile].coordinate_descent_tuning"),
    ('[compile]\nwoq_int8pack = 0\n', "[compile].woq_int8pack"),
    ('[backends.bnb-nf4.compile]\nmode = 3\n', "[backends.bnb-nf4.compile].mode"),
    ('[backends.bnb-nf4]\ncompile = true\n', "[backends.bnb-nf4.compile]"),
])
def test_bad_compile_values_name_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = _toml(tmp_path, text)
    with pytest.raises(EvalkitError) as e:
        load_config(path)
    msg = str(e.value)
    assert path in msg and key in msg and "\n" not in msg


def test_a_compile_component_the_family_lacks_is_refused_before_anything_runs(tmp_path: Path,
                                                                             three_prompts: Path) -> None:
    """Which components exist is the model family's fact: `component = "unet"` names none of FLUX.1's."""
    from evalkit.generate.stage import GenerateOptions, prepare_run

    path = _toml(tmp_path, '[compile]\ncomponent = "unet"\n')
    with pytest.raises(EvalkitError) as e:
        prepare_run(GenerateOptions(prompts_file=str(three_prompts), model="tiny", config_file=path,
                                    out=str(tmp_path / "run")))
    assert "unet" in str(e.value) and "FLUX.1" in str(e.value) and path in str(e.value)
    assert not (tmp_path / "run").exists()


def test_bad_compile_value_from_the_cli_is_one_line_exit_2(tmp_path: Path, three_prompts: Path) -> None:
    path = _toml(tmp_path, '[compile]\nmode = "turbo"\n')
    r = run_evalkit("generate", str(three_prompts), "--model", "tiny", "--backends", "bf16+compile",
                    "--config", path, "--out", str(tmp_path / "run"))
    assert r.returncode == 2
    assert f"{path}: [compile].mode = 'turbo'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def test_compile_cache_goes_under_evalkit_cache_and_reports_warmth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    # What importing diffusers' pipelines does to the environment: it must not pass for the user's choice.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    cold = prepare_compile_cache(tmp_path)
    assert cold["inductor"]["dir"] == str(tmp_path / "compile" / "inductor") == os.environ["TORCHINDUCTOR_CACHE_DIR"]
    assert cold["triton"]["dir"] == str(tmp_path / "compile" / "triton") == os.environ["TRITON_CACHE_DIR"]
    assert cold["warm"] is False and cold["inductor"]["set_by"] == "evalkit"
    (tmp_path / "compile" / "inductor" / "fxgraph").mkdir()
    (tmp_path / "compile" / "triton" / "k").write_text("x")
    assert prepare_compile_cache(tmp_path)["warm"] is True
    mine = tmp_path / "mine"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(mine))
    again = prepare_compile_cache(tmp_path)
    assert again["inductor"] == {"dir": str(mine), "env": "TORCHINDUCTOR_CACHE_DIR", "set_by": "user", "warm": False}


def test_regional_compile_wraps_only_the_repeated_blocks(tiny_model_path: Path) -> None:
    from diffusers import FluxTransformer2DModel

    class Pipe:
        transformer = FluxTransformer2DModel.from_pretrained(tiny_model_path, subfolder="transformer")

    info = apply_compile(Pipe, resolve_compile({"global": {"dynamic": False}}, "bf16", "transformer"))
    blocks = [m for m in Pipe.transformer.modules() if type(m).__name__ in Pipe.transformer._repeated_blocks]
    assert info["compiled_regions"] == len(blocks) == 2 and info["regional"] is True
    assert all(b._compiled_call_impl is not None for b in blocks)
    assert Pipe.transformer._compiled_call_impl is None  # the model itself stays eager around the blocks
    whole = apply_compile(Pipe, resolve_compile({"global": {"preset": "whole"}}, "bf16", "transformer"))
    assert whole["regional"] is False and Pipe.transformer._compiled_call_impl is not None


@pytest.mark.slow
def test_compile_run_records_its_settings_and_generates(tmp_path: Path, tiny_model_path: Path) -> None:
    """+compile on the tiny model, regional, end to end (about 2 minutes of inductor on 2 CPU cores)."""
    prompts = tmp_path / "one.txt"
    prompts.write_text("A red cube on a blue table\n", encoding="utf-8")
    path = _toml(tmp_path, '[compile]\nregional = true\ndynamic = false\n')
    out = tmp_path / "run"
    r = run_evalkit("generate", str(prompts), "--model", "tiny", "--height", "64", "--width", "64", "--steps", "2",
                    "--warmup-steps", "1", "--backends", "bf16+compile", "--config", path, "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((out / "generation" / "bf16+compile.json").read_text())
    assert rec["status"] == "ok" and len(rec["images"]) == 1
    c = rec["compile"]
    assert (c["regional"], c["mode"], c["dynamic"], c["compiled_regions"]) == (True, "default", False, 2)
    cache = Path(os.environ["EVALKIT_CACHE"]) / "compile"
    assert c["cache"]["inductor"]["dir"] == str(cache / "inductor") and any((cache / "inductor").iterdir())
    # A 1-step warm-up is not an image's work: a second one, compiled, is what the compile time is measured against.
    first, again = rec["warmup_times_s"]
    assert rec["compile_time_s"] == pytest.approx(first - again) and rec["compile_time_s"] > again
    assert "same calls" in c["time_basis"]
    # Two block types, each compiled; regional compile of the tiny model needs no recompile to the limit.
    assert c["dynamo"]["unique_graphs"] >= 2 and c["dynamo"]["recompile_limit_hit"] is False
    # The measured image ran the graphs the warm-up compiled: nothing compiled again (the dtype observation's hooks
    # once made every first measured image recompile), and the dtypes were still observed.
    assert c["dynamo"]["recompilations"] == 0, c["dynamo"]["recompile_reasons"]
    assert set(rec["numerics"]["activation_dtypes"]) >= {"transformer", "vae"}, rec["numerics"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["compile"]["global"] == {"regional": True, "dynamic": False}


def test_dynamo_stats_names_recompilations_and_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A code object recompiled past torch._dynamo's limit runs eagerly after it: the record must say so."""
    import torch
    import torch._dynamo

    from evalkit.generate.worker.compile_options import dynamo_stats

    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # clears guard failures, not the counters
    counters.clear()
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 2)

    def scale(x: torch.Tensor, n: int) -> torch.Tensor:
        return x * n

    f = torch.compile(scale, dynamic=False, backend="eager")  # eager backend: dynamo's bookkeeping, no inductor
    f(torch.ones(2), 0)
    assert dynamo_stats()["recompile_limit_hit"] is False
    for n in range(1, 5):
        f(torch.ones(2), n)
    stats = dynamo_stats()
    torch._dynamo.reset()
    counters.clear()
    assert stats["recompile_limit_hit"] is True
    assert stats["recompilations"] >= 2 and any("n == 0" in r for r in stats["recompile_reasons"])


def test_compile_time_is_measured_against_a_call_of_the_warm_ups_length() -> None:
    """Qwen-Image's torchao-int8wo+compile (2026-12-06): a 4-step warm-up of 19.5 s, compile included, against
    26.8 s images. Subtracting the image's median gave 0.0 s; the second, compiled warm-up call is the baseline."""
    from evalkit.generate.worker.images import compile_seconds, warm_up_calls, warm_up_is_an_image

    short = {"num_inference_steps": 50, "warmup_steps": 4, "warmup_runs": 1}
    assert not warm_up_is_an_image(short) and warm_up_calls(short, compiled=True) == 2
    assert warm_up_calls(short, compiled=False) == 1  # eager pipelines keep the run's warm-up
    full = {"num_inference_steps": 50, "warmup_runs": 1}
    assert warm_up_is_an_image(full) and warm_up_calls(full, compiled=True) == 1
    batched = {"num_inference_steps": 50, "warmup_runs": 1, "batch_size": 4}  # one prompt against a 4-image batch
    assert not warm_up_is_an_image(batched) and warm_up_calls(batched, compiled=True) == 2
    assert warm_up_calls({**short, "warmup_runs": 0}, compiled=True) == 0  # no warm-up asked, none made
    assert warm_up_calls({**short, "warmup_runs": 3}, compiled=True) == 3

    seconds, basis = compile_seconds([19.5, 2.1], median_s=26.8, warm_up_is_image=False)
    assert seconds == pytest.approx(17.4) and "same calls" in basis
    seconds, basis = compile_seconds([19.5, 2.3, 2.1], median_s=26.8, warm_up_is_image=False)
    assert seconds == pytest.approx(19.5 - 2.2)  # the median of the calls after the first
    seconds, basis = compile_seconds([40.0], median_s=26.8, warm_up_is_image=True)
    assert seconds == pytest.approx(13.2) and "median image" in basis
    seconds, basis = compile_seconds([19.5], median_s=26.8, warm_up_is_image=False)
    assert seconds is None and "shorter than an image" in basis  # not a made-up 0.0
    assert compile_seconds([], median_s=26.8, warm_up_is_image=True)[0] is None

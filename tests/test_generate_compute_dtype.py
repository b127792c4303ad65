"""Compute dtypes on CPUs without native bf16 (issue #24.1): the plan, the manifest, every backend alike, reruns.

`EVALKIT_CPU_BF16=slow` makes this machine decide as a CPU without native bf16 would (the decision is torch's
oneDNN bf16 test, which the environment can only narrow: benchmarks/results/tiny-run-avx2-2026-12-05.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_evalkit
from evalkit.errors import EvalkitError
from evalkit.generate.worker.compute_dtype import (cpu_bf16, legacy_compute, load_dtype, mismatch,
                                                   plan_compute)

FLUX = {"transformer": "denoiser", "text_encoder": "text_encoder", "text_encoder_2": "text_encoder", "vae": "vae"}
NATIVE = {"capability": "AVX512", "native_bf16": True, "basis": "test"}
AVX2 = {"capability": "AVX2", "native_bf16": False, "basis": "test"}


def test_plan_keeps_bf16_where_it_is_native_and_on_cuda() -> None:
    for plan in (plan_compute("cuda", "tiny", FLUX), plan_compute("cpu", "tiny", FLUX, NATIVE),
                 plan_compute("cpu", "local", FLUX, NATIVE)):
        assert set(plan["dtypes"].values()) == {"bfloat16"} and plan["summary"] == ""


def test_plan_without_native_bf16_tiny_all_float32_real_model_only_the_vae() -> None:
    tiny = plan_compute("cpu", "tiny", FLUX, AVX2)
    assert tiny["dtypes"] == {name: "float32" for name in FLUX}
    assert "AVX2" in tiny["reason"] and "every backend alike" in tiny["reason"] and "AVX2" in tiny["summary"]
    real = plan_compute("cpu", "hub", FLUX, AVX2)
    assert real["dtypes"] == {"transformer": "bfloat16", "text_encoder": "bfloat16", "text_encoder_2": "bfloat16",
                              "vae": "float32"}
    assert "never quantized" in real["reason"]
    assert set(legacy_compute(FLUX)["dtypes"].values()) == {"bfloat16"}


def test_cpu_bf16_override_and_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALKIT_CPU_BF16", "slow")
    assert cpu_bf16()["native_bf16"] is False
    monkeypatch.setenv("EVALKIT_CPU_BF16", "native")
    assert cpu_bf16()["native_bf16"] is True
    monkeypatch.setenv("EVALKIT_CPU_BF16", "fast")
    with pytest.raises(EvalkitError, match="EVALKIT_CPU_BF16='fast': expected auto, native or slow"):
        cpu_bf16()


def test_mismatch_flags_only_a_lower_precision_than_planned() -> None:
    assert mismatch({"transformer": "float32"}, {"transformer": {"bfloat16", "float32"}}) == (
        "transformer computed partly in bfloat16, the run's plan says float32")
    # transformers keeps T5's `wo` layers in float32 in a bf16 model: more precision is not a mismatch
    assert mismatch({"text_encoder_2": "bfloat16"}, {"text_encoder_2": {"bfloat16", "float32"}}) is None


def test_a_run_keeps_its_plan_and_a_run_with_images_but_no_plan_stays_bf16(fake_run_dir: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from evalkit.generate.ranks import ensure_compute_plan
    from evalkit.rundir import RunDir

    manifest = json.loads((fake_run_dir / "manifest.json").read_text())
    manifest.pop("compute", None)
    monkeypatch.setenv("EVALKIT_CPU_BF16", "slow")
    line = ensure_compute_plan(RunDir(fake_run_dir), manifest)  # images exist: made before plans were recorded
    assert set(manifest["compute"]["dtypes"].values()) == {"bfloat16"}
    assert line is not None and line.startswith("slow: this CPU has no native bf16 kernels")
    fresh = {**manifest, "compute": None}
    for png in (fake_run_dir / "images").rglob("*.png"):
        png.unlink()
    ensure_compute_plan(RunDir(fake_run_dir), fresh)  # no image yet: this machine's plan
    assert set(fresh["compute"]["dtypes"].values()) == {"float32"}
    monkeypatch.setenv("EVALKIT_CPU_BF16", "native")
    ensure_compute_plan(RunDir(fake_run_dir), fresh)  # a plan, once made, is kept
    assert set(fresh["compute"]["dtypes"].values()) == {"float32"}


def test_vae_alone_in_float32_takes_the_pipelines_bf16_latents(tiny_model_path: Path) -> None:
    """The plan for a real model on a CPU without native bf16, on the tiny pipeline: the VAE loads and computes in
    float32 while the rest computes in bf16, and Flux's bf16 latents reach it cast."""
    import torch
    from diffusers import FluxPipeline

    from evalkit.generate.worker.compute_dtype import cast_inputs, observe_activations

    dtypes = plan_compute("cpu", "hub", FLUX, AVX2)["dtypes"]
    pipe = FluxPipeline.from_pretrained(str(tiny_model_path), dtype=load_dtype(dtypes))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae.dtype == torch.float32 and pipe.transformer.dtype == torch.bfloat16
    assert cast_inputs(pipe, dtypes) == ["vae"]
    with observe_activations(pipe, list(FLUX)) as seen:
        out = pipe("a red cube", generator=torch.Generator("cpu").manual_seed(0), height=32, width=32,
                   num_inference_steps=1, max_sequence_length=16, output_type="np")
    assert seen["vae"] == {"float32"} and seen["transformer"] == {"bfloat16"}
    assert mismatch(dtypes, seen) is None
    assert out.images.shape == (1, 32, 32, 3) and bool((out.images == out.images).all())


def _hashes(run: Path) -> dict[str, list[str]]:
    return {p.stem: sorted(i["sha256"] for i in json.loads(p.read_text())["images"])
            for p in sorted((run / "generation").glob("*.json"))}


@pytest.mark.slow
def test_without_native_bf16_every_backend_computes_in_float32_and_reruns_are_bit_identical(
        three_prompts: Path, tmp_path: Path) -> None:
    backends = "bf16,torchao-int8wo,fp8-layerwise,gguf-q8_0"
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        r = run_evalkit("generate", str(three_prompts), "--model", "tiny", "--height", "32", "--width", "32",
                        "--backends", backends, "--out", str(out), env={"EVALKIT_CPU_BF16": "slow"})
        assert r.returncode == 0, r.stderr[-3000:]
        runs.append(out)
    assert "compute: float32 compute throughout (CPU without native bf16: " in r.stderr
    manifest = json.loads((runs[0] / "manifest.json").read_text())
    assert manifest["compute"]["dtypes"] == {name: "float32" for name in FLUX}
    for backend in backends.split(","):
        rec = json.loads((runs[0] / "generation" / f"{backend}.json").read_text())
        assert rec["status"] == "ok", rec["reason"]
        assert rec["numerics"]["activation_dtypes"] == {name: ["float32"] for name in FLUX}, backend
    layerwise = json.loads((runs[0] / "generation" / "fp8-layerwise.json").read_text())
    assert layerwise["quantization"]["post_load"]["enable_layerwise_casting"]["compute_dtype"] == "float32"
    assert _hashes(runs[0]) == _hashes(runs[1])
    # The reference in float32 is not the reference in bf16: the plan changes the images, as it must.
    native = tmp_path / "native"
    r = run_evalkit("generate", str(three_prompts), "--model", "tiny", "--height", "32", "--width", "32",
                    "--backends", "bf16", "--out", str(native), env={"EVALKIT_CPU_BF16": "native"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert _hashes(native)["bf16"] != _hashes(runs[0])["bf16"]


def test_float32_convolutions_give_the_same_bits_at_any_thread_count() -> None:
    """A rank of `--jobs 2` runs at half the threads of one process, and its images must be byte-identical to one
    process's (docs/distributed.md). oneDNN's float32 convolution partitions its sums by thread count (on an AVX2
    EPYC the tiny VAE's 1x1 conv_shortcut differed by 5e-7 at 1 vs 2 threads, and one image in three changed), so a
    CPU plan with float32 components turns oneDNN off in the worker; a bf16 plan or a GPU leaves it alone."""
    import torch

    from evalkit.generate.worker.compute_dtype import thread_invariant_convolutions

    enabled, threads = torch.backends.mkldnn.enabled, torch.get_num_threads()
    try:
        assert thread_invariant_convolutions("cuda", {"vae": "float32"}) is False
        assert thread_invariant_convolutions("cpu", {"vae": "bfloat16"}) is False
        assert torch.backends.mkldnn.enabled == enabled
        assert thread_invariant_convolutions("cpu", {"transformer": "bfloat16", "vae": "float32"}) is True
        assert torch.backends.mkldnn.enabled is False
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for kernel, cin, cout in ((1, 64, 32), (3, 32, 32), (3, 64, 64)):  # the tiny VAE decoder's shapes
                conv = torch.nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
                x = torch.randn(1, cin, 32, 32, generator=g)
                outs = []
                for n in (1, 2, 3):
                    torch.set_num_threads(n)
                    outs.append(conv(x))
                assert all(torch.equal(outs[0], o) for o in outs[1:]), (kernel, cin, cout)
    finally:
        torch.backends.mkldnn.enabled = enabled
        torch.set_num_threads(threads)

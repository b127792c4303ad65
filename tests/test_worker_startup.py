"""A worker's start-up (#25 item 7): what it records, the GPU preload that takes the family's imports out of every
unit, and what the stage does when that preload leaves CUDA initialized all the same."""

from __future__ import annotations

import io
import os
import sys
import types
from pathlib import Path

import pytest

from evalkit.generate.worker import gpu_preload, startup
from evalkit.io import read_json, sha256_file


def test_uniform_capability_only_when_every_gpu_agrees() -> None:
    assert gpu_preload.uniform_capability([(9, 0), (9, 0)]) == (9, 0)
    assert gpu_preload.uniform_capability([(9, 0), (8, 0)]) is None  # which index is asked would matter
    assert gpu_preload.uniform_capability([]) is None
    assert gpu_preload.uniform_capability(None) is None  # no NVML


def test_capability_from_answers_without_cuda_and_puts_torch_back() -> None:
    import torch

    original = torch.cuda.get_device_capability
    with gpu_preload.capability_from((9, 0), torch):
        assert torch.cuda.get_device_capability() == (9, 0)
        assert torch.cuda.get_device_capability(torch.cuda.device(1)) == (9, 0)
        assert not torch.cuda.is_initialized()
    assert torch.cuda.get_device_capability is original
    with pytest.raises(ZeroDivisionError), gpu_preload.capability_from((9, 0), torch):
        1 / 0
    assert torch.cuda.get_device_capability is original  # also after an error inside


def test_has_triton_is_torchs_answer_for_the_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchao's prototype kernels ask has_triton() at import, which reads the device's properties through dynamo
    and creates a CUDA context (H100, 2026-12-06). Within the preload it is torch's answer for a CUDA device of that
    capability: the triton package importable, and at least 7.0. A module binding it by name keeps that answer."""
    import torch
    import torch.utils._triton as triton_utils

    original = triton_utils.has_triton
    for package, cap, expected in ((True, (9, 0), True), (True, (6, 1), False), (False, (9, 0), False)):
        monkeypatch.setattr(triton_utils, "has_triton_package", lambda package=package: package)
        with gpu_preload.capability_from(cap, torch):
            from torch.utils._triton import has_triton as bound

            assert triton_utils.has_triton() is expected and bound() is expected, (package, cap)
            assert not torch.cuda.is_initialized()
        assert triton_utils.has_triton is original
        assert bound() is expected  # what a module imported during the preload keeps


def _asks_capability_module(tmp_path: Path, name: str) -> None:
    # What bitsandbytes does at import (bitsandbytes/cuda_specs.py): ask the GPU's compute capability.
    (tmp_path / f"{name}.py").write_text("import torch\nSEEN = torch.cuda.get_device_capability()\n")


def test_preload_imports_under_the_nvml_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    _asks_capability_module(tmp_path, "ek_asks_capability")
    said: list[str] = []
    done = gpu_preload.preload({"modules": ["ek_asks_capability", "ek_no_such_module"], "tokenizers": None},
                               (9, 0), said.append)
    assert done == ["ek_asks_capability"]
    assert sys.modules["ek_asks_capability"].SEEN == (9, 0)
    assert any("ek_no_such_module not imported: ModuleNotFoundError" in s for s in said)  # left to the worker
    assert "CUDA initialized: False" in said[-1]


def test_preload_does_nothing_without_one_capability(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    _asks_capability_module(tmp_path, "ek_never_imported")
    said: list[str] = []
    assert gpu_preload.preload({"modules": ["ek_never_imported"]}, None, said.append) == []
    assert gpu_preload.preload({"modules": ["ek_never_imported"]}, (6, 1), said.append) == []  # no triton answer
    assert "ek_never_imported" not in sys.modules and "skipped" in said[0] and "below" in said[1]


def test_preload_from_environment_loads_the_tokenizers(tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from evalkit.families.registry import get_family
    from evalkit.generate.worker import tokenizers

    names = tuple(t.subfolder for t in get_family("flux1").tokenizers)
    monkeypatch.setattr(tokenizers, "_LOADED", {})
    monkeypatch.setattr(gpu_preload, "nvml_capabilities", lambda: [(9, 0)])
    monkeypatch.setenv(gpu_preload.GPU_PRELOAD_ENV, gpu_preload.request(["json"], (str(tiny_model_path), names)))
    assert gpu_preload.preload_from_environment() == ["json"]
    assert {k[1] for k in tokenizers._LOADED} == set(tokenizers.tokenizer_classes(tiny_model_path, names))
    monkeypatch.delenv(gpu_preload.GPU_PRELOAD_ENV)
    assert gpu_preload.preload_from_environment() == []  # no request: nothing


def test_mode_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(gpu_preload.MODE_ENV, raising=False)
    assert gpu_preload.mode() == "full"
    monkeypatch.setenv(gpu_preload.MODE_ENV, "narrow")
    assert gpu_preload.mode() == "narrow"
    monkeypatch.setenv(gpu_preload.MODE_ENV, "all")
    with pytest.raises(ValueError, match="EVALKIT_GPU_PRELOAD='all': expected one of full, narrow"):
        gpu_preload.mode()


def test_gpu_machine_defers_exactly_what_initializes_cuda() -> None:
    from evalkit.families.registry import families
    from evalkit.generate.worker.run import PRELOAD, gpu_deferred_modules, preload_modules

    for fam in families():
        cpu, gpu = preload_modules(False, fam.key), preload_modules(True, fam.key)
        deferred = gpu_deferred_modules(fam.key)
        assert not set(fam.preload_modules) & set(gpu), fam.key  # a pipeline module initializes CUDA on import
        assert set(fam.preload_modules) <= set(deferred), fam.key
        assert set(PRELOAD) <= set(gpu) and not set(gpu) & set(deferred), fam.key
        # Between them, a GPU machine's forkserver imports every module a CPU's does (the tokenizers come through
        # the request, not a module)
        assert set(cpu) - {"evalkit.generate.worker.preload_tokenizers"} <= set(gpu) | set(deferred), fam.key


def test_cuda_capability_tells_a_poisoned_fork_from_other_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def raising(msg: str) -> types.SimpleNamespace:
        def f() -> tuple[int, int]:
            raise RuntimeError(msg)
        return types.SimpleNamespace(cuda=types.SimpleNamespace(get_device_capability=f))

    ok = types.SimpleNamespace(cuda=types.SimpleNamespace(get_device_capability=lambda: (9, 0)))
    monkeypatch.setattr(startup, "_entered", {})
    startup.entered("forkserver")
    assert startup.cuda_capability(ok) == (9, 0)
    with pytest.raises(startup.PoisonedFork, match="initialization error"):
        startup.cuda_capability(raising("CUDA error: initialization error\nmore"))
    with pytest.raises(RuntimeError, match="out of memory"):  # not a fork's problem: the worker's error
        startup.cuda_capability(raising("CUDA error: out of memory"))
    startup.entered("subprocess")  # a fresh interpreter has no forkserver to blame
    with pytest.raises(RuntimeError, match="initialization error") as e:
        startup.cuda_capability(raising("CUDA error: initialization error"))
    assert not isinstance(e.value, startup.PoisonedFork)


def test_startup_is_recorded_per_unit(tiny_run: Path) -> None:
    for name in ("bf16", "torchao-int8wo", "fp8-layerwise"):
        rec = read_json(tiny_run / "generation" / f"{name}.json")
        (rank,) = rec["ranks"]
        s = rank["startup"]
        assert s["worker_mode"] in ("forkserver", "subprocess"), name
        assert s["cuda_context_s"] is None, name  # a CPU run
        parts = [s["spawn_s"], s["setup_s"], s["imports_s"], s["tokenizers_s"]]
        assert all(isinstance(p, float) and p >= 0 for p in parts), (name, s)
        # total is measured end to end, the parts one by one: it holds them all (and not much else here)
        assert sum(parts) - 0.01 <= s["total_s"] <= sum(parts) + 1.0, (name, s)
        if s["worker_mode"] == "forkserver":
            assert s["preloaded"] is True and s["imports_s"] < 0.5, (name, s)  # the forkserver imported them


def test_a_gpu_preload_that_poisons_forks_is_given_up_not_the_forkserver(
        tiny_run: Path, three_prompts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As if on a GPU machine: the forkserver runs the GPU preload (here without NVML it imports nothing, but it is
    imported), and every fork of such a forkserver finds CUDA initialized (tests/poisoned_by_gpu_preload.py). The
    stage restarts the forkserver without it, once, and the rest of the run forks from that one."""
    from rich.console import Console

    import evalkit.generate.spawn as spawn
    import evalkit.generate.worker.run as worker_run
    from evalkit.generate.stage import GenerateOptions, run_generate

    preload = worker_run.preload_modules
    monkeypatch.setattr(worker_run, "preload_modules", lambda *a: (*preload(*a), "poisoned_by_gpu_preload"))
    monkeypatch.setattr(spawn, "nvidia_gpu_present", lambda: True)
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # what the forkserver sets on a GPU machine; undone after
    monkeypatch.setattr(spawn, "_FORK_POISONED", False)
    monkeypatch.setattr(spawn, "_GPU_PRELOAD_GIVEN_UP", False)
    monkeypatch.setenv("EVALKIT_WORKER_MODE", "forkserver")
    monkeypatch.delenv(gpu_preload.MODE_ENV, raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    outcome = tmp_path / "gpu-preload-outcome.json"
    monkeypatch.setattr(gpu_preload, "_outcome_file", lambda family: outcome)
    out = tmp_path / "given-up"

    def run(out: Path) -> None:
        run_generate(GenerateOptions(prompts_file=str(three_prompts), model="tiny", height=64, width=64,
                                     backends="bf16,fp8-layerwise", out=str(out), device="cpu"),
                     console=Console(file=io.StringIO()))

    assert gpu_preload.known_to_poison("flux1") is None
    run(out)
    assert spawn._GPU_PRELOAD_GIVEN_UP and not spawn._FORK_POISONED
    assert "a worker forked for bf16 found CUDA initialized" in gpu_preload.known_to_poison("flux1")
    for b in ("bf16", "fp8-layerwise"):
        rec = read_json(out / "generation" / f"{b}.json")
        assert rec["status"] == "ok", b
        assert rec["ranks"][0]["startup"]["worker_mode"] == "forkserver", b
    assert "reruns it in a fresh process" in (out / "logs" / "bf16.log").read_text()  # the first fork, poisoned
    assert "reruns it in a fresh process" not in (out / "logs" / "fp8-layerwise.log").read_text()
    # The first forkserver's own account (here: no NVML, so it imported nothing) is kept in the run's log, not lost
    # with the server that was replaced
    assert "gpu preload: skipped" in (out / "logs" / "generate.log").read_text()
    for b in ("bf16", "fp8-layerwise"):  # the same images as the shared run's
        assert _hashes(out, b) == _hashes(tiny_run, b), b
    # The next run with these package versions starts without the GPU preload: no poisoned fork, no restart
    monkeypatch.setattr(spawn, "_GPU_PRELOAD_GIVEN_UP", False)
    again = tmp_path / "remembered"
    run(again)
    assert not spawn._GPU_PRELOAD_GIVEN_UP and not spawn._FORK_POISONED
    assert "reruns it" not in (again / "logs" / "bf16.log").read_text()
    assert _hashes(again, "bf16") == _hashes(tiny_run, "bf16")


def _hashes(run: Path, backend: str) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted((run / "images" / backend).glob("*.png"))}


def test_the_schedule_counts_a_units_start_up_as_fixed_cost() -> None:
    from evalkit.generate.schedule import measured_cost

    rec = {"latency": {"median_s": 2.0}, "load_time_s": 5.0, "warmup_times_s": [1.0],
           "ranks": [{"startup": {"total_s": 3.0}}, {"startup": {"total_s": 9.0}}, {"startup": {"total_s": 4.0}}]}
    cost = measured_cost(rec)
    assert (cost.fixed_s, cost.per_image_s) == (4.0 + 5.0 + 1.0, 2.0) and "start-up" in cost.basis
    # A record from before start-up was recorded: load and warm-up only, and the basis says so
    old = measured_cost({**rec, "ranks": [{"startup": None}]})
    assert old.fixed_s == 6.0 and "start-up" not in old.basis


def test_a_poisoning_preload_is_remembered_per_package_versions(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import evalkit.inputs_key as inputs_key

    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path))
    assert {"torch", "diffusers", "transformers", "triton"} <= set(gpu_preload.deciding_packages())
    versions = {"torchao": "0.17.0"}
    monkeypatch.setattr(inputs_key, "package_versions", lambda names: {n: versions.get(n) for n in names})
    gpu_preload.remember_poisoned("flux1", "a worker forked for bf16 found CUDA initialized")
    assert "found CUDA initialized" in gpu_preload.known_to_poison("flux1")
    assert gpu_preload.known_to_poison("qwen-image") is None  # another family's modules: not known
    versions["torchao"] = "0.18.0"  # a new torchao may have fixed it: tried again
    assert "torchao" in gpu_preload.deciding_packages()
    assert gpu_preload.known_to_poison("flux1") is None

"""The generate stage on the tiny model: the run-directory contract, determinism, resume after SIGKILL, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_evalkit
from evalkit.io import read_json, sha256_file


def _hashes(run: Path, backend: str) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted((run / "images" / backend).glob("*.png"))}


# ---------------------------------------------------------------------------------------------------------------
# The run-directory contract (docs/run-directory.md)


def test_run_directory_contract(tiny_run: Path) -> None:
    manifest = read_json(tiny_run / "manifest.json")
    assert manifest["schema_version"] == 2  # schema 2: fid_mode.json is score's own file
    assert manifest["model"]["kind"] == "tiny" and manifest["model"]["random_weights"] is False
    assert manifest["reference_backend"] == "bf16"
    assert manifest["backends"] == ["bf16", "torchao-int8wo", "fp8-layerwise", "torchao-fp8dq"]
    assert manifest["generation"]["height"] == 64 and manifest["generation"]["generator_device"] == "cpu"
    assert manifest["device"]["type"] == "cpu"
    assert manifest["versions"]["torch"] and manifest["versions"]["diffusers"]
    assert "peak_reserved_gib" in manifest["memory_convention"]
    # Comments and blank lines are not prompts; every prompt has an id and a seed.
    texts = [p["text"] for p in manifest["prompts"]]
    assert texts == ["A cat holding a sign that says hello world",
                     "Noir style, a shadowy alleyway with flickering street lamps", "A red cube on a blue table"]
    assert len({p["seed"] for p in manifest["prompts"]}) == 3

    summary = read_json(tiny_run / "summary.json")
    assert list(summary["backends"]) == manifest["backends"]
    for name in ("bf16", "torchao-int8wo", "fp8-layerwise"):
        rec = read_json(tiny_run / "generation" / f"{name}.json")
        assert rec["status"] == "ok", rec.get("reason")
        assert len(rec["images"]) == 3
        for img, p in zip(rec["images"], manifest["prompts"]):
            assert img["path"] == f"images/{name}/{p['id']}_s{p['seed']}.png"
            assert sha256_file(tiny_run / img["path"]) == img["sha256"]
        assert rec["latency"]["n"] == 3 and rec["latency"]["median_s"] > 0
        assert rec["load_time_s"] > 0
        # On CPU, no CUDA-style number is reported: null with a reason, and host RSS under its own name.
        assert rec["memory"]["peak_reserved_gib"] is None and "cpu" in rec["memory"]["cuda_reason"]
        assert rec["memory"]["cpu_peak_rss_gib"] > 0
        assert summary["backends"][name]["status"] == "ok"
    skipped = read_json(tiny_run / "generation" / "torchao-fp8dq.json")
    assert skipped["status"] == "skipped" and "8.9" in skipped["reason"]
    assert summary["backends"]["torchao-fp8dq"]["reason"] == skipped["reason"]
    # No temp files left behind by atomic writes.
    assert not list(tiny_run.rglob("*.tmp"))


def test_quantized_layers_are_really_quantized(tiny_run: Path) -> None:
    ref = read_json(tiny_run / "generation" / "bf16.json")["quantization"]
    assert ref["quantized_linear_count"]["transformer"] == 0
    ao = read_json(tiny_run / "generation" / "torchao-int8wo.json")["quantization"]
    assert ao["components_quantized"] == ["transformer", "text_encoder_2"]
    assert ao["quantized_linear_count"]["transformer"] == ao["linear_count"]["transformer"] > 0
    assert any("Int8" in k for k in ao["layer_types"]["transformer"])
    fp8 = read_json(tiny_run / "generation" / "fp8-layerwise.json")["quantization"]
    assert any("float8_e4m3fn" in k for k in fp8["layer_types"]["transformer"])
    assert fp8["quantized_linear_count"]["text_encoder_2"] == 0  # T5 stays bf16, as in the seed study


def test_quantized_images_differ_from_reference_but_not_wildly(tiny_run: Path) -> None:
    from PIL import Image

    ref = sorted((tiny_run / "images" / "bf16").glob("*.png"))
    q = sorted((tiny_run / "images" / "torchao-int8wo").glob("*.png"))
    diffs = [np.abs(np.asarray(Image.open(a), dtype=float) - np.asarray(Image.open(b), dtype=float)).mean()
             for a, b in zip(ref, q)]
    assert all(0 < d < 64 for d in diffs), diffs


# ---------------------------------------------------------------------------------------------------------------
# Determinism and resume


def test_rerun_is_bit_identical_and_skips_finished_work(tiny_run: Path, three_prompts: Path, tmp_path: Path) -> None:
    # A fresh run in another process gives the same bytes.
    out = tmp_path / "again"
    r = run_evalkit("generate", str(three_prompts), "--model", "tiny", "--height", "64", "--width", "64",
                    "--backends", "bf16", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert _hashes(out, "bf16") == _hashes(tiny_run, "bf16")
    # Rerunning on a finished run spawns no worker: the record and images are left untouched.
    rec = out / "generation" / "bf16.json"
    before = rec.stat().st_mtime_ns
    r = run_evalkit("generate", str(three_prompts), "--model", "tiny", "--height", "64", "--width", "64",
                    "--backends", "bf16", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert rec.stat().st_mtime_ns == before
    assert not (out / "logs" / "bf16.log").read_text().count("worker for bf16") > 1


def test_resume_after_sigkill(tiny_run: Path, three_prompts: Path, tmp_path: Path) -> None:
    """Kill the whole run (parent and worker) mid-generation; the rerun finishes with identical images."""
    out = tmp_path / "killed"
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "evalkit", "generate", str(three_prompts), "--model", "tiny", "--height", "64",
           "--width", "64", "--backends", "bf16", "--warmup", "0", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    partial = out / "generation" / "shards" / "bf16" / "w1-r0.partial.jsonl"  # rank 0 of 1
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if partial.exists() and partial.read_text().count("\n") >= 1:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "run finished before it could be killed; nothing was tested"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "generation" / "bf16.json").exists(), "the record must only appear when the backend finished"
    n_before = len(list((out / "images" / "bf16").glob("*.png")))
    assert 1 <= n_before < 3

    r = run_evalkit(*cmd[3:])
    assert r.returncode == 0, r.stderr[-2000:]
    rec = read_json(out / "generation" / "bf16.json")
    assert rec["status"] == "ok" and rec["resumed_images"] >= 1
    assert _hashes(out, "bf16") == _hashes(tiny_run, "bf16")
    assert not partial.exists() and not list(out.rglob("*.tmp"))


def test_worker_whose_forkserver_initialized_cuda_is_rerun_in_a_fresh_interpreter(
        tiny_run: Path, three_prompts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the H100, a library imported by the forkserver initialized CUDA and every forked worker failed with
    'Cannot re-initialize CUDA in forked subprocess'. A worker that finds itself in such a fork exits with a
    distinct status and the stage reruns it, and every later backend, as a subprocess. Simulated here (no GPU): the
    forkserver also preloads tests/poisoned_fork.py, which makes its forks report a poisoned CUDA."""
    import io

    from rich.console import Console

    import evalkit.generate.spawn as spawn
    import evalkit.generate.worker.run as worker_run
    from evalkit.generate.stage import GenerateOptions, run_generate

    preload = worker_run.preload_modules
    monkeypatch.setattr(worker_run, "preload_modules", lambda *a: (*preload(*a), "poisoned_fork"))
    monkeypatch.setattr(spawn, "_FORK_POISONED", False)  # restored after the test: later runs fork again
    monkeypatch.setenv("EVALKIT_WORKER_MODE", "forkserver")
    # the forkserver is a fresh interpreter: this is how it finds tests/poisoned_fork.py (Python 3.11 ignores the
    # sys.path multiprocessing hands it)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "poisoned"
    run_generate(GenerateOptions(prompts_file=str(three_prompts), model="tiny", height=64, width=64,
                                 backends="bf16,fp8-layerwise", out=str(out)), console=Console(file=io.StringIO()))
    assert spawn._FORK_POISONED
    for b in ("bf16", "fp8-layerwise"):
        assert read_json(out / "generation" / f"{b}.json")["status"] == "ok", b
    # The first backend was tried forked, then rerun; the second went straight to a subprocess.
    assert "reruns it in a fresh process" in (out / "logs" / "bf16.log").read_text()
    assert "reruns it in a fresh process" not in (out / "logs" / "fp8-layerwise.log").read_text()
    assert _hashes(out, "bf16") == _hashes(tiny_run, "bf16")


def test_failed_backend_is_recorded_and_the_run_goes_on(three_prompts: Path, tmp_path: Path, tiny_model_path: Path) -> None:
    # A GGUF file that is not a GGUF file: that backend fails with its reason; the others still generate.
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"\x00not a gguf file" * 10)
    out = tmp_path / "run"
    r = run_evalkit("generate", str(three_prompts), "--model", "tiny", "--height", "64", "--width", "64",
                    "--backends", "bf16,gguf-q8_0", "--gguf-file", str(bad), "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    rec = read_json(out / "generation" / "gguf-q8_0.json")
    assert rec["status"] == "failed" and "bad.gguf" in rec["reason"], rec["reason"]
    assert read_json(out / "generation" / "bf16.json")["status"] == "ok"
    assert read_json(out / "summary.json")["backends"]["gguf-q8_0"]["status"] == "failed"


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one clear line, non-zero exit


@pytest.mark.parametrize("content, expect", [
    (b"", "no prompts"),
    (b"# only a comment\n\n   \n", "no prompts"),
    (b"a fine prompt\n\xff\xfe broken bytes\n", ":2: not UTF-8"),
])
def test_bad_prompts_file(tmp_path: Path, content: bytes, expect: str) -> None:
    p = tmp_path / "prompts.txt"
    p.write_bytes(content)
    r = run_evalkit("generate", str(p), "--model", "tiny", "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    assert expect in r.stderr and str(p) in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_missing_prompts_file_and_model_dir(tmp_path: Path, three_prompts: Path) -> None:
    r = run_evalkit("generate", str(tmp_path / "nope.txt"), "--model", "tiny")
    assert r.returncode == 2 and "prompts file not found" in r.stderr
    r = run_evalkit("generate", str(three_prompts), "--model", str(tmp_path / "no-such-model"))
    assert r.returncode == 2 and "model directory not found" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "empty-model").mkdir()
    r = run_evalkit("generate", str(three_prompts), "--model", str(tmp_path / "empty-model"))
    assert r.returncode == 2 and "no model_index.json" in r.stderr


def test_hub_model_missing_offline_says_how_to_supply_it(three_prompts: Path, tmp_path: Path) -> None:
    t0 = time.time()
    r = run_evalkit("generate", str(three_prompts), "--out", str(tmp_path / "o"),
                    env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2
    assert "black-forest-labs/FLUX.1-dev" in r.stderr and "never downloads" in r.stderr and "--model" in r.stderr
    assert time.time() - t0 < 60  # no silent download retries


def test_unwritable_output_dir(three_prompts: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    r = run_evalkit("generate", str(three_prompts), "--model", "tiny", "--out", str(blocker / "run"))
    assert r.returncode == 2 and "cannot create output directory" in r.stderr and "Traceback" not in r.stderr


def test_unknown_backend_suggests_close_names(three_prompts: Path, tmp_path: Path) -> None:
    r = run_evalkit("generate", str(three_prompts), "--model", "tiny", "--backends", "bnb-nf5", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "unknown backend 'bnb-nf5'" in r.stderr and "bnb-nf4" in r.stderr
    r = run_evalkit("generate", str(three_prompts), "--model", "tiny", "--backends", "bf16+compil", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "unknown modifier 'compil'" in r.stderr and "compile" in r.stderr


def test_changed_settings_refuse_to_mix_into_an_existing_run(tiny_run: Path, three_prompts: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(tiny_run, out)
    r = run_evalkit("generate", str(three_prompts), "--model", "tiny", "--height", "64", "--width", "64", "--steps", "2",
                    "--backends", "bf16", "--out", str(out))
    assert r.returncode == 2 and "num_inference_steps" in r.stderr


def test_long_prompt_is_truncated_by_tokenizers_and_recorded(tmp_path: Path, tiny_model_path: Path) -> None:
    p = tmp_path / "long.txt"
    p.write_text(("a very long prompt about cats " * 400)[:10_000] + "\n", encoding="utf-8")
    out = tmp_path / "run"
    r = run_evalkit("generate", str(p), "--model", "tiny", "--height", "32", "--width", "32", "--backends", "bf16",
                    "--warmup", "0", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    m = read_json(out / "manifest.json")
    tok = m["prompts"][0]["tokens"]
    assert tok["clip_truncated"] and tok["clip"] > 77 and tok["t5_truncated"]
    assert "truncated" in m["tokenization_note"]
    assert read_json(out / "generation" / "bf16.json")["status"] == "ok"


# ---------------------------------------------------------------------------------------------------------------
# Units


def test_image_flags_nan_and_black() -> None:
    from evalkit.generate.worker.images import image_flags

    ok = np.full((8, 8, 3), 0.5, dtype=np.float32)
    assert image_flags(ok) == []
    nan = ok.copy()
    nan[0, 0, 0] = np.nan
    assert "nan" in image_flags(nan)
    assert image_flags(np.zeros((8, 8, 3), dtype=np.float32)) == ["all_black"]
    assert "all_black" in image_flags(np.full((8, 8, 3), np.nan, dtype=np.float32))


def test_prompt_ids_and_seeds_are_stable_and_safe() -> None:
    from evalkit.prompts import parse_prompts, prompt_seed

    a = parse_prompts('<script>alert(1)</script>\n"><img src=x onerror=alert(1)>\n../../etc/passwd\n')
    for p in a:
        assert all(c.isalnum() or c == "-" for c in p.id), p.id
    assert parse_prompts("x\ny\n", base_seed=0)[1].seed == prompt_seed("y", 0)
    assert prompt_seed("y", 0) != prompt_seed("y", 1)
    # The same text keeps its seed wherever it stands in the file.
    assert parse_prompts("x\ny\n")[1].seed == parse_prompts("y\n")[0].seed


def test_help_does_not_import_torch() -> None:
    code = ("import sys, evalkit.cli as c; c.build_parser().format_help(); "
            "bad = [m for m in ('torch', 'diffusers', 'transformers', 'numpy', 'matplotlib') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "evalkit", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "run" in r.stdout and "backends" in r.stdout


def test_backends_command_lists_every_backend_with_reasons() -> None:
    r = run_evalkit("backends", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    names = {row["name"] for row in data["backends"]}
    for n in ("bf16", "bnb-4bit", "bnb-nf4", "bnb-8bit", "torchao-int4wo", "torchao-int8wo", "torchao-fp8wo",
              "quanto-int4", "quanto-int8", "quanto-fp8", "gguf-q2_k", "gguf-q4_1", "gguf-q8_0", "fp8-layerwise",
              "torchao-int8dq", "torchao-fp8dq", "bnb-nf4-dq", "+compile", "+offload", "+group-offload"):
        assert n in names
    for row in data["backends"]:
        if not row["runs_here"]:
            assert row["reason"], row

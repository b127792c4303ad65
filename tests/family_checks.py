"""Shared checks of the family tests for Qwen-Image, Z-Image, SD3.5 and SANA (subprocess runs of the CLI with one thread).
`evalkit run` with bf16 and every backend that can run on this CPU for that family; the quantization census of each
record proves the backend quantized what it says; images are bit-identical when generated again in a fresh run
directory; score, report and check work; the GGUF files evalkit makes hold exactly the model's state_dict keys, so
diffusers loads them without key conversion; and each variant's full-size configs match the published checkpoint.

Kept small: 2 prompts, 64x64 (Sana: 64, its x32 latent is 2x2), 2 steps, no warm-up, one intra-op thread (a fixed
thread count is part of bit-identity on CPU, and one thread is fastest on the shared 2-core machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from evalkit.families.base import ModelFamily
from evalkit.io import read_json

REPO = Path(__file__).resolve().parents[1]
PROMPTS = "A red cube on a blue table\nA lighthouse at dusk, oil painting\n"
METRICS = "lpips_alex,ssim,psnr"
ENV = {"EVALKIT_THREADS": "1"}


def cpu_backends(family: ModelFamily) -> list[str]:
    """Every registered backend that can run on this CPU for `family`, as the quantizers' own availability says
    (a library not installed here is left out, as `evalkit backends` would say)."""
    from evalkit.quantizers.registry import availability, backend_list, parse_backend

    return [b.name for b in backend_list() if not b.reference
            and availability(parse_backend(b.name), "cpu", None, family=family)[0] == "ok"]


def evalkit(*args: str, timeout: float = 3000) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **ENV}
    return subprocess.run([sys.executable, "-m", "evalkit", *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=timeout)


def run_study(root: Path, family: ModelFamily, backends: list[str], *, score: bool = True, size: int = 64,
              steps: int = 2) -> Path:
    """`evalkit run` (or only `generate` with score=False) on tiny:<family> into root/run; asserts it succeeded."""
    root.mkdir(parents=True, exist_ok=True)
    prompts = root / "two.txt"
    prompts.write_text(PROMPTS, encoding="utf-8")
    out = root / "run"
    common = ["--model", f"tiny:{family.key}", "--backends", ",".join(["bf16", *backends]), "--out", str(out),
              "--height", str(size), "--width", str(size), "--steps", str(steps), "--warmup", "0"]
    if score:
        r = evalkit("run", str(prompts), *common, "--metrics", METRICS, "--report-formats", "png")
    else:
        r = evalkit("generate", str(prompts), *common)
    assert r.returncode == 0, r.stderr[-4000:]
    return out


def record(run: Path, backend: str) -> dict[str, Any]:
    return read_json(run / "generation" / f"{backend}.json")


def assert_census(run: Path, family: ModelFamily, backends: list[str]) -> None:
    """Each backend generated both images and quantized exactly the components it says (most of their Linear
    layers, with its library's marker), and nothing else."""
    from evalkit.quantizers.registry import BACKENDS, resolve_components

    quantizable = [c.name for c in family.quantizable()]
    for name in backends:
        rec = record(run, name)
        assert rec["status"] == "ok", (name, rec.get("reason"))
        assert len(rec["images"]) == 2 and not any(e["flags"] for e in rec["images"]), (name, rec["images"])
        q = rec["quantization"]
        expected = [c.name for c in resolve_components(BACKENDS[name], family, None, "cpu")[0]]
        assert q["components_quantized"] == expected, (name, q["components_quantized"], expected)
        marker = BACKENDS[name].library.layer_marker
        for comp in quantizable:
            n, total = q["quantized_linear_count"][comp], q["linear_count"][comp]
            if comp in expected:
                # Most, not all: GGUF keeps tiny tensors exact and layerwise casting skips norms and projections.
                assert n > 0 and n >= 0.5 * total, (name, comp, q["layer_types"][comp])
                assert any(marker in k for k in q["layer_types"][comp]), (name, comp, q["layer_types"][comp])
            else:
                assert n == 0, (name, comp, q["layer_types"][comp])
        if "gguf_summary" in q:  # a GGUF layer may hold a BF16 fallback: the file must hold the type it names
            qtype = rec["recipe"]["options"]["qtype"]
            assert q["gguf_summary"]["tensor_types"].get(qtype, 0) > 0, (name, q["gguf_summary"])
    bf16 = record(run, "bf16")
    assert bf16["quantization"]["components_quantized"] == []
    assert all(n == 0 for n in bf16["quantization"]["quantized_linear_count"].values())


def image_hashes(run: Path, backends: list[str]) -> dict[tuple[str, str], str]:
    return {(b, e["prompt_id"]): e["sha256"] for b in backends for e in record(run, b)["images"]}


def assert_scored_reported_checked(run: Path, family: ModelFamily, backends: list[str], tmp: Path) -> None:
    """Every backend has its metrics, the report names the family, and check passes bounds every backend meets and
    fails one that a backend misses."""
    from evalkit.cli import main

    for name in backends:
        metrics = read_json(run / "metrics" / f"{name}.json")["metrics"]
        for m in METRICS.split(","):
            assert metrics[m]["status"] == "ok" and metrics[m]["mean"] is not None, (name, m, metrics[m])
    manifest = read_json(run / "manifest.json")
    assert manifest["model"]["family"] == family.key and manifest["model"]["pipeline_class"] == family.pipeline_class
    page = (run / "index.html").read_text(encoding="utf-8")
    assert family.display in page and all(b in page for b in backends)
    bounds = tmp / "bounds.toml"
    bounds.write_text("".join(f'[backends."{b}"]\nlpips_alex_max = 0.99\n' for b in backends), encoding="utf-8")
    assert main(["check", str(run), "--thresholds", str(bounds)]) == 0
    worst = max(backends, key=lambda b: read_json(run / "metrics" / f"{b}.json")["metrics"]["lpips_alex"]["mean"])
    bounds.write_text(f'[backends."{worst}"]\nlpips_alex_max = 1e-9\n', encoding="utf-8")
    assert main(["check", str(run), "--thresholds", str(bounds)]) == 1


def gguf_keys(path: str | Path) -> set[str]:
    import gguf

    return {t.name for t in gguf.GGUFReader(str(path)).tensors}


def assert_gguf_is_loaded_without_conversion(run: Path, family: ModelFamily, backend: str = "gguf-q8_0") -> None:
    """diffusers' from_single_file skips the family's key converter only when the file's keys equal the model's
    state_dict keys exactly, buffers included (`_should_convert_state_dict_to_diffusers`); evalkit's file must."""
    import torch
    from diffusers.loaders.single_file_model import _should_convert_state_dict_to_diffusers

    assert family.gguf is not None
    rec = record(run, backend)
    with torch.device("meta"):
        model = family.build_modules(family.tiny_configs)[family.gguf.component]
    keys = gguf_keys(rec["quantization"]["gguf_file"])
    state = model.state_dict()
    assert keys == set(state), (sorted(keys ^ set(state))[:5])
    assert not _should_convert_state_dict_to_diffusers(state, dict.fromkeys(keys))
    assert rec["quantization"]["gguf_summary"]["key_names"] == "diffusers"


def checkpoint_deviation(family: ModelFamily, configs: Mapping[str, Mapping[str, Any]],
                         published: Mapping[str, int]) -> dict[str, float]:
    """component -> relative deviation of the meta-built checkpoint count from the published figure."""
    from evalkit.families.base import component_parameter_counts

    counts = component_parameter_counts(family, configs)
    assert set(published) <= set(counts), (set(published) - set(counts))
    return {name: (counts[name] - n) / n for name, n in published.items()}


def assert_listed_by_evalkit_models(family: ModelFamily) -> None:
    """`evalkit models --json` lists the family, its tiny spec and every variant with its forms and counts."""
    r = evalkit("models", "--json", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    row = next(f for f in json.loads(r.stdout)["families"] if f["family"] == family.key)
    assert row["tiny"]["spec"] == f"tiny:{family.key}" and row["pipeline_class"] == family.pipeline_class
    assert [v["name"] for v in row["variants"]] == [v.name for v in family.variants]
    for v, listed in zip(family.variants, row["variants"]):
        assert listed["forms"]["random"]["spec"] == f"random:{v.name}" and listed["hub_id"] == v.hub_id
        assert listed["published_params"] == dict(v.published_params)

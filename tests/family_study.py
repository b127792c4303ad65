"""What every model family's tests check, in one place (tests/test_families_<family>.py call these):

- `run_study`: `evalkit run` on `tiny:<family>` with bf16 and every backend evalkit says runs on this CPU, then the
  census of each record against the family's declared components, scoring, the report, `evalkit check` with a
  thresholds file for the run's backends (passing and failing), and a second generate into another directory whose
  images must be bit-identical.
- `check_published_counts`: every variant's full-size configs, built on the meta device, against the published
  counts (0.5%), and the rounded-only figures within their rounding.
- `check_regional_compile`: `+compile`'s regional path wraps each of the denoiser's repeated blocks.

Workers run with one torch thread (EVALKIT_THREADS=1): on the shared 2-core machine two threads made a tiny FLUX.2
image 30x slower (OpenMP spinning under load), and image bytes are per thread count anyway.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

TWO_PROMPTS = "A red cube on a blue table\nA lighthouse at dusk, oil painting\n"
METRICS = "lpips_alex,ssim,psnr"


def cpu_backends(family: Any) -> list[str]:
    """Every backend (no modifiers) whose availability on this CPU is 'ok' for the family: the quantizers decide."""
    from evalkit.quantizers.registry import availability, backend_list, parse_backend

    return [b.name for b in backend_list()
            if availability(parse_backend(b.name), "cpu", None, family=family)[0] == "ok"]


def expected_components(family: Any, backend: str) -> set[str]:
    """What the family's record says a backend quantizes here: its components marked quantized in the backend's
    roles, less what the backend's library cannot quantize on a CPU."""
    from evalkit.quantizers.registry import parse_backend

    b = parse_backend(backend).backend
    return {c.name for c in family.components if c.quantized and c.role in b.roles
            and (b.cpu_config_libraries is None or c.config_library in b.cpu_config_libraries)}


def _images(run: Path, backend: str) -> dict[str, str]:
    rec = json.loads((run / "generation" / f"{backend}.json").read_text())
    return {i["prompt_id"]: i["sha256"] for i in rec["images"]}


def run_study(family_key: str, tmp_path: Path, monkeypatch: Any, size: int = 64,
              expected_failures: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The whole study on the tiny build; returns {backends, records, run, manifest} for family-specific assertions.
    `expected_failures`: backend -> words of the reason its record must give (a library's own failure on CPU)."""
    from evalkit.cli import main
    from evalkit.families.registry import get_family

    family = get_family(family_key)
    monkeypatch.setenv("EVALKIT_THREADS", "1")
    prompts = tmp_path / "two.txt"
    prompts.write_text(TWO_PROMPTS, encoding="utf-8")
    backends = cpu_backends(family)
    assert backends[0] == "bf16" and len(backends) > 8, backends
    run = tmp_path / "run"
    common = ["--model", f"tiny:{family_key}", "--backends", ",".join(backends), "--height", str(size), "--width",
              str(size)]
    assert main(["run", str(prompts), *common, "--out", str(run), "--metrics", METRICS, "--report-formats", "png"]) == 0

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model"]["family"] == family_key and manifest["model"]["pipeline_class"] == family.pipeline_class
    assert manifest["generation"]["guidance_scale"] == family.tiny_defaults.guidance_scale
    records: dict[str, dict[str, Any]] = {}
    expected_failures = dict(expected_failures or {})
    for name in backends:
        rec = json.loads((run / "generation" / f"{name}.json").read_text())
        records[name] = rec
        if name in expected_failures:
            assert rec["status"] == "failed" and expected_failures[name] in rec["reason"], (name, rec["reason"])
            continue
        assert rec["status"] == "ok", (name, rec["reason"])
        assert len(rec["images"]) == 2 and not any(i["flags"] for i in rec["images"]), (name, rec["images"])
        q = rec["quantization"]
        want = expected_components(family, name)
        # The census: every component the family marks quantized for this backend has quantized layers, of the
        # library's own kind; every other component has none.
        assert set(q["components_quantized"]) == want, (name, q["components_quantized"])
        for comp in (c.name for c in family.quantizable()):
            count = q["quantized_linear_count"][comp]
            assert (count > 0) == (comp in want), (name, comp, count, q["layer_types"][comp])
        marker = rec["recipe"].get("library")
        if want:
            from evalkit.quantizers.registry import LIBRARIES

            layer = LIBRARIES[marker].layer_marker
            for comp in want:
                assert any(layer in t for t in q["layer_types"][comp]), (name, comp, q["layer_types"][comp])
        if name != "bf16":
            metrics = json.loads((run / "metrics" / f"{name}.json").read_text())["metrics"]
            for m in METRICS.split(","):
                assert metrics[m]["status"] == "ok" and metrics[m]["n"] == 2, (name, m, metrics[m])

    page = (run / "index.html").read_text(encoding="utf-8")
    assert family.display in page and all(b in page for b in backends)

    # The release gate, with bounds for exactly this run's backends: loose ones pass, one impossible bound fails,
    # and a bound on a backend that failed generation fails.
    ok = [b for b in backends[1:] if b not in expected_failures]
    bounds = tmp_path / "bounds.toml"
    bounds.write_text("".join(f"[backends.{b}]\nlpips_alex_max = 0.9\nssim_min = 0.1\n" for b in ok),
                      encoding="utf-8")
    assert main(["check", str(run), "--thresholds", str(bounds)]) == 0
    bounds.write_text(f"[backends.{ok[0]}]\nlpips_alex_max = 1e-12\n", encoding="utf-8")
    assert main(["check", str(run), "--thresholds", str(bounds)]) == 1
    for name in expected_failures:
        bounds.write_text(f"[backends.{name}]\nlpips_alex_max = 0.9\n", encoding="utf-8")
        assert main(["check", str(run), "--thresholds", str(bounds)]) == 1

    # Rerun into a fresh directory: every backend's images are the same bytes.
    again = tmp_path / "again"
    assert main(["generate", str(prompts), *common, "--out", str(again)]) == 0
    for name in ["bf16", *ok]:
        assert _images(again, name) == _images(run, name), name
    return {"backends": backends, "records": records, "run": run, "manifest": manifest}


def check_published_counts(family: Any, rounded: Mapping[str, Mapping[str, tuple[float, float, str]]]) -> None:
    """Each variant's components on the meta device: within 0.5% of the published count, or -- where only a rounded
    figure exists (the module says why) -- within that figure's rounding. Every component must have one or the
    other."""
    from evalkit.families.base import component_parameter_counts

    for v in family.variants:
        counts = component_parameter_counts(family, v.configs)
        assert set(counts) == {c.name for c in family.components}, (v.name, counts)
        for comp, published in v.published_params.items():
            assert abs(counts[comp] / published - 1) < 0.005, (v.name, comp, counts[comp], published)
        for comp, (value, half_width, _source) in rounded.get(v.name, {}).items():
            assert comp not in v.published_params, (v.name, comp)
            assert abs(counts[comp] / value - 1) <= half_width, (v.name, comp, counts[comp], value)
        covered = set(v.published_params) | set(rounded.get(v.name, {}))
        assert covered == set(counts), (v.name, set(counts) - covered)


def check_regional_compile(family_key: str) -> dict[str, Any]:
    """Load the tiny pipeline and apply `+compile`'s default (regional) settings as the worker does. torch.compile
    is lazy, so this only wraps the blocks; returns the record."""
    import diffusers
    import torch

    from evalkit.families.registry import ensure_tiny, get_family
    from evalkit.generate.worker.compile_options import apply_compile, resolve_compile

    family = get_family(family_key)
    pipe = getattr(diffusers, family.pipeline_class).from_pretrained(str(ensure_tiny(family)), dtype=torch.bfloat16)
    record = apply_compile(pipe, resolve_compile(None, "bf16", family.denoiser.name))
    denoiser = getattr(pipe, family.denoiser.name)
    assert record["regional"] is True and record["target"] == family.denoiser.name
    assert set(record["repeated_blocks"]) == set(denoiser._repeated_blocks), record
    blocks = [m for m in denoiser.modules() if type(m).__name__ in denoiser._repeated_blocks]
    assert record["compiled_regions"] == len(blocks) > 0, record
    # nn.Module.compile wraps the module's call: each block, and only the blocks, will run compiled.
    assert all(getattr(m, "_compiled_call_impl", None) is not None for m in blocks)
    assert getattr(denoiser, "_compiled_call_impl", None) is None
    return record


def denoiser_calls_per_step(family_key: str, steps: int = 2) -> float:
    """How many times the tiny pipeline runs its denoiser per step when called as evalkit calls it (the family's
    call_arguments over its tiny defaults, a CPU generator): 1 for distilled guidance, 2 for true CFG."""
    import diffusers
    import torch

    from evalkit.families.registry import ensure_tiny, get_family

    family = get_family(family_key)
    d = family.tiny_defaults
    gen = {"height": 32, "width": 32, "num_inference_steps": steps, "guidance_scale": d.guidance_scale,
           "max_sequence_length": d.max_sequence_length, "negative_prompt": d.negative_prompt}
    pipe = getattr(diffusers, family.pipeline_class).from_pretrained(str(ensure_tiny(family)))
    pipe.set_progress_bar_config(disable=True)
    calls = []
    getattr(pipe, family.denoiser.name).register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        pipe(prompt="A red cube", generator=torch.Generator("cpu").manual_seed(0), output_type="np",
             **family.call_arguments(gen))
    return len(calls) / steps


def check_gguf_from_bf16(family_key: str, cache: Path, qtype: str = "Q8_0") -> dict[str, Any]:
    """evalkit's own converter writes the tiny denoiser to GGUF with diffusers' key names and the family's denoiser
    class loads it through from_single_file without conversion: every Linear becomes a GGUFLinear."""
    import torch

    from evalkit.families.registry import ensure_tiny, get_family
    from evalkit.quantizers.gguf import convert

    family = get_family(family_key)
    support = family.gguf
    assert support is not None and support.component == family.denoiser.name
    path = convert.ensure_gguf(str(ensure_tiny(family)), qtype, cache, support.component, support.arch)
    model, summary = convert.load_gguf_component(path, str(ensure_tiny(family)), support.component, torch.bfloat16,
                                                 support.original_key_markers, support.original_converter)
    counts = convert.gguf_quantized_layer_counts(model)
    assert summary["key_names"] == "diffusers", summary
    assert counts["other_linear"] == 0 and counts["gguf_params_by_type"].get(qtype, 0) > 0, counts
    return counts

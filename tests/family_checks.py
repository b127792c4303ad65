"""What every model family's tests check, in one place (tests/test_families_<family>.py call these).

- `run_study`: `evalkit run` on `tiny:<family>` with bf16 and every backend that can run on this CPU for the family
  (the quantizers' own availability decides), plus the backends expected to fail (a library's failure on CPU, the
  family's known incompatibilities), then checks the run: the census of each record against the family's declared
  components, the GGUF files' key names, scoring, the report, `evalkit check` with bounds for the run's backends
  (passing and failing), and a second `generate` into a fresh directory whose images must be bit-identical for every
  backend. Returns the `Study` for the family's own assertions.
- `check_published_counts`, `checkpoint_deviation`: each variant's full-size configs built on the meta device
  against the published checkpoint counts.
- `check_regional_compile`, `denoiser_calls_per_step`, `check_gguf_from_bf16`, `check_listed_by_evalkit_models`:
  the tiny build's compile regions, guidance passes, GGUF conversion and the `evalkit models --json` listing.

Kept small: 2 prompts, 64x64 (SANA's x32 latent is 2x2), 2 steps, no warm-up (a tiny image takes ~50 ms; a study's
time is its workers' start-up, one per backend and command), one intra-op thread in the workers
(`--threads 1`): a fixed thread count is part of bit-identity on CPU, and on the shared 2-core machine two
threads made a tiny FLUX.2 image 30x slower (OpenMP spinning under load).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping


from evalkit.families.base import ModelFamily
from evalkit.io import read_json

REPO = Path(__file__).resolve().parents[1]
PROMPTS = "A red cube on a blue table\nA lighthouse at dusk, oil painting\n"
METRICS = "lpips_alex,ssim,psnr"


def cpu_backends(family: ModelFamily) -> list[str]:
    """Every backend of `--backends default` (no modifiers, no reference) whose availability on this CPU is 'ok' for
    `family` (a library not installed here is left out, as `evalkit backends` would say). The opt-in libraries
    (ModelOpt, SDNQ, AutoRound, BFL: `in_default=False`) are checked on FLUX.1's tiny build in test_backends.py,
    with their own expected shares: in every family's study they would add ~9 CPU minutes each."""
    from evalkit.quantizers.registry import availability, backend_list, parse_backend

    return [b.name for b in backend_list() if not b.reference and b.in_default
            and availability(parse_backend(b.name), "cpu", None, family=family)[0] == "ok"]


def evalkit(*args: str, timeout: float = 3000) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "evalkit", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout)


@dataclass(frozen=True)
class Study:
    """A tiny study's run directory and what was asked of it."""

    family: ModelFamily
    backends: list[str]  # asked for besides bf16: every CPU-capable backend, then the expected failures
    failing: Mapping[str, str]  # backend asked for that must fail -> words its reason holds
    run: Path

    @property
    def ok(self) -> list[str]:
        """The backends that must have generated, bf16 first."""
        return ["bf16", *(b for b in self.backends if b not in self.failing)]

    def record(self, backend: str) -> dict[str, Any]:
        return read_json(self.run / "generation" / f"{backend}.json")

    def image_hashes(self, run: Path | None = None) -> dict[tuple[str, str], str]:
        rd = run or self.run
        return {(b, e["prompt_id"]): e["sha256"] for b in self.ok
                for e in read_json(rd / "generation" / f"{b}.json")["images"]}


def run_study(family_key: str, root: Path, expected_failures: Mapping[str, str] | None = None, *, size: int = 64,
              steps: int = 2) -> Study:
    """The whole study on the tiny build, checked as the module docstring says. `expected_failures`: backend ->
    words of the reason its record must give (a library's own failure on CPU); the family's known CPU
    incompatibilities are asked for too and must be recorded as failed, not crash the run."""
    from evalkit.cli import main
    from evalkit.families.registry import get_family

    family = get_family(family_key)
    available = cpu_backends(family)
    assert len(available) > 8, available
    known = {b: "known incompatible" for b, device in family.known_incompatible if device in ("cpu", "*")}
    failing = {**known, **(expected_failures or {})}
    study = Study(family, [*available, *(b for b in failing if b not in available)], failing, root / "run")
    root.mkdir(parents=True, exist_ok=True)
    prompts = root / "two.txt"
    prompts.write_text(PROMPTS, encoding="utf-8")
    settings = ["--model", f"tiny:{family.key}", "--height", str(size), "--width", str(size), "--steps", str(steps),
                "--warmup", "0", "--threads", "1"]
    # In this process (the workers are subprocesses either way): the second command, `check` and the GGUF check
    # reuse the imports the first one paid for.
    assert main(["run", str(prompts), *settings, "--backends", ",".join(["bf16", *study.backends]),
                 "--out", str(study.run), "--metrics", METRICS, "--report-formats", "png"]) == 0
    _check_census(study)
    _check_gguf_files(study)
    _check_scored_reported_checked(study, root)
    again = root / "again"
    assert main(["generate", str(prompts), *settings, "--backends", ",".join(study.ok), "--out", str(again)]) == 0
    assert study.image_hashes(again) == study.image_hashes()
    return study


def _check_census(study: Study) -> None:
    """Each backend generated both images and quantized exactly the components it says -- the quantizers' own
    resolution and the family record's marks agree -- with its library's layers (most of their Linear layers:
    GGUF keeps tiny tensors exact and layerwise casting skips norms and projections), and nothing else. The
    backends expected to fail are recorded as failed, with the reason."""
    from evalkit.quantizers.registry import BACKENDS, resolve_components

    family = study.family
    summary = read_json(study.run / "summary.json")["backends"]
    for name, words in study.failing.items():
        rec = study.record(name)
        assert rec["status"] == "failed" and words in rec["reason"], (name, rec["reason"])
        assert summary[name]["status"] == "failed" and words in summary[name]["reason"], (name, summary[name])
    for name in study.ok:
        rec = study.record(name)
        assert rec["status"] == "ok", (name, rec.get("reason"))
        assert len(rec["images"]) == 2 and not any(e["flags"] for e in rec["images"]), (name, rec["images"])
        q = rec["quantization"]
        b = BACKENDS[name]
        expected = [c.name for c in resolve_components(b, family, None, "cpu")[0]]
        # What the family's record marks for this backend's roles, less what its library cannot quantize on a CPU.
        marked = {c.name for c in family.components if c.quantized and c.role in b.roles
                  and (b.cpu_config_libraries is None or c.config_library in b.cpu_config_libraries)}
        assert q["components_quantized"] == expected and set(expected) == marked, (name, expected, marked)
        if expected:
            assert rec["recipe"].get("library") == b.library.key, (name, rec["recipe"])
        for comp in (c.name for c in family.quantizable()):
            n, total = q["quantized_linear_count"][comp], q["linear_count"][comp]
            if comp in expected:
                assert n > 0 and n >= 0.5 * total, (name, comp, q["layer_types"][comp])
                assert any(b.library.layer_marker in k for k in q["layer_types"][comp]), (name, comp, q["layer_types"])
            else:
                assert n == 0, (name, comp, q["layer_types"][comp])
        if "gguf_summary" in q:  # a GGUF layer may hold a BF16 fallback: the file must hold the type it names
            qtype = rec["recipe"]["options"]["qtype"]
            assert q["gguf_summary"]["tensor_types"].get(qtype, 0) > 0, (name, q["gguf_summary"])
    assert study.record("bf16")["quantization"]["components_quantized"] == []


def _check_gguf_files(study: Study) -> None:
    """Every GGUF backend's file holds exactly the tiny denoiser's state_dict keys, so diffusers loaded it without
    the family's key converter, and the record says so."""
    names = [b for b in study.ok if b.startswith("gguf-")]
    assert names, study.backends
    files = []
    for name in names:
        q = study.record(name)["quantization"]
        assert q["gguf_summary"]["key_names"] == "diffusers", (name, q["gguf_summary"])
        assert q["quantized_linear_count"][study.family.denoiser.name] > 0, (name, q)
        files.append(q["gguf_file"])
    assert_gguf_keys_are_the_models(study.family, *files)


def assert_gguf_keys_are_the_models(family: ModelFamily, *paths: str | Path) -> None:
    """diffusers' from_single_file skips the family's key converter only when the file's keys equal the model's
    state_dict keys exactly, buffers included (`_should_convert_state_dict_to_diffusers`); evalkit's files must."""
    import gguf
    import torch
    from diffusers.loaders.single_file_model import _should_convert_state_dict_to_diffusers

    assert family.gguf is not None and family.gguf.component == family.denoiser.name
    with torch.device("meta"):
        state = family.build_modules(family.tiny_configs)[family.gguf.component].state_dict()
    for path in paths:
        keys = {t.name for t in gguf.GGUFReader(str(path)).tensors}
        assert keys == set(state), (path, sorted(keys ^ set(state))[:5])
        assert not _should_convert_state_dict_to_diffusers(state, dict.fromkeys(keys)), path


def _check_scored_reported_checked(study: Study, root: Path) -> None:
    """Every backend that generated has its metrics over both images, the manifest and report name the family and
    every backend, and `evalkit check` passes bounds every backend meets and fails one a backend misses (the first
    and the worst backend) and any bound on a backend that failed generation."""
    from evalkit.cli import main

    family, run, scored = study.family, study.run, study.ok[1:]
    lpips = {}
    for name in scored:
        metrics = read_json(run / "metrics" / f"{name}.json")["metrics"]
        for m in METRICS.split(","):
            assert metrics[m]["status"] == "ok" and metrics[m]["n"] == 2 and metrics[m]["mean"] is not None, \
                (name, m, metrics[m])
        lpips[name] = metrics["lpips_alex"]["mean"]
    manifest = read_json(run / "manifest.json")
    assert manifest["model"]["family"] == family.key and manifest["model"]["pipeline_class"] == family.pipeline_class
    assert manifest["generation"]["guidance_scale"] == family.tiny_defaults.guidance_scale
    assert family.tokenizer_note in manifest["tokenization_note"]
    page = (run / "index.html").read_text(encoding="utf-8")
    assert family.display in page and all(b in page for b in ["bf16", *study.backends])
    bounds = root / "bounds.toml"
    bounds.write_text("".join(f'[backends."{b}"]\nlpips_alex_max = 0.9\nssim_min = 0.1\n' for b in scored),
                      encoding="utf-8")
    assert main(["check", str(run), "--thresholds", str(bounds)]) == 0
    for name in {scored[0], max(scored, key=lpips.__getitem__)}:
        bounds.write_text(f'[backends."{name}"]\nlpips_alex_max = 1e-12\n', encoding="utf-8")
        assert main(["check", str(run), "--thresholds", str(bounds)]) == 1, name
    for name in study.failing:
        bounds.write_text(f'[backends."{name}"]\nlpips_alex_max = 0.9\n', encoding="utf-8")
        assert main(["check", str(run), "--thresholds", str(bounds)]) == 1, name


def checkpoint_deviation(family: ModelFamily, configs: Mapping[str, Mapping[str, Any]],
                         published: Mapping[str, int]) -> dict[str, float]:
    """component -> relative deviation of the meta-built checkpoint count from the published figure."""
    from evalkit.families.base import component_parameter_counts

    counts = component_parameter_counts(family, configs)
    assert set(published) <= set(counts), set(published) - set(counts)
    return {name: (counts[name] - n) / n for name, n in published.items()}


def check_published_counts(family: ModelFamily,
                           rounded: Mapping[str, Mapping[str, tuple[float, float, str]]] | None = None,
                           nominal: Mapping[str, float] | None = None) -> None:
    """Each variant's components on the meta device: within 0.5% of the published count; where only a rounded
    figure exists (`rounded`: variant -> component -> (value, half-width, source); the module says why) within that
    figure's rounding; where the published figure is nominal (`nominal`: component -> tolerance; the family's test
    checks it more precisely another way) within that tolerance. Every component must have one or the other."""
    from evalkit.families.base import component_parameter_counts

    rounded, nominal = rounded or {}, nominal or {}
    for v in family.variants:
        counts = component_parameter_counts(family, v.configs)
        own = rounded.get(v.name, {})
        assert set(counts) == {c.name for c in family.components} >= set(v.published_params), (v.name, counts)
        for comp, n in counts.items():
            if comp in own:
                value, half_width, _source = own[comp]
                assert comp not in v.published_params and abs(n / value - 1) <= half_width, (v.name, comp, n, value)
            elif comp in nominal:
                assert abs(n / v.published_params[comp] - 1) <= nominal[comp], (v.name, comp, n)
            else:
                assert comp in v.published_params, (v.name, comp)
                assert abs(n / v.published_params[comp] - 1) < 0.005, (v.name, comp, n, v.published_params[comp])


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
    """evalkit's own converter writes the tiny denoiser to GGUF with exactly the model's key names and the family's
    denoiser class loads it through from_single_file without conversion: every Linear becomes a GGUFLinear."""
    import torch

    from evalkit.families.registry import ensure_tiny, get_family
    from evalkit.quantizers.gguf import convert

    family = get_family(family_key)
    support = family.gguf
    assert support is not None and support.component == family.denoiser.name
    path = convert.ensure_gguf(str(ensure_tiny(family)), qtype, cache, support.component, support.arch)
    assert_gguf_keys_are_the_models(family, path)
    model, summary = convert.load_gguf_component(path, str(ensure_tiny(family)), support.component, torch.bfloat16,
                                                 support.original_key_markers, support.original_converter)
    counts = convert.gguf_quantized_layer_counts(model)
    assert summary["key_names"] == "diffusers", summary
    assert counts["other_linear"] == 0 and counts["gguf_params_by_type"].get(qtype, 0) > 0, counts
    return counts


@functools.lru_cache(maxsize=1)
def evalkit_models_json() -> dict[str, dict[str, Any]]:
    """`evalkit models --json` run once per test session: family key -> its row."""
    r = evalkit("models", "--json", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return {row["family"]: row for row in json.loads(r.stdout)["families"]}


def check_listed_by_evalkit_models(family: ModelFamily) -> None:
    """`evalkit models --json` lists the family, its tiny spec and every variant with its forms, counts and source."""
    row = evalkit_models_json()[family.key]
    assert row["tiny"]["spec"] == f"tiny:{family.key}" and row["pipeline_class"] == family.pipeline_class
    assert [v["name"] for v in row["variants"]] == [v.name for v in family.variants]
    for v, listed in zip(family.variants, row["variants"]):
        assert listed["forms"]["random"]["spec"] == f"random:{v.name}" and listed["hub_id"] == v.hub_id
        assert listed["published_params"] == dict(v.published_params) and listed["source"]

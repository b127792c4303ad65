"""What a generate command is about to do: which backends run, how many images that is, and roughly how long.

A study over LARGE_STUDY_IMAGES images says so (count and estimate) before it starts; `--max-images N` refuses a
larger one outright, before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from evalkit.errors import EvalkitError
from evalkit.families.registry import family_of_manifest
from evalkit.quantizers.registry import BackendSpec, availability
from evalkit.records import generation_record_if_any
from evalkit.rundir import RunDir

LARGE_STUDY_IMAGES = 2000

# Rough seconds per image for the bf16 reference at each model kind's reference settings, used only when the run has
# timed nothing yet. Scaled by steps and pixels; quantized backends are often slower than bf16, so it is a floor.
# tiny: measured (benchmarks/results/tiny-run-2026-11-21.md). Full size: an assumption, stated as such wherever it
# is printed.
ROUGH_SECONDS: dict[tuple[str, str], tuple[float, int, int, str]] = {
    ("tiny", "cpu"): (0.034, 4, 64 * 64, "tiny Flux, 64x64, 4 steps on a 2-core CPU, measured"),
    ("tiny", "cuda"): (0.034, 4, 64 * 64, "tiny Flux, 64x64, 4 steps on a 2-core CPU, measured"),
    ("full", "cuda"): (12.0, 50, 1024 * 1024, "assumed ~12 s for FLUX.1-dev bf16 at 1024x1024, 50 steps, H100-class"),
    ("full", "cpu"): (1800.0, 50, 1024 * 1024, "assumed ~30 min for FLUX.1-dev bf16 at 1024x1024, 50 steps on a CPU"),
}


@dataclass
class WorkPlan:
    todo: list[BackendSpec] = field(default_factory=list)
    unrun: list[tuple[BackendSpec, str, str]] = field(default_factory=list)  # (spec, skipped|failed, reason)
    images: int = 0  # images still to generate
    # Finished backends with images that can no longer be trusted: name -> (record, prompt id -> why)
    repairs: dict[str, tuple[dict[str, Any], dict[str, str]]] = field(default_factory=dict)
    prompts: int = 0
    # Backend -> its prompt ids with no valid image yet (merged record and shards counted), in
    # manifest order: what the schedule splits into units.
    missing: dict[str, list[str]] = field(default_factory=dict)


def image_problems(rd: RunDir, backend: str, rec: dict[str, Any], manifest: dict[str, Any]) -> dict[str, str]:
    """Prompt id -> why its image in a finished record cannot be trusted: not recorded, another seed, or what
    evalkit.integrity finds (missing, truncated or undecodable, replaced, wrong size). Files whose size and mtime
    are the recorded ones are not re-hashed."""
    from evalkit.integrity import verify_images

    by_id = {i.get("prompt_id"): i for i in rec.get("images", []) if isinstance(i, dict)}
    problems: dict[str, str] = {}
    for p in manifest["prompts"]:
        img = by_id.get(p["id"])
        if img is None:
            problems[p["id"]] = "not in the generation record"
        elif img.get("seed") != p["seed"]:
            problems[p["id"]] = f"recorded with seed {img.get('seed')}, the prompt's seed is now {p['seed']}"
    # Extra files in the folder are not this backend's images to regenerate; the scoring stages refuse them.
    report = verify_images(rd, backend, rec, manifest=manifest, check_extra=False)
    for bad in report.problems:
        if bad.get("prompt_id") and bad["prompt_id"] not in problems:
            problems[bad["prompt_id"]] = f"{bad['path']}: {bad['reason']}"
    return problems


def finished_record(rd: RunDir, backend: str) -> dict[str, Any] | None:
    rec = generation_record_if_any(rd.generation_record(backend))
    return rec if rec is not None and rec.get("status") == "ok" else None


def plan_work(rd: RunDir, manifest: dict[str, Any], specs: list[BackendSpec], requested: tuple[str, ...] | None,
              attempt_known_failures: bool) -> WorkPlan:
    """Backends left to run (and those that cannot), and how many images they will make."""
    capability = manifest["device"].get("capability")
    device = manifest["config"]["device"]
    plan = WorkPlan(prompts=len(manifest["prompts"]))
    family = family_of_manifest(manifest)
    for spec in specs:
        rec = finished_record(rd, spec.name)
        if rec is not None:
            problems = image_problems(rd, spec.name, rec, manifest)
            if not problems:
                continue
            plan.repairs[spec.name] = (rec, problems)
        status, reason = availability(spec, device, tuple(capability) if capability else None, requested,
                                      attempt_known_failures, family=family)
        if status != "ok":
            plan.unrun.append((spec, status, reason or ""))
            continue
        plan.todo.append(spec)
        # Images an interrupted attempt (any rank, any world size) already wrote are kept, not redone: only prompts
        # without a verified entry are planned (evalkit/generate/merge.py decides what counts).
        from evalkit.generate.merge import collect

        plan.missing[spec.name] = collect(rd, manifest, spec.name).missing(manifest)
        plan.images += len(plan.missing[spec.name])
    return plan


def check_max_images(plan: WorkPlan, max_images: int | None) -> None:
    if max_images is not None and plan.images > max_images:
        raise EvalkitError(f"--max-images {max_images}: this command would generate {plan.images} images "
                           f"({len(plan.todo)} backends x up to {plan.prompts} prompts); narrow --backends or the "
                           "prompts file, or raise --max-images")


def seconds_per_image(rd: RunDir, manifest: dict[str, Any]) -> tuple[float, str]:
    """This run's own median latency where it has one, else a rough figure scaled to the run's settings."""
    medians = []
    for name in manifest.get("backends", []):
        median = ((generation_record_if_any(rd.generation_record(name)) or {}).get("latency") or {}).get("median_s")
        if median:
            medians.append(float(median))
    if medians:
        return sum(medians) / len(medians), f"mean median latency of {len(medians)} backend(s) already run here"
    made = measured_latencies(rd, manifest)
    if made:
        made.sort()
        return made[len(made) // 2], f"median latency of {len(made)} image(s) already made in this run"
    gen = manifest["generation"]
    kind = "tiny" if (manifest.get("model") or {}).get("kind") == "tiny" else "full"
    base_s, base_steps, base_pixels, basis = ROUGH_SECONDS[(kind, manifest["config"]["device"])]
    scale = gen["num_inference_steps"] / base_steps * gen["height"] * gen["width"] / base_pixels
    return base_s * scale, f"rough: {basis}, scaled to {gen['height']}x{gen['width']}, {gen['num_inference_steps']} steps"


def measured_latencies(rd: RunDir, manifest: dict[str, Any]) -> list[float]:
    """Seconds an image of the images an unfinished attempt of this run already made (the per-image progress lists
    of every rank), so that an estimate corrects itself from the run's first images, not only its finished backends."""
    from evalkit.io import read_jsonl

    out: list[float] = []
    for name in manifest.get("backends", []):
        files = sorted(rd.shards_dir(name).glob("*.partial.jsonl")) if rd.shards_dir(name).is_dir() else []
        for path in files:
            for e in read_jsonl(path):
                lat = e.get("latency_s") if isinstance(e, dict) else None
                if isinstance(lat, (int, float)) and lat > 0:
                    out.append(float(lat))
    return out


def describe_plan(plan: WorkPlan, rd: RunDir, manifest: dict[str, Any]) -> str:
    per_image, basis = seconds_per_image(rd, manifest)
    total = per_image * plan.images
    return (f"[bold]large study:[/] {plan.images} images to generate ({len(plan.todo)} backends x up to "
            f"{plan.prompts} prompts), estimated {_duration(total)} of generation (~{per_image:.3g} s an image; "
            f"{basis}; loading and warm-up not included)")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"~{seconds:.0f} s"
    if seconds < 7200:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"

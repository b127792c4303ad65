"""`evalkit calibrate RUN_DIR`: the run's own noise floor, written to RUN_DIR/calibration.json.

For each perturbation (evalkit/calibrate/perturbations.py) the reference backend is regenerated into
RUN_DIR/calibration/<perturbation>/ by the generate stage's entry point (run_generate) with the run's prompts,
seeds and settings, so each is a run directory of its own that resumes and caches like any run. Each is then
scored against the run's reference images, paired by prompt id, by the metric stage's public entry
(evalkit.score.api.compare_images) with every paired metric. evalkit/calibrate/floor.py turns those records
into the floor. Scores are reused while the images they were computed from are unchanged (sha256).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from evalkit.calibrate.floor import SCHEMA, metric_facts, metric_floor, perturbation_entry
from evalkit.calibrate.options import CalibrateOptions
from evalkit.calibrate.perturbations import Perturbation, select_perturbations
from evalkit.errors import EvalkitError
from evalkit.generate.options import GenerateOptions
from evalkit.io import atomic_write_json
from evalkit.integrity import verify_images
from evalkit.records import checked_calibration, read_calibration, read_generation_record, read_manifest
from evalkit.options import api_doc, api_signature
from evalkit.rundir import REFERENCE_BACKEND, RunDir, open_run
from evalkit.timeutil import utc_now



def paired_metric_names() -> list[str]:
    """Every registered paired metric against the reference backend (prompt and set metrics have no pairs)."""
    from evalkit.metrics.registry import list_metrics

    return [m.name for m in list_metrics("paired") if getattr(m, "reference", "backend") != "real"]


def run_calibration(run_dir: str | os.PathLike[str], **options: Any) -> dict[str, Any]:
    """Calibrate `run_dir`; returns what it writes to RUN_DIR/calibration.json. `gpus` (one rank per GPU) or
    `jobs` (CPU ranks) shard each perturbation's regeneration over ranks on this machine, as `evalkit generate
    --gpus/--jobs` does; its images are those of one process."""
    from evalkit.runlock import acquire

    opts = CalibrateOptions.from_api(_CALIBRATE_SIGNATURE.bind(run_dir, **options).arguments, "run_calibration")
    rd, manifest = open_run(opts.run_dir)
    manifest = dict(manifest)
    reference = manifest.get("reference_backend") or REFERENCE_BACKEND
    run_device = (manifest.get("config") or {}).get("device") or (manifest.get("device") or {}).get("type") or "cpu"
    chosen = select_perturbations(run_device, opts.config_file, opts.perturbations)
    ref_images = _ok_images(rd, reference, "the run's reference")
    old = _previous(rd)
    metrics = paired_metric_names()

    pert_out: dict[str, Any] = {}
    per_metric: dict[str, dict[str, Any]] = {m: {} for m in metrics}
    for p in chosen:
        sub = rd.calibration_runs / p.name
        backend = f"{reference}+compile" if p.compile else reference
        _regenerate(manifest, sub, backend, p, ranks=(len(opts.gpus), list(opts.gpus)) if opts.gpus else (opts.jobs, []),
                    ref_threads=(read_generation_record(rd.generation_record(reference)).get("numerics") or {}).get("intra_op_threads"))
        cand_rd = RunDir(sub)
        rec = read_generation_record(cand_rd.generation_record(backend))
        cand_images = _ok_images(cand_rd, backend, f"perturbation {p.name!r}")
        _check_in_force(p, rec, cand_rd.generation_record(backend))
        key = _images_key(ref_images, cand_images, metrics)
        records = _records(old, p.name, key, metrics,
                           lambda: _score(rd, ref_images, cand_rd, cand_images, metrics, opts.device, opts.workers))
        for m in metrics:
            per_metric[m][p.name] = records[m]
        same = sum(ref_images[pid]["sha256"] == cand_images[pid]["sha256"] for pid in ref_images)
        pert_out[p.name] = {
            "description": p.description, "settings": p.settings(), "backend": backend,
            "in_force": rec.get("numerics"), "run_dir": rd.relative(sub), "images_key": key,
            "n_images": len(cand_images), "n_byte_identical_images": same,
        }

    result = {
        "schema": SCHEMA, "run_id": manifest.get("run_id"), "reference_backend": reference, "device": run_device,
        "model": (manifest.get("model") or {}).get("spec"), "generation": manifest.get("generation"),
        "n_prompts": len(ref_images), "created_utc": utc_now(),
        "floor_definition": ("per metric, the worst 95% bootstrap CI end on the metric's bad side over the "
                             "perturbations: the largest ci_high (lower is better) or the smallest ci_low (higher "
                             "is better); 'identical' when every perturbation reproduced the reference exactly"),
        # What the reference itself ran under (null for a run generated before the worker recorded it).
        "reference_in_force": read_generation_record(rd.generation_record(reference)).get("numerics"),
        "perturbations": pert_out, "metrics": {m: _metric_floor(m, per_metric[m]) for m in metrics},
    }
    with acquire(rd.root, stage="calibrate"):
        atomic_write_json(rd.calibration, checked_calibration(result))
    return result


# run_calibration's keyword arguments are CalibrateOptions' fields (evalkit/calibrate/options.py): declared once.
_CALIBRATE_SIGNATURE = api_signature(CalibrateOptions, positional=("run_dir",), return_annotation="dict[str, Any]")
run_calibration.__signature__ = _CALIBRATE_SIGNATURE  # type: ignore[attr-defined]
run_calibration.__doc__ = (f"{run_calibration.__doc__}\n\n    "
                           + api_doc(CalibrateOptions).replace("\n", "\n    ").rstrip() + "\n")


def _records(old: dict[str, Any], name: str, key: str, metrics: list[str],
             score: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Each metric's record of perturbation `name`: the previous calibration's while the images it scored are the
    same ones (`key`), else scored now."""
    cached = (old.get("perturbations") or {}).get(name) or {}
    if cached.get("images_key") == key and all(name in (old["metrics"].get(m) or {}).get("perturbations", {})
                                               for m in metrics):
        return {m: old["metrics"][m]["perturbations"][name] for m in metrics}
    scored = score()
    return {m: perturbation_entry(scored.get(m) or {"status": "skipped", "reason": "not scored"}, metric_facts(m))
            for m in metrics}


def _metric_floor(metric: str, per_perturbation: dict[str, Any]) -> dict[str, Any]:
    facts = metric_facts(metric)
    return {**{k: facts[k] for k in ("label", "unit", "higher_is_better", "identity", "scale")},
            "floor": metric_floor(per_perturbation, facts), "perturbations": per_perturbation}


def _previous(rd: RunDir) -> dict[str, Any]:
    path = rd.calibration
    try:
        old = read_calibration(path) if path.exists() else None
    except (EvalkitError, ValueError):
        return {}  # an unreadable cache is recomputed, never trusted
    return dict(old) if isinstance(old, dict) and old.get("schema") == SCHEMA and isinstance(old.get("metrics"), dict) else {}


def _ok_images(rd: RunDir, backend: str, what: str) -> dict[str, dict[str, Any]]:
    path = rd.generation_record(backend)
    if not path.exists():
        raise EvalkitError(f"{path}: not found; {what} ({backend}) has not been generated")
    rec = read_generation_record(path)
    if rec.get("status") != "ok":
        raise EvalkitError(f"{path}: {what} ({backend}) has status {rec.get('status')!r}: {rec.get('reason')}; "
                           f"see {rd.log(backend)}")
    # The floor is measured against these files: one replaced since generate would set it from another image.
    verify_images(rd, backend, dict(rec), check_extra=False).raise_if_problems(
        f"The images of {what} must be those generate recorded before a floor is measured against them")
    return {e["prompt_id"]: e for e in rec.get("images") or []}


def _generate_options(manifest: dict[str, Any], sub: Path, backend: str, p: Perturbation) -> GenerateOptions:
    """The run's own generate options (manifest config.options), pointed at `sub` with `p`'s settings. An option
    this evalkit does not know is refused (GenerateOptions.from_manifest): dropped, it would regenerate other
    images than the run's."""
    saved = (manifest.get("config") or {}).get("options") or {}
    if not saved.get("prompts_file"):
        raise EvalkitError("manifest.json: config.options has no prompts_file; this run cannot be regenerated")
    opts = GenerateOptions.from_manifest(saved, "manifest.json: config.options")
    # The prompts come from the manifest itself, not from the file the run was made from: that path may be relative
    # to another directory, or the file gone. Same texts in the same order and the same base seed give the same ids
    # and seeds (checked below), hence the same images to compare with.
    return dataclasses.replace(
        opts, prompts_file=str(_manifest_prompts_file(manifest, sub.parent, opts.seed)), prompt_column=None,
        out=str(sub), backends=backend, reports_dir=str(sub.parent),
        device=(manifest.get("config") or {}).get("device") or opts.device,
        batch_size=p.batch_size or opts.batch_size, jobs=1, gpus=[], max_images=None,
        # the perturbation's knobs over the run's own (None leaves a knob as the reference run had it)
        threads=p.intra_op_threads if p.intra_op_threads is not None else opts.threads,
        tf32=p.tf32_matmul if p.tf32_matmul is not None else opts.tf32,
        sdpa_backend=p.sdpa_backend if p.sdpa_backend is not None else opts.sdpa_backend,
        include_reference=backend == (manifest.get("reference_backend") or REFERENCE_BACKEND),
        command=["evalkit", "calibrate", f"--perturbation={p.name}"])


def _manifest_prompts_file(manifest: dict[str, Any], folder: Path, base_seed: int) -> Path:
    """Write the run's prompts (manifest order) as JSON lines under `folder`; refuse if evalkit would derive other
    prompt ids or seeds from them than the manifest holds."""
    import json

    from evalkit.io import atomic_write_text
    from evalkit.prompts import load_prompts

    entries = sorted(manifest.get("prompts") or [], key=lambda e: e["index"])
    path = folder / "prompts.jsonl"
    atomic_write_text(path, "".join(json.dumps({"prompt": e["text"]}, ensure_ascii=False) + "\n" for e in entries))
    derived = [(p.id, p.seed) for p in load_prompts(path, base_seed=base_seed)]
    if derived != [(e["id"], e["seed"]) for e in entries]:
        raise EvalkitError("manifest.json: its prompts' ids or seeds are not what this evalkit derives from their texts "
                           "(made by another evalkit version?); calibration would not regenerate the same images")
    return path


def _regenerate(manifest: dict[str, Any], sub: Path, backend: str, p: Perturbation,
                ranks: tuple[int, list[str]] | None = None, ref_threads: int | None = None) -> None:
    """Regenerate `backend` under `p` into `sub`. With `ranks` = (n, gpus), the sub-run is sharded like any
    generate: torchrun starts n ranks on this machine (one per GPU of `gpus`, or CPU ranks sharing the cores).
    The perturbation's knobs travel as the sub-run's options (its manifest states them); this process's
    environment is left alone."""
    from evalkit.generate.stage import run_generate

    import evalkit.dist as dist

    sub.parent.mkdir(parents=True, exist_ok=True)
    opts = _generate_options(manifest, sub, backend, p)
    _refuse_unrecorded_knobs(sub, opts)
    if ranks is not None and ranks[0] > 1:
        from evalkit.generate.launch import generate_argv, launch_ranks

        n, gpus = ranks
        opts.gpus = list(gpus)
        if ref_threads and not gpus and opts.threads is None:
            # CPU ranks would otherwise share the cores (fewer threads each): a thread-count change is a perturbation
            # of its own ("threads"), never to be mixed silently into another one's floor.
            opts.threads = ref_threads
        code = launch_ranks(generate_argv(opts), opts, n)
        if code != 0:
            raise EvalkitError(f"perturbation {p.name!r}: its sharded regeneration on {n} ranks exited with {code}; "
                               f"see {sub / 'logs'} and rerun the same command to resume")
        return
    # Rank 0 calibrates alone (evalkit run under a launcher): its sub-run is a world of one, waiting for no peer.
    with dist.solo():
        run_generate(opts)


def _refuse_unrecorded_knobs(sub: Path, opts: GenerateOptions) -> None:
    """A sub-run made before the numerics knobs were options has them nowhere in its identity: say so plainly
    (prepare_run would only ask for another --out, which calibration does not take)."""
    path = sub / "manifest.json"
    if not path.is_file():
        return
    try:
        identity = (read_manifest(path).get("config") or {}).get("identity") or {}
    except EvalkitError:
        return  # prepare_run names what is wrong with it
    for knob, value in opts.numerics().items():
        if knob not in identity:
            raise EvalkitError(f"{sub}: made by an earlier evalkit that did not record {knob}={value!r} in the "
                               f"sub-run's identity; delete {sub} and rerun to regenerate it")


def _check_in_force(p: Perturbation, rec: dict[str, Any], path: Path) -> None:
    """The record must state the settings this perturbation asked for: a calibration never measures other ones."""
    got = rec.get("numerics") or {}
    want = {"batch_size": p.batch_size, "intra_op_threads": p.intra_op_threads, "sdpa_backend": p.sdpa_backend,
            "tf32_matmul": p.tf32_matmul}
    bad = {k: (v, got.get(k)) for k, v in want.items() if v is not None and got.get(k) != v}
    if bad:
        k, (v, g) = next(iter(bad.items()))
        raise EvalkitError(f"{path}: perturbation {p.name!r} asked for {k}={v!r} but the record states {g!r}; "
                           f"delete {path.parent.parent} and rerun to regenerate it")


def _images_key(ref: dict[str, Any], cand: dict[str, Any], metrics: list[str]) -> str:
    missing = sorted(set(ref) ^ set(cand))
    if missing:
        raise EvalkitError(f"calibration images and the reference differ in prompts (first: {missing[0]})")
    blob = json.dumps([metrics, [(pid, ref[pid]["sha256"], cand[pid]["sha256"]) for pid in sorted(ref)]])
    return hashlib.sha256(blob.encode()).hexdigest()


def _score(rd: RunDir, ref: dict[str, Any], cand_rd: RunDir, cand: dict[str, Any], metrics: list[str],
           device: str, workers: int | None) -> dict[str, Any]:
    """compare_images on the two image sets, paired by prompt id (links named <prompt_id>.png)."""
    from evalkit.score.api import compare_images

    with tempfile.TemporaryDirectory(prefix="evalkit-calibrate-") as tmp:
        dirs = []
        for side, root, images in (("reference", rd.root, ref), ("candidate", cand_rd.root, cand)):
            d = Path(tmp) / side
            d.mkdir()
            for pid, e in images.items():
                (d / f"{pid}.png").symlink_to(root / e["path"])
            dirs.append(d)
        return compare_images(dirs[0], dirs[1], metrics=metrics, device=device, workers=workers)

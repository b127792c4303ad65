"""The noise floor of one run (issue #17) as a Markdown page, from what `benchmarks/gpu_table_run.py --calibrate`
brought back, never by hand.

    python3 benchmarks/floor_table.py RUN_DIR --out benchmarks/results/noise-floor-h200-2026-11-29.md [--notes N.md]

RUN_DIR holds manifest.json, generation/bf16.json, cut.json (the steps that ran, their commands and exit codes) and
the calibration results: calibration.default.json (plain `evalkit calibrate RUN`: the device's default
perturbations) and calibration.<perturbation>.json (one `--perturbations P` call each), with the regenerated runs
under calibration/<perturbation>/. The floor per metric is evalkit's own (evalkit.calibrate.floor.metric_floor) over
the default perturbations that finished; extra ones (the `rerun` control) are listed beside it, not in it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evalkit.calibrate.floor import metric_facts, metric_floor  # noqa: E402  (pure data, no torch)
from evalkit.calibrate.perturbations import DEFAULTS  # noqa: E402
from evalkit.io import atomic_write_text  # noqa: E402

REFERENCE = "bf16"


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _fmt(v: Any, facts: dict[str, Any]) -> str:
    """A metric value with enough decimals that its distance from identical images shows two significant digits
    (at least the registry's digits); PSNR of identical images is "identical", never its cap."""
    if isinstance(v, str):
        return v  # "identical", as calibration.json writes PSNR of identical images
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    distance = abs(v - facts["identity"])
    if distance == 0:
        return "identical" if facts["scale"] == "db" else f"{v:g}"
    decimals = max(facts["digits"], -math.floor(math.log10(distance)) + 1)
    return f"{v:.{decimals}f}"


def _num(v: Any, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def load_calibrations(run_dir: Path) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """(the defaults' calibration.json or None, {perturbation: its own calibration file})."""
    default_path = run_dir / "calibration.default.json"
    default = _json(default_path) if default_path.exists() else None
    singles = {}
    for path in sorted(run_dir.glob("calibration.*.json")):
        name = path.name[len("calibration."):-len(".json")]
        if name != "default":
            singles[name] = _json(path)
    return default, singles


def entries(default: dict[str, Any] | None, singles: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{perturbation: {"info": its perturbations entry, "metrics": {metric: entry}}}, the defaults' file first."""
    out: dict[str, dict[str, Any]] = {}
    for cal in ([default] if default else []) + list(singles.values()):
        for p, info in cal["perturbations"].items():
            if p not in out:
                out[p] = {"info": info, "metrics": {m: rec["perturbations"][p] for m, rec in cal["metrics"].items()
                                                    if p in rec["perturbations"]}}
    return out


def page(run_dir: Path, default_perturbations: list[str] | None, notes: str) -> str:
    manifest = _json(run_dir / "manifest.json")
    if default_perturbations is None:  # what plain `evalkit calibrate` runs on the run's device
        default_perturbations = list(DEFAULTS[(manifest.get("config") or {}).get("device") or "cpu"])
    cut = _json(run_dir / "cut.json") if (run_dir / "cut.json").exists() else {}
    default, singles = load_calibrations(run_dir)
    per = entries(default, singles)
    if not per:
        raise SystemExit(f"{run_dir}: no calibration result (calibration.default.json or calibration.<P>.json)")
    metrics = list((default or next(iter(singles.values())))["metrics"])
    facts = {m: metric_facts(m) for m in metrics}
    in_floor = [p for p in default_perturbations if p in per]
    extras = [p for p in per if p not in default_perturbations]
    missing = [p for p in default_perturbations if p not in per]
    g, dev, ver = manifest.get("generation") or {}, manifest.get("device") or {}, manifest.get("versions") or {}
    ref = _json(run_dir / "generation" / f"{REFERENCE}.json")
    lines = [f"# Noise floor of the {REFERENCE} reference on an {dev.get('name')}: {manifest.get('model', {}).get('spec')}",
             "", "Written by `benchmarks/floor_table.py` from the run directory's calibration files; do not edit by hand.",
             "", f"Run `{run_dir.name}`, created {manifest.get('created_utc')}. Settings: {g.get('height')}×{g.get('width')}, "
             f"{g.get('num_inference_steps')} steps, guidance {g.get('guidance_scale')}, max_sequence_length "
             f"{g.get('max_sequence_length')}, {g.get('dtype')}, {g.get('generator_device')} generator, batch size "
             f"{g.get('batch_size')}, {g.get('warmup_runs')} warm-up image(s), {len(manifest.get('prompts') or [])} "
             f"prompts ({Path(str(manifest.get('prompts_file'))).name}). Software: torch {ver.get('torch')}, diffusers "
             f"{ver.get('diffusers')}, transformers {ver.get('transformers')}. The reference ran under "
             f"{ref.get('numerics')}.", "",
             "The weights are random, so the images carry no quality information; the differences between the "
             "reference and each perturbation's images are the device arithmetic's own (kernel choice, reduction order, "
             "precision), and those are real.", "",
             "## The floor", "",
             f"Per metric, the worst 95% bootstrap CI end on the metric's bad side (upper end for LPIPS, lower end for "
             f"SSIM, MS-SSIM and PSNR) over the default perturbations that finished: {', '.join(in_floor) or 'none'}."
             + (f" **Not in it, because they did not finish: {', '.join(missing)}.**" if missing else ""),
             "", "| metric | floor | from | perturbations judged |", "|---|---|---|---|"]
    for m in metrics:
        f = metric_floor({p: per[p]["metrics"].get(m) or {"status": "skipped", "reason": "not scored"}
                          for p in in_floor}, facts[m])
        if f["status"] != "ok":
            lines.append(f"| {facts[m]['label']} | not measured: {f['reason'][:160]} | - | - |")
            continue
        shown = _fmt("identical" if f["value"] is None else f["value"], facts[m])
        unit = f" {facts[m]['unit']}" if facts[m]["unit"] and shown != "identical" else ""
        lines.append(f"| {facts[m]['label']} | {shown}{unit}{' (every image identical)' if f['identical'] else ''}"
                     f" | {f['from']} | {', '.join(f['perturbations_judged'])} |")
    lines += ["", "## Per perturbation", "",
              "Mean over the prompts, the 95% percentile-bootstrap CI of the mean, the noise end (the CI end on the "
              "bad side), n prompts (of them, images the metric sees as identical).", "",
              "| perturbation | metric | mean | 95% CI | noise end | n (identical) |", "|---|---|---|---|---|---|"]
    for p in in_floor + extras:
        for m in metrics:
            e, d = per[p]["metrics"].get(m) or {}, facts[m]
            label = f"{p}{' (control, not in the floor)' if p in extras else ''}"
            if e.get("status") != "ok":
                lines.append(f"| {label} | {facts[m]['label']} | skipped: {str(e.get('reason'))[:120]} | | | |")
                continue
            mean = "identical" if e.get("mean") is None and e.get("identical") else _fmt(e.get("mean"), d)
            lines.append(f"| {label} | {facts[m]['label']} | {mean} | [{_fmt(e.get('ci_low'), d)}, {_fmt(e.get('ci_high'), d)}]"
                         f" | {_fmt(e.get('noise_end'), d)} | {e.get('n')} ({e.get('n_identical')}) |")
    lines += ["", "## What each perturbation ran", "",
              "| perturbation | settings | in force (worker's record) | backend | images byte-identical | s/image median "
              "| step wall s |", "|---|---|---|---|---|---|---|"]
    steps = {s["step"]: s for s in (cut.get("run") or {}).get("steps_run") or []}
    for p in in_floor + extras:
        info = per[p]["info"]
        rec_path = run_dir / info["run_dir"] / "generation" / f"{info['backend']}.json"
        rec = _json(rec_path) if rec_path.exists() else {}
        step = steps.get(f"calibrate:{p}") or {}
        wall = step["ended_s"] - step["started_s"] if "ended_s" in step else None
        comp = rec.get("compile") or {}
        settings = json.dumps(info["settings"]) + (f"; compile {comp.get('preset')} (mode {comp.get('mode')}, "
                                                   f"regional {comp.get('regional')})" if comp else "")
        lines.append(f"| {p} | {settings} | {info.get('in_force')} | {info['backend']} | "
                     f"{info['n_byte_identical_images']}/{info['n_images']} | "
                     f"{_num((rec.get('latency') or {}).get('median_s'), 2)} | {_num(wall, 1)} |")
    unfinished = [s for s in steps.values() if s.get("rc") != 0]
    lines += ["", "## Commands", "", "Each a process of its own on one GPU (CUDA_VISIBLE_DEVICES set to the run's GPU), "
              "in this order, through `benchmarks/gpu_table_run.py` (its invocation: `benchmarks/README.md` and the notes "
              "below, where there are notes):", "", "```"]
    lines += [" ".join(["evalkit", *s["command"][3:]]) + f"    # rc {s.get('rc')}, {s.get('started_s')}–{s.get('ended_s')} s"
              for s in steps.values()]
    lines += ["```"]
    if unfinished:
        lines += ["", "Steps that did not finish: " + ", ".join(f"`{s['step']}` ({s.get('rc')})" for s in unfinished) + "."]
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--defaults", help="comma list: the perturbations the floor is taken over (default: evalkit's "
                                       "defaults for the run's device, evalkit.calibrate.perturbations.DEFAULTS)")
    ap.add_argument("--notes", type=Path)
    a = ap.parse_args(argv)
    chosen = [p for p in a.defaults.split(",") if p] if a.defaults else None
    text = page(a.run_dir, chosen, a.notes.read_text() if a.notes else "")
    atomic_write_text(a.out, text)
    print(f"-> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

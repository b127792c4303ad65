"""Build the report: thumbnails, figures, tables, then one self-contained index.html.

The page makes no network request: CSS and JS are inlined, images are relative files inside the
run directory (so the folder can be moved or zipped), and a Content-Security-Policy forbids the rest.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

from evalkit.version import __version__
from evalkit.inputs_key import content_key, json_file_content, store_key, stored_key_matches, tree_fingerprint
from evalkit.io import atomic_write_text
from evalkit.records import read_manifest
from evalkit.report.categories import category_tables
from evalkit.report.data import MEMORY_AXES, ReportData, load_report_data, metric_value
from evalkit.report.numbers import decimals_for, fmt_fixed, fmt_num, fmt_seconds
from evalkit.report.options import ReportOptions, parse_formats
from evalkit.rundir import RunDir
from evalkit.report.summary import highlights, model_notice, noise_floor_cells, perf_view, quality_rows


def report_with(opts: ReportOptions) -> Path:
    """`build_report` with the options of `evalkit report` / `evalkit.report` (the one place they meet it)."""
    formats = opts.validate()
    return build_report(opts.run_dir, thumb_size=opts.thumb_size, figures=not opts.no_figures,
                        memory_axis=None if opts.memory_axis == "auto" else opts.memory_axis,
                        include_partial=opts.include_partial, quiet=opts.quiet, formats=formats)


def build_report(
    run_dir: str | Path,
    *,
    thumb_size: int = 256,
    figures: bool = True,
    memory_axis: str | None = None,
    include_partial: bool = False,
    quiet: bool = False,
    formats: tuple[str, ...] = ("svg", "pdf", "png"),
) -> Path:
    """Write index.html (+ figures/, tables/, thumbs/) into `run_dir` and return the path of index.html.

    Holds the run directory's lock (evalkit.runlock) while it writes."""
    from evalkit.rundir import open_run
    from evalkit.runlock import acquire

    formats = parse_formats(",".join(formats))  # the same one-line error as the command's --formats
    rd, _ = open_run(run_dir)  # refuse a path that is not a run before creating a lock file in it
    with acquire(rd.root, "report"):
        options = {"thumb_size": thumb_size, "figures": figures, "memory_axis": memory_axis,
                   "include_partial": include_partial, "formats": list(formats)}
        key = report_inputs_key(rd.root, options)
        out = rd.root / "index.html"
        if stored_key_matches(rd.root / REPORT_INPUTS_FILE, key, [out]):
            _verify_recorded_images(rd)  # the records are unchanged; the files they list must be too
            if not quiet:
                print(f"report: nothing to do: its inputs are those of the last report ({REPORT_INPUTS_FILE}); "
                      "index.html kept", file=sys.stderr)
            return out
        out = _build_report(run_dir, thumb_size=thumb_size, figures=figures, memory_axis=memory_axis,
                            include_partial=include_partial, quiet=quiet, formats=formats)
        store_key(rd.root / REPORT_INPUTS_FILE, key, "manifest, generation and metric records, summary, "
                  "per_image.csv, calibration.json, report options, evalkit version and report templates (evalkit.report.build)")
        return out


def _verify_recorded_images(rd: RunDir) -> None:
    from evalkit.report.data import verify_images
    from evalkit.rundir import load_generation_records

    manifest = read_manifest(rd.manifest)
    verify_images(rd, manifest, load_generation_records(rd, list(manifest.get("backends") or [])))


# Stored in the run directory next to index.html: the content key of what the page was drawn from.
REPORT_INPUTS_FILE = "report-inputs.json"
# Rewritten by every generate/score without a change of meaning.
_VOLATILE = ("updated_utc", "command")
_CALIBRATION_VOLATILE = ("created_utc",)


def report_inputs_key(root: Path, options: dict[str, Any]) -> str:
    """Content key of everything the page and its figures and tables are drawn from (evalkit.inputs_key). The
    images enter through their sha256 in the generation records; evalkit's own templates and code by stat."""
    files: dict[str, Any] = {"manifest.json": json_file_content(root / "manifest.json", _VOLATILE),
                             "summary.json": json_file_content(root / "summary.json", _VOLATILE)}
    for folder in ("generation", "metrics"):
        for p in sorted((root / folder).glob("*.json")):
            if p.name != "inputs.json":
                files[f"{folder}/{p.name}"] = json_file_content(p, _VOLATILE)
    fid_mode = RunDir(root).extractor_mode("fid_mode")  # score's FID/KID settings, printed beside FID
    files[fid_mode.name] = json_file_content(fid_mode, ())
    csv_path = root / "metrics" / "per_image.csv"
    files["per_image.csv"] = hashlib.sha256(csv_path.read_bytes()).hexdigest() if csv_path.is_file() else None
    # The noise floor is drawn on the quality plots and printed in the quality table: a new calibration redraws.
    calibration = RunDir(root).calibration
    files[calibration.name] = json_file_content(calibration, _CALIBRATION_VOLATILE)
    return content_key({"evalkit": __version__, "options": options, "files": files,
                        "report_code": tree_fingerprint(Path(__file__).parent)})


def _build_report(run_dir: str | Path, *, thumb_size: int, figures: bool, memory_axis: str | None,
                  include_partial: bool, quiet: bool, formats: tuple[str, ...]) -> Path:
    t0 = time.perf_counter()
    log = (lambda msg: None) if quiet else (lambda msg: print(f"report: {msg}", file=sys.stderr))
    data = load_report_data(run_dir, memory_axis, include_partial)
    from evalkit.report.images import build_images, inferno_css_gradient
    from evalkit.report.tables import write_tables

    show_images = not data.random_weights
    t_figures = time.perf_counter()
    pending = None
    if figures:
        from evalkit.report.figures import start_figures

        pending = start_figures(data, formats)  # drawn by worker processes while this one makes thumbnails and tables
    try:
        t = time.perf_counter()
        images, diff_scale = build_images(data, thumb_size=thumb_size) if show_images else ({}, 0)
        log(f"{len(images)} thumbnails in {time.perf_counter() - t:.1f} s")
        tables = write_tables(data)
    except BaseException:
        if pending is not None:
            pending.cancel()
        raise
    figs = []
    if pending is not None:
        figs = pending.wait()
        log(f"{len(figs)} figures ({', '.join(formats)}) in {time.perf_counter() - t_figures:.1f} s")
    from evalkit.report.outputs import remove_stale_outputs

    removed = remove_stale_outputs(data.root, [p for f in figs for p in f.files.values()] + list(tables))
    if removed:
        log(f"removed {len(removed)} file(s) an earlier report wrote that this run no longer has: "
            + ", ".join(data.rd.relative(p) for p in removed[:6]) + ("…" if len(removed) > 6 else ""))

    ctx = _context(data, images, figs, tables, show_images)
    ctx["diff_clip"] = diff_scale
    ctx["diff_gradient"] = inferno_css_gradient() if show_images else ""
    html = render_html(ctx)
    out = data.root / "index.html"
    atomic_write_text(out, html)
    log(f"wrote {out} ({len(html.encode()) / 1024:.0f} KiB) in {time.perf_counter() - t0:.1f} s")
    return out


# ---------------------------------------------------------------- rendering

def _static(name: str) -> str:
    return resources.files("evalkit.report").joinpath("static", name).read_text(encoding="utf-8")


def json_for_script(obj: Any) -> str:
    """JSON safe inside <script type="application/json">: `<`, `>`, `&` escaped so a prompt cannot close the tag."""
    text = json.dumps(obj, ensure_ascii=False, sort_keys=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def breakable(name: Any) -> Any:
    """A backend name for a narrow column header: escaped, with a break opportunity after each - and + (browsers
    break after "-" only, so "torchao-int8wo+compile" kept a column as wide as "int8wo+compile"). Never after
    "_": "gguf-q8_" over "0" reads as another name."""
    from markupsafe import Markup, escape

    return Markup(re.sub(r"([-+])", r"\1<wbr>", str(escape(name))))


def render_html(ctx: dict[str, Any]) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("evalkit.report", "templates"),
        autoescape=True,  # every user string (prompts, names, paths, errors) is escaped unless marked safe here
        undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["num"] = fmt_num
    env.filters["secs"] = fmt_seconds
    env.filters["breakable"] = breakable
    js = _static("report.js")
    css = _static("report.css")
    # The CSP allows exactly this script (by hash): an injected inline script or on* handler would not run.
    js_hash = base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode()
    ctx = dict(ctx, css=css, js=js, js_hash=js_hash)
    return env.get_template("index.html.j2").render(**ctx)


# ---------------------------------------------------------------- view model

def _short_labels(data: ReportData) -> dict[str, str]:
    """Card labels without the parenthesis ("LPIPS (AlexNet)" -> "LPIPS"), unless that would make two metrics alike."""
    stems = {m.key: m.label.split(" (")[0] for m in data.metrics}
    return {k: (v if list(stems.values()).count(v) == 1 else next(m.label for m in data.metrics if m.key == k))
            for k, v in stems.items()}


def _prompt_sections(data: ReportData, images: dict) -> list[dict[str, Any]]:
    sections = []
    ref_name = data.reference
    short = _short_labels(data)
    for p in data.prompts:
        pid = str(p["id"])
        cards = []
        ref_entry = images.get((ref_name, pid))
        for b in data.backends:
            if not b.ok:
                continue
            e = images.get((b.name, pid))
            vals = []
            for m in data.metrics:
                v = ((b.metrics.get(m.key) or {}).get("per_prompt") or {}).get(pid)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    vals.append({"label": short.get(m.key, m.label), "value": fmt_num(v, min(m.digits, 3)), "unit": m.unit})
            cards.append({
                "backend": b.name, "is_ref": b.name == ref_name, "entry": e, "metrics": vals,
                "mad": fmt_num(e.mean_abs_diff, 2) if e and e.mean_abs_diff is not None else None,
                "ref_full": ref_entry.full_href if ref_entry else None,
                "flags": (b.images.get(pid) or {}).get("flags") or [],
            })
        sections.append({"id": pid, "text": p.get("text", ""), "seed": p.get("seed"), "index": p.get("index"),
                         "tokens": p.get("tokens") or {}, "cards": cards})
    return sections


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _per_prompt_tables(data: ReportData) -> list[dict[str, Any]]:
    """Per metric: prompts × backends, each cell shaded by where it sits between the best and worst value. One
    format per table (3 significant digits for its smallest value), so 7.79e-05 never sits beside 0.000124."""
    tables = []
    ok = [b for b in data.backends if b.ok]
    for m in data.metrics:
        cols = [b for b in ok if (b.metrics.get(m.key) or {}).get("per_prompt")]
        if not cols:
            continue
        vals = [v for b in cols for v in (b.metrics[m.key]["per_prompt"] or {}).values() if _finite(v)]
        means = [metric_value(b.metrics.get(m.key)) for b in cols]
        d = decimals_for(vals + means, 3, at_least=min(m.digits, 3))
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
        rows = []
        for p in data.prompts:
            pid = str(p["id"])
            cells = []
            for b in cols:
                v = b.metrics[m.key]["per_prompt"].get(pid)
                if not _finite(v):
                    cells.append({"text": "—", "shade": None, "raw": ""})
                    continue
                t = 0.0 if hi == lo else (v - lo) / (hi - lo)
                badness = (1 - t) if m.higher_is_better else t if m.higher_is_better is False else None
                cells.append({"text": fmt_fixed(v, d), "raw": v, "shade": None if badness is None else round(badness, 3)})
            # "p03" in the table (the full id and the prompt on hover): a 40-character id column cost the table
            # the width of four backends.
            rows.append({"id": pid, "short": pid.split("-", 1)[0], "text": p.get("text", ""), "cells": cells})
        tables.append({"key": m.key, "label": m.label, "unit": m.unit, "hib": m.higher_is_better,
                       "backends": [b.name for b in cols], "rows": rows, "means": [fmt_fixed(v, d) for v in means]})
    return tables


def _problems(data: ReportData, images: dict) -> dict[str, Any]:
    backends = []
    for b in data.backends:
        if b.ok:
            continue
        err = (b.record or {}).get("error") or {}
        log = data.rd.log(b.name)
        backends.append({"name": b.name, "status": b.status, "reason": b.reason or "(no reason recorded)",
                         "error_type": err.get("type"), "error_message": err.get("message"),
                         "traceback": err.get("traceback_tail"),
                         "log": data.rd.relative(log) if log.exists() else None})
    missing = [(k[0], k[1], e.problem) for k, e in images.items() if e.problem]
    flags = [(b.name, pid, f) for b in data.backends for pid, img in b.images.items() for f in (img.get("flags") or [])]
    not_scored = [b.name for b in data.backends if b.ok and not b.metrics] if not data.random_weights else []
    # One row per (metric, reason): "clip_score skipped for all 14 backends" reads better than 14 identical rows.
    grouped: dict[tuple[str, str], list[str]] = {}
    for bname, key, why in data.skipped_metrics():
        grouped.setdefault((key, why), []).append(bname)
    metrics = [{"metric": k, "reason": why, "backends": names} for (k, why), names in grouped.items()]
    expected = sorted({f"{k} ({b})" for b, k, _ in data.skipped_metrics(expected=True) if b == data.reference})
    left_out = [(str(x.get("backend") or "?"), str(x.get("path") or "?"), str(x.get("reason") or "no reason recorded"))
                 for x in data.images_left_out]
    partial = [(b.name, b.partial_reason) for b in data.backends if b.ok and b.partial]
    return {"backends": backends, "metrics": metrics, "missing_images": missing, "flags": flags, "expected": expected,
            "not_scored": not_scored, "notes": data.notes, "left_out": left_out, "partial": partial,
            "count": len(backends) + len(metrics) + len(missing) + len(flags) + len(data.notes) + len(left_out) + len(partial)}


def _broken_views(data: ReportData, images: dict) -> list[dict[str, Any]]:
    """Broken output first (evalkit.tripwires): one card per broken image with its thumbnail and reference's, and
    one per backend-level tripwire (did not quantize), shown with the backend's first image."""
    from evalkit.tripwires import all_reasons

    out = []
    by_path = {}
    for b in data.backends:
        for pid, img in b.images.items():
            by_path[(b.name, str(img.get("path") or ""))] = pid
    for b in data.backends:
        if not b.ok:
            continue
        for e in b.broken:
            pid = e.get("prompt_id") or by_path.get((b.name, str(e.get("file") or "")))
            if pid is None and e.get("scope") == "backend":
                pid = next(iter(b.images), None)
            entry = images.get((b.name, str(pid))) if pid is not None else None
            ref = images.get((data.reference, str(pid))) if pid is not None else None
            out.append({"backend": b.name, "scope": e.get("scope") or "image", "prompt_id": pid,
                        "file": e.get("file"), "tripwire": e.get("tripwire"), "reason": all_reasons(e),
                        "thumb": entry.thumb_href if entry else None, "full": entry.full_href if entry else None,
                        "ref_thumb": ref.thumb_href if ref and b.name != data.reference else None})
    return out


def _blind_rounds(data: ReportData, images: dict) -> list[dict[str, Any]]:
    """Every (prompt, quantized backend) pair with both PNGs. Full-resolution PNGs: lossy thumbnails would add artefacts."""
    rounds = []
    for p in data.prompts:
        pid = str(p["id"])
        ref = images.get((data.reference, pid))
        if not ref or not ref.full_href:
            continue
        for b in data.backends:
            e = images.get((b.name, pid))
            if b.ok and b.name != data.reference and e and e.full_href:
                rounds.append({"prompt": p.get("text", ""), "prompt_id": pid, "backend": b.name, "ref": ref.full_href, "test": e.full_href})
    return rounds


def _figure_views(data: ReportData, figs: list) -> list[dict[str, Any]]:
    out = []
    for f in figs:
        links = {ext: "figures/" + p.name for ext, p in f.files.items()}
        group = "quality" if f.key.startswith("quality_vs_memory") else "latency" if f.key.startswith("quality_vs_latency") else "resources"
        out.append({"key": f.key, "title": f.title, "caption": f.caption, "src": links.get("svg") or links.get("png"), "links": links, "group": group})
    return out


def _fid_n(fid_mode: dict[str, Any]) -> str:
    """'n = 3 images per backend, 3 reference' from score's fid_mode (n is a number or a per-backend dict)."""
    n, ref = fid_mode.get("n"), fid_mode.get("n_reference")
    if isinstance(n, dict) and n:
        vals = sorted(set(n.values()), key=str)
        n = vals[0] if len(vals) == 1 else f"{min(vals)}–{max(vals)}"
    if n is None:
        return ""
    return f"n = {n} images per backend" + (f", {ref} reference" if ref is not None else "")


def _context(data: ReportData, images: dict, figs: list, tables: list[Path], show_images: bool) -> dict[str, Any]:
    manifest = data.manifest
    problems = _problems(data, images)
    blind = _blind_rounds(data, images) if show_images else []
    device = manifest.get("device") or {}
    ref = data.reference_view
    return {
        "data": data, "m": manifest, "run_id": manifest.get("run_id") or data.root.name,
        "model": manifest.get("model") or {}, "device": device, "gen": manifest.get("generation") or {},
        "versions": manifest.get("versions") or {}, "conventions": manifest.get("memory_convention") or {},
        "fid_mode": data.fid_mode or {}, "reference": data.reference, "fid_n": _fid_n(data.fid_mode or {}),
        "reference_ok": bool(ref and ref.ok),
        "random_weights": data.random_weights, "scored": data.scored, "cuda": data.has_cuda_memory,
        "device_type": data.device_type, "metrics": data.metrics, "include_partial": data.include_partial,
        "paired_labels": [m.label for m in data.metrics if m.kind == "paired"],
        "set_labels": [m.label for m in data.metrics if m.kind == "set"],
        "memory_axis_label": MEMORY_AXES[data.memory_axis][1].replace("\n", " — "),
        "perf": perf_view(data), "quality_rows": quality_rows(data), "floor_cells": noise_floor_cells(data),
        "highlights": highlights(data), "model_notice": model_notice(data),
        "prompt_sections": _prompt_sections(data, images) if show_images else [],
        "per_prompt_tables": _per_prompt_tables(data) if not data.random_weights else [],
        "category_tables": category_tables(data) if not data.random_weights else [],
        "problems": problems, "figures": _figure_views(data, figs),
        "broken": _broken_views(data, images),
        "tables": [p.name for p in tables], "show_images": show_images,
        "blind_json": json_for_script({"rounds": blind, "reference": data.reference}),
        "n_blind": len(blind),
        "config_json": json.dumps(manifest.get("config"), indent=2, sort_keys=True, ensure_ascii=False),
        "command": " ".join(str(c) for c in manifest.get("command") or []),
        "evalkit_version": __version__,
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "n_ok": sum(1 for b in data.backends if b.ok), "n_backends": len(data.backends),
    }

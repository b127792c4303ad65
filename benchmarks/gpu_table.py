"""Build the seed table (CSV and Markdown) from generate-stage run directories, never by hand.

    python3 benchmarks/gpu_table.py RUN_DIR... --out benchmarks/results/flux-dev-random-h200 \
        [--earlier benchmarks/results/gpu-2026-11-21-session3-full.json] [--notes NOTES.md]

Each RUN_DIR holds what `benchmarks/gpu_table_run.py` brought back: manifest.json, generation/<backend>.json,
generation/<backend>.partial.jsonl, and cut.json (how far a backend stopped at the call's deadline had got).
Every record becomes one CSV line, with its run's bf16 anchor beside it. The Markdown keeps one line per table row
(backend plus compile preset): a finished record over a cut one, the most images otherwise. A required row that no
run produced is filled from an `--earlier` result (benchmarks/gpu_run.py's JSON, another device and date, said so),
or listed as not measured. `--notes` is Markdown appended under the generated part: the explanations of the
anomalies, which the script lists from the numbers but cannot explain.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evalkit.quantizers.registry import BACKENDS  # noqa: E402  (no torch import: the registry is plain data)
from evalkit.io import atomic_write_text  # noqa: E402
from evalkit.record_readings import startup_median_s  # noqa: E402

# Issue #15's rows beyond the backend names: offload and compile combinations.
COMBINATIONS = ("bnb-4bit+offload", "bnb-nf4+offload", "bnb-8bit+offload", "fp8-layerwise+group-offload",
                "torchao-int4wo+compile", "torchao-int8wo+compile", "torchao-fp8wo+compile", "bnb-nf4+compile",
                "bnb-nf4+compile+offload")
REFERENCE = "bf16"
SLOWER_THAN_BF16 = 1.05  # latency ratio above which a quantized row is listed as slower than bf16
RESERVED_OVER_ALLOCATED_GIB = 1.0  # reserved above allocated after load, listed as an anomaly beyond this

COLUMNS = ("row", "run", "backend", "compile_preset", "status", "reason", "images", "latency_median_s",
           "latency_p10_s", "latency_p90_s", "latency_x_bf16", "anchor_bf16_latency_s", "load_s", "prepare_s",
           "compile_s", "compile_s_bounds", "warmup_s", "startup_s", "after_load_allocated_gib", "after_load_reserved_gib", "load_peak_allocated_gib",
           "load_peak_reserved_gib", "peak_allocated_gib", "peak_reserved_gib", "footprint_gib",
           "quantized_linears", "quantized_linears_transformer", "quantized_linears_text_encoder_2", "layer_types", "placement",
           "compile_settings", "compile_cache_warm", "compile_graphs", "compile_graph_breaks", "compile_recompilations", "torchao_config_version", "device", "gpu_count", "torch",
           "diffusers", "transformers", "torchao", "bitsandbytes", "optimum_quanto", "gguf", "date_utc", "warmup_runs",
           "source", "in_table", "int4_kernel", "modelopt", "sdnq", "auto_round", "mslk_cuda")

# The kernel an int4 record's weights run (quantization.post_load.int4_kernel, evalkit/quantizers/torchao.py), short,
# for the row's name: torchao-int4wo is one backend whose speed depends on it.
INT4_KERNEL_LABELS = (("bf16i4bf16_shuffled", "mslk preshuffled"), ("bf16i4bf16_rowwise", "mslk plain"),
                      ("tinygemm", "tinygemm"), ("dequantize", "intx dequantize"))


def required_rows() -> list[str]:
    return [*BACKENDS, *COMBINATIONS]


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _layer_types(q: dict[str, Any]) -> str:
    """'transformer: Linear4bit[Params4bit:uint8]×504; text_encoder_2: ...', quantized components only."""
    parts = []
    for comp, types in sorted((q.get("layer_types") or {}).items()):  # the family's components, whatever they are
        if types:
            parts.append(f"{comp}: " + ", ".join(f"{k}×{v}" for k, v in sorted(types.items())))
    return "; ".join(parts)


def _linear_counts(counts: dict[str, Any]) -> str:
    """'transformer 276, text_encoder 252': every component with quantized linears, in the family's own names."""
    return ", ".join(f"{comp} {n}" for comp, n in counts.items() if n)


def _config_version(q: dict[str, Any]) -> str:
    versions = sorted({str(v.get("config_version")) for v in (q.get("resolved_config") or {}).values()
                       if isinstance(v, dict) and v.get("config_version") is not None})
    return ",".join(versions)


def _settings(manifest: dict[str, Any]) -> str:
    g = manifest.get("generation") or {}
    return (f"{(manifest.get('model') or {}).get('spec')}, {g.get('height')}×{g.get('width')}, "
            f"{g.get('num_inference_steps')} steps, guidance {g.get('guidance_scale')}, max_sequence_length "
            f"{g.get('max_sequence_length')}, {g.get('dtype')}, {g.get('generator_device')} generator, "
            f"{len(manifest.get('prompts') or [])} prompts ({Path(str(manifest.get('prompts_file'))).name})")


def _int4_kernel(backend: str, rec: dict[str, Any] | None, run_cfg: dict[str, Any]) -> str:
    """Which int4 kernel a torchao-int4wo row ran: from the record (what the weights are), else what the run's
    --config asked for; "" for other backends."""
    if not backend.startswith("torchao-int4wo"):
        return ""
    kernels = (((rec or {}).get("quantization") or {}).get("post_load") or {}).get("int4_kernel") or {}
    for key in kernels:
        for needle, label in INT4_KERNEL_LABELS:
            if needle in key:
                return label
    asked = ((run_cfg.get("backend_options") or {}).get("torchao-int4wo") or {}).get("int4_packing_format")
    return f"asked: {asked}" if asked else ""


def _row_name(backend: str, compile_rec: dict[str, Any] | None, run_cfg: dict[str, Any],
              rec: dict[str, Any] | None = None) -> tuple[str, str]:
    """(table row, compile preset). A compile row without a record takes its preset from the run's --config; an
    int4 row names its kernel (one backend, several kernels: each its own row)."""
    kernel = _int4_kernel(backend, rec, run_cfg)
    name = f"{backend} ({kernel})" if kernel else backend
    if "+compile" not in backend:
        return name, ""
    preset = (compile_rec or {}).get("preset") or ((run_cfg.get("compile") or {}).get("global") or {}).get("preset") \
        or "regional"
    return f"{name} [{preset}]", preset


def _record_of(run_dir: Path, backend: str) -> tuple[dict[str, Any] | None, str]:
    """The backend's merged record, or, when a deadline stopped the stage after a one-rank run's unit had finished
    but before it merged, that unit's own record (the same figures: one rank made every image), with a note."""
    merged = run_dir / "generation" / f"{backend}.json"
    if merged.exists():
        return _json(merged), ""
    unit = run_dir / "generation" / "shards" / backend / "w1-r0.json"  # rank 0 of a world of 1
    if unit.exists():
        rec = _json(unit)
        if rec.get("status") == "ok":
            return rec, "its unit finished; the deadline stopped the stage before it merged (the unit's record)"
    return None, ""


def rows_of_run(run_dir: Path) -> list[dict[str, Any]]:
    if not (run_dir / "manifest.json").is_file():
        raise SystemExit(f"{run_dir}: no manifest.json, so not a run directory")
    manifest = _json(run_dir / "manifest.json")
    cut = _json(run_dir / "cut.json") if (run_dir / "cut.json").exists() else {}
    cuts = cut.get("cuts") or {}
    versions, device = manifest.get("versions") or {}, manifest.get("device") or {}
    anchor = _record_of(run_dir, REFERENCE)[0] or {}
    anchor_lat = (anchor.get("latency") or {}).get("median_s") if anchor.get("status") == "ok" else None
    common = {"run": run_dir.name, "anchor_bf16_latency_s": anchor_lat, "device": device.get("name"),
              "gpu_count": device.get("device_count"), "torch": versions.get("torch"),
              "diffusers": versions.get("diffusers"), "transformers": versions.get("transformers"),
              "torchao": versions.get("torchao"), "bitsandbytes": versions.get("bitsandbytes"),
              "optimum_quanto": versions.get("optimum-quanto"), "gguf": versions.get("gguf"),
              "modelopt": versions.get("nvidia-modelopt"), "sdnq": versions.get("sdnq"),
              "auto_round": versions.get("auto-round"), "mslk_cuda": versions.get("mslk-cuda"),
              "date_utc": manifest.get("created_utc"), "source": str(run_dir),
              "warmup_runs": (manifest.get("generation") or {}).get("warmup_runs"),
              "settings": _settings(manifest)}
    out = []
    for backend in manifest["backends"]:
        rec, unmerged = _record_of(run_dir, backend)
        row: dict[str, Any] = dict(common, backend=backend)
        comp = (rec or {}).get("compile")
        row["row"], row["compile_preset"] = _row_name(backend, comp, manifest.get("config") or {}, rec)
        row["int4_kernel"] = _int4_kernel(backend, rec, manifest.get("config") or {})
        if rec is None:
            c = cuts.get(backend) or {}
            lats = c.get("image_latencies_s") or []
            if not c.get("worker_started"):
                row.update(status="not started", reason="the call's deadline came before this backend's turn")
            else:
                n = len(manifest["prompts"])
                where = ("loading or warm-up (compiling, for +compile)" if not lats else
                         f"image {len(lats) + 1} of {n}" if len(lats) < n else
                         f"writing its record, after all {n} images (the memory figures are in the record only)")
                row.update(status="not finished",
                           reason=f"stopped at the call's deadline {c.get('seconds_run')} s after its worker started, "
                                  f"in {where}")
            if lats:  # finished images still say how fast it runs; marked as partial by the status
                s = sorted(lats)
                row.update(images=len(s), latency_median_s=s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2)
            else:
                row["images"] = 0
            out.append(row)
            continue
        mem, lat, q = rec.get("memory") or {}, rec.get("latency") or {}, rec.get("quantization") or {}
        qcount = q.get("quantized_linear_count") or {}
        row.update(status=rec.get("status"), reason=rec.get("reason") or unmerged, images=lat.get("n") or 0,
                   latency_median_s=lat.get("median_s"), latency_p10_s=lat.get("p10_s"), latency_p90_s=lat.get("p90_s"),
                   load_s=rec.get("load_time_s"), prepare_s=(rec.get("prepare") or {}).get("seconds"),
                   compile_s=rec.get("compile_time_s"),
                   warmup_s=(rec.get("warmup_times_s") or [None])[0] if rec.get("warmup_times_s") else None,
                   startup_s=startup_median_s(rec),
                   after_load_allocated_gib=mem.get("after_load_allocated_gib"),
                   after_load_reserved_gib=mem.get("after_load_reserved_gib"),
                   load_peak_allocated_gib=mem.get("load_peak_allocated_gib"),
                   load_peak_reserved_gib=mem.get("load_peak_reserved_gib"),
                   peak_allocated_gib=mem.get("peak_allocated_gib"), peak_reserved_gib=mem.get("peak_reserved_gib"),
                   footprint_gib=(rec.get("footprint") or {}).get("total_gib"),
                   quantized_linears=_linear_counts(qcount), quantized_linears_transformer=qcount.get("transformer"),
                   quantized_linears_text_encoder_2=qcount.get("text_encoder_2"),
                   layer_types=_layer_types(q), placement=(rec.get("placement") or {}).get("placement"),
                   compile_settings="" if not comp else
                   f"mode={comp.get('mode')} fullgraph={comp.get('fullgraph')} dynamic={comp.get('dynamic')} "
                   f"regional={comp.get('regional')} regions={comp.get('compiled_regions')}"
                   + (f" woq_int8pack={comp['woq_int8pack']}" if "woq_int8pack" in comp else ""),
                   compile_cache_warm=((comp or {}).get("cache") or {}).get("warm"),
                   torchao_config_version=_config_version(q))
        if (bounds := compile_bounds(rec, manifest.get("generation") or {})) is not None:
            row.update(compile_s=None, compile_s_bounds=f"{bounds[0]:.1f}–{bounds[1]:.1f}")
        dyn = (comp or {}).get("dynamo") or {}
        row.update(compile_graphs=dyn.get("unique_graphs"), compile_graph_breaks=dyn.get("graph_breaks"),
                   compile_recompilations=dyn.get("recompilations"))
        if dyn.get("recompile_limit_hit"):  # its later calls ran eagerly: the latency is not a compiled one
            why = (dyn.get("recompile_reasons") or ["reason not recorded"])[0]
            row.update(status="ok (partly eager)",
                       reason=f"torch._dynamo hit its recompile limit after {dyn.get('recompilations')} "
                              f"recompilations (first: {why}); later calls ran eagerly")
        out.append(row)
    for row in out:
        if row.get("latency_median_s") and row.get("anchor_bf16_latency_s"):
            row["latency_x_bf16"] = row["latency_median_s"] / row["anchor_bf16_latency_s"]
    return out


def compile_bounds(rec: dict[str, Any], generation: dict[str, Any]) -> tuple[float, float] | None:
    """Bounds on the compile time of a `+compile` record written before `compile.time_basis` (2026-12-06), whose
    one short warm-up (`--warmup-steps`) was compared with a whole image: its compile_time_s is only a lower bound
    (0.0 where the image is longer than the warm-up). The warm-up less the image's share of its steps is an upper
    bound (the image's fixed work, text encoding and decoding, is in the warm-up whole). None when the record's own
    figure stands."""
    comp = rec.get("compile")
    warm = rec.get("warmup_times_s") or []
    median = (rec.get("latency") or {}).get("median_s")
    steps = generation.get("num_inference_steps")
    short = generation.get("warmup_steps")
    if not comp or "time_basis" in comp or len(warm) != 1 or not median or not steps or not short or short >= steps:
        return None
    return max(0.0, warm[0] - median), max(0.0, warm[0] - median * short / steps)


def rows_of_earlier(path: Path, wanted: set[str]) -> list[dict[str, Any]]:
    """Rows of a benchmarks/gpu_run.py result (an earlier device and date) for required rows nobody measured now."""
    data = _json(path)
    by = {r["backend"]: r for r in data["rows"]}
    anchor = (by.get(REFERENCE) or {}).get("latency_median_s")
    out = []
    for name in sorted(wanted & set(by)):
        r = by[name]
        if r.get("status") != "ok":
            continue
        q = {"layer_types": r.get("layer_types")}
        out.append({"row": name, "run": path.stem, "backend": name, "compile_preset": "", "status": "ok (earlier)",
                    "reason": f"not measured in these runs: {data['device'].get('name')}, {(data.get('date_utc') or '')[:10]}, "
                              f"from {path.name}", "images": r.get("latency_n"),
                    "latency_median_s": r.get("latency_median_s"), "anchor_bf16_latency_s": anchor,
                    "latency_x_bf16": r["latency_median_s"] / anchor if anchor and r.get("latency_median_s") else None,
                    "load_s": r.get("load_time_s"), "prepare_s": r.get("prepare_s"), "compile_s": r.get("compile_time_s"),
                    "after_load_allocated_gib": r.get("after_load_allocated_gib"),
                    "after_load_reserved_gib": r.get("after_load_reserved_gib"),
                    "load_peak_reserved_gib": r.get("load_peak_reserved_gib"),
                    "peak_allocated_gib": r.get("peak_allocated_gib"), "peak_reserved_gib": r.get("peak_reserved_gib"),
                    "footprint_gib": r.get("footprint_gib"),
                    "quantized_linears": _linear_counts(r.get("quantized_linear_count") or {}),
                    "quantized_linears_transformer": (r.get("quantized_linear_count") or {}).get("transformer"),
                    "quantized_linears_text_encoder_2": (r.get("quantized_linear_count") or {}).get("text_encoder_2"),
                    "layer_types": _layer_types(q), "device": data["device"].get("name"),
                    "gpu_count": data["device"].get("device_count"), "date_utc": data.get("date_utc"),
                    "source": str(path), **{k: data["versions"].get(v) for k, v in (
                        ("torch", "torch"), ("diffusers", "diffusers"), ("transformers", "transformers"),
                        ("torchao", "torchao"), ("bitsandbytes", "bitsandbytes"), ("optimum_quanto", "optimum-quanto"),
                        ("gguf", "gguf"))}})
    return out


_RANK = {"ok": 4, "failed": 3, "ok (earlier)": 2, "not finished": 1, "not started": 0}


def choose_table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per table row: a finished record first, then a recorded failure, an earlier run, a cut one (the
    most images); bf16 from the first run that has it (every run's anchor is listed apart)."""
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        cur = best.get(r["row"])
        key = (_RANK.get(r["status"], 0), r.get("images") or 0)
        if cur is None or key > (_RANK.get(cur["status"], 0), cur.get("images") or 0):
            best[r["row"]] = r
    for r in rows:
        r["in_table"] = best.get(r["row"]) is r
    # An earlier device's figure stands in for a row that was cut here; the images it did finish here still say
    # something about this device, so the note carries them (marked partial, as in the cut row itself).
    for name, chosen in best.items():
        if chosen["status"] != "ok (earlier)":
            continue
        cut = [r for r in rows if r["row"] == name and r["status"] == "not finished" and r.get("images")]
        if cut:
            c = max(cut, key=lambda r: r["images"])
            chosen["reason"] += (f"; {c.get('device')} (run {c['run']}): cut after {c['images']} "
                                 f"image{'s' if c['images'] != 1 else ''}, median {c['latency_median_s']:.2f} s (partial)")
    return list(best.values())


def _note(reason: str | None, limit: int = 240) -> str:
    """A table cell's note: long reasons (tracebacks) are cut visibly, never silently; the CSV has them whole."""
    text = " ".join((reason or "").split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit].rstrip() + " … (whole reason in the CSV)"


def anomalies(table: list[dict[str, Any]], bf16: dict[str, Any] | None) -> list[str]:
    """The four kinds issue #15 asks about, found in the numbers (the notes say why)."""
    out = []
    ok = [r for r in table if r["status"].startswith("ok") and r["backend"] != REFERENCE]
    ref_alloc = (bf16 or {}).get("after_load_allocated_gib")
    for r in ok:
        a, res = r.get("after_load_allocated_gib"), r.get("after_load_reserved_gib")
        if ref_alloc and a is not None and a >= ref_alloc:
            out.append(f"`{r['row']}`: memory after load {a:.2f} GiB is not below bf16's {ref_alloc:.2f} GiB")
        lp, pk = r.get("load_peak_reserved_gib"), r.get("peak_reserved_gib")
        if lp is not None and pk is not None and pk < lp:
            out.append(f"`{r['row']}`: generation peak reserved {pk:.2f} GiB is below the loading peak {lp:.2f} GiB")
        if a is not None and r.get("peak_allocated_gib") is not None and r["peak_allocated_gib"] < a:
            out.append(f"`{r['row']}`: generation peak allocated {r['peak_allocated_gib']:.2f} GiB is below memory "
                       f"after load {a:.2f} GiB")
        if a is not None and res is not None and res - a > RESERVED_OVER_ALLOCATED_GIB:
            out.append(f"`{r['row']}`: reserved {res:.2f} GiB after load against {a:.2f} GiB allocated "
                       f"(+{res - a:.2f} GiB)")
        if r.get("compile_s_bounds"):
            out.append(f"`{r['row']}`: compile time only bounded, {r['compile_s_bounds']} s: its one short warm-up "
                       "was measured against a whole image (a record from before compile.time_basis)")
        x = r.get("latency_x_bf16")
        if x is not None and x > SLOWER_THAN_BF16:
            out.append(f"`{r['row']}`: {x:.2f}× bf16's latency ({r['latency_median_s']:.2f} s vs "
                       f"{r['anchor_bf16_latency_s']:.2f} s, same run)")
    return out


def _f(v: Any, digits: int = 2) -> str:
    if v is None or v == "":
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown(table: list[dict[str, Any]], rows: list[dict[str, Any]], notes: str) -> str:
    order = {name: i for i, name in enumerate(required_rows())}
    table = sorted(table, key=lambda r: (order.get(r["backend"], len(order)), r["row"]))
    runs = [r for r in rows if r["backend"] == REFERENCE and r["status"] == "ok" and not r["run"].startswith("gpu-")]
    # A run without a bf16 anchor (bf16 does not fit the GPU: --no-reference) still names its device and settings.
    anchored = {r["run"] for r in runs}
    unanchored = {r["run"]: r for r in rows if r["run"] not in anchored and not r["run"].startswith("gpu-")}
    heads = runs + list(unanchored.values())
    devices = sorted({f"{r['device']} (×{r['gpu_count'] or 1})" for r in heads})
    settings = sorted({r["settings"] for r in heads if r.get("settings")})
    vers = heads[0] if heads else {}
    models = sorted({str(r["settings"]).split(",")[0] for r in heads if r.get("settings")})
    # The seed table (issue #3's required rows) is FLUX.1-dev's; another family's table lists the rows it measured.
    seed = not heads or all(m.endswith(("flux-dev", "flux1-dev")) for m in models)
    title = "The seed table" if seed else f"GPU table of {', '.join(models)}"
    lines = [f"# {title} on {', '.join(devices) or '?'}", "",
             "Written by `benchmarks/gpu_table.py` from the run directories beside this file; do not edit by hand.",
             "", f"Settings: {'; '.join(settings)}. Software: torch {vers.get('torch')}, diffusers {vers.get('diffusers')}, "
             f"transformers {vers.get('transformers')}, torchao {vers.get('torchao')}, bitsandbytes "
             f"{vers.get('bitsandbytes')}, optimum-quanto {vers.get('optimum_quanto')}, gguf {vers.get('gguf')}.",
             "Memory in GiB from torch's caching allocator on the GPU (allocated / reserved): after load, the loading "
             "peak, and the generation peak (reset before the warm-up). Latency: seconds an image after the warm-up "
             "(median, p10–p90 over the images); × bf16 against the bf16 anchor of the same run. Rows that are not "
             "`ok` are not numbers to compare: their reason says what they are.", "",
             "| row | status | images | s/image median (p10–p90) | × bf16 | after load alloc / res | load peak alloc / res "
             "| gen peak alloc / res | load s | compile s | quantized linears | run | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        partial = r["status"] in ("not finished", "not started")
        if partial and r.get("latency_median_s") is not None:
            # Images a cut backend finished: real, but not a finished row's figure; say so in the cell itself.
            spread = f"partial: {_f(r['latency_median_s'])} ({r['images']} image{'s' if r['images'] != 1 else ''})"
        elif r.get("latency_p10_s") is not None:
            spread = f"{_f(r.get('latency_median_s'))} ({_f(r.get('latency_p10_s'))}–{_f(r.get('latency_p90_s'))})"
        else:
            spread = _f(r.get("latency_median_s"))
        ratio = f"~{_f(r.get('latency_x_bf16'))}" if partial and r.get("latency_x_bf16") else _f(r.get("latency_x_bf16"))
        lines.append(
            f"| {r['row']} | {r['status']} | {_f(r.get('images'))} | {spread} | {ratio} | "
            f"{_f(r.get('after_load_allocated_gib'))} / {_f(r.get('after_load_reserved_gib'))} | "
            f"{_f(r.get('load_peak_allocated_gib'))} / {_f(r.get('load_peak_reserved_gib'))} | "
            f"{_f(r.get('peak_allocated_gib'))} / {_f(r.get('peak_reserved_gib'))} | {_f(r.get('load_s'), 1)} | "
            f"{r.get('compile_s_bounds') or _f(r.get('compile_s'), 1)} | {r.get('quantized_linears') or '-'} | {r['run']} | "
            f"{_note(r.get('reason'))} |")
    missing = [name for name in required_rows() if not any(r["backend"] == name for r in table)]
    if missing and seed:
        lines += ["", "Required rows with no run and no earlier result: " + ", ".join(f"`{m}`" for m in missing) + "."]
    lines += ["", "## The bf16 anchor of each run", "", "| run | device | warm-up images | s/image median (p10–p90) | "
              "after load alloc / res | gen peak alloc / res |", "|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['run']} | {r['device']} | {_f(r.get('warmup_runs'))} | {_f(r['latency_median_s'])} ({_f(r['latency_p10_s'])}–"
                     f"{_f(r['latency_p90_s'])}) | {_f(r['after_load_allocated_gib'])} / "
                     f"{_f(r['after_load_reserved_gib'])} | {_f(r['peak_allocated_gib'])} / {_f(r['peak_reserved_gib'])} |")
    for name in sorted(unanchored):
        lines.append(f"| {name} | {unanchored[name]['device']} | - | no bf16 in this run: its rows have no × bf16 | - | - |")
    bf16 = next((r for r in table if r["backend"] == REFERENCE), None)
    lines += ["", "## Anomalies found in the numbers", ""] + [f"- {a}" for a in anomalies(table, bf16)]
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def collect(table: list[dict[str, Any]], out_dir: Path) -> None:
    """One run directory holding the record of every finished table row (for `evalkit report`): the manifest of the
    run whose bf16 is the table's, with every row's record copied beside it. Rows of other runs are compared with
    that bf16: the anchors of the runs agree (see the table's anchor list), which is what makes this fair."""
    import shutil

    ref = next(r for r in table if r["backend"] == REFERENCE and r["status"] == "ok")
    manifest = _json(Path(ref["source"]) / "manifest.json")
    order = {name: i for i, name in enumerate(required_rows())}
    chosen = sorted((r for r in table if r["status"] in ("ok", "failed") and Path(r["source"]).is_dir()),
                    key=lambda r: order.get(r["backend"], len(order)))
    names = [r["backend"] for r in chosen]
    if len(set(names)) != len(names):  # two presets of one backend: keep the first, in the order runs were given
        seen: set[str] = set()
        chosen = [r for r in chosen if not (r["backend"] in seen or seen.add(r["backend"]))]
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "generation").mkdir(parents=True)
    for r in chosen:
        shutil.copy(Path(r["source"]) / "generation" / f"{r['backend']}.json", out_dir / "generation")
    manifest["backends"] = [r["backend"] for r in chosen]
    manifest["collected_from"] = {r["backend"]: r["run"] for r in chosen}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dirs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.csv and OUT.md")
    ap.add_argument("--earlier", type=Path, action="append", default=[])
    ap.add_argument("--notes", type=Path)
    ap.add_argument("--collect", type=Path, help="also write one run directory of every finished row (for evalkit report)")
    a = ap.parse_args(argv)
    rows = [r for d in a.run_dirs for r in rows_of_run(d)]
    have_ok = {r["backend"] for r in rows if r["status"] in ("ok", "failed")}
    for path in a.earlier:
        rows += rows_of_earlier(path, set(required_rows()) - have_ok - {REFERENCE})
    table = choose_table_rows(rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items() if k in COLUMNS})
    atomic_write_text(a.out.with_suffix(".csv"), buf.getvalue())
    notes = a.notes.read_text() if a.notes else ""
    atomic_write_text(a.out.with_suffix(".md"), markdown(table, rows, notes))
    if a.collect:
        collect(table, a.collect)
    print(f"{len(rows)} records, {len(table)} table rows -> {a.out.with_suffix('.csv')}, {a.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

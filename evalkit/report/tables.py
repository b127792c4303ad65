"""Paper tables: `tables/*.csv` (every number, machine-readable) and `tables/*.tex` (booktabs, escaped)."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

from evalkit.io import atomic_write_text
from evalkit.report.categories import categories_tex, category_means
from evalkit.report.data import MEMORY_KINDS, MEMORY_PHASES, ReportData, metric_value
from evalkit.report.latex import latex_escape, standalone_document, tabular as _tabular, tex_fixed
from evalkit.report.numbers import SecondsColumn, decimals_for
from evalkit.report.summary import GIB_DECIMALS, floor_text, quality_column


def summary_rows(data: ReportData) -> list[dict[str, Any]]:
    """One flat row per backend with every raw number (CSV keeps full precision; the page rounds)."""
    rows = []
    for b in data.backends:
        mem, lat = b.memory, b.latency
        row: dict[str, Any] = {
            "backend": b.name, "status": b.status, "reason": b.reason or "", "library": b.library,
            "memory_device": mem.get("device", ""), "footprint_gib": b.footprint_gib,
            "partial_reason": b.partial_reason or "",
        }
        for phase, _ in MEMORY_PHASES:
            for kind, _ in MEMORY_KINDS:
                row[f"{phase}_{kind}_gib"] = mem.get(f"{phase}_{kind}_gib")
        row["cuda_reason"] = mem.get("cuda_reason") or ""
        row["cpu_peak_rss_gib"] = mem.get("cpu_peak_rss_gib")
        for k in ("n", "median_s", "mean_s", "std_s", "p10_s", "p90_s", "min_s", "max_s"):
            row[f"latency_{k}"] = lat.get(k)
        row["latency_noisy"] = b.latency_noisy if b.ok else ""
        row["load_time_s"] = (b.record or {}).get("load_time_s")
        row["compile_time_s"] = (b.record or {}).get("compile_time_s")
        for m in data.metrics:
            rec = b.metrics.get(m.key) or {}
            row[f"{m.key}"] = metric_value(rec)
            row[f"{m.key}_ci_low"] = rec.get("ci_low")
            row[f"{m.key}_ci_high"] = rec.get("ci_high")
            row[f"{m.key}_n"] = rec.get("n")
            row[f"{m.key}_indicative"] = bool(rec.get("indicative")) if rec else ""
        rows.append(row)
    return rows


def per_prompt_rows(data: ReportData) -> list[dict[str, Any]]:
    rows = []
    text = {p["id"]: p.get("text", "") for p in data.prompts}
    for b in data.backends:
        for m in data.metrics:
            for pid, v in ((b.metrics.get(m.key) or {}).get("per_prompt") or {}).items():
                rows.append({"prompt_id": pid, "prompt": text.get(pid, ""), "backend": b.name, "metric": m.key, "value": v})
    return rows


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def csv_cell(v: Any) -> Any:
    """A cell a spreadsheet opens as text, never as a formula: a text cell starting with = + - @ (or tab/CR)
    gets a leading apostrophe (OWASP's CSV-injection advice). Numbers stay numbers: a negative value is data."""
    if v is None:
        return ""
    if isinstance(v, str) and v.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(v):
        return "'" + v
    return v


def to_csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    fields = list(rows[0])
    for r in rows[1:]:
        fields += [k for k in r if k not in fields]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: csv_cell(v) for k, v in r.items()})
    return buf.getvalue()



def _footnotes(data: ReportData, latency: bool = True) -> str:
    out = ""
    if any(b.ok and b.partial for b in data.backends):
        out += " $^\\dagger$Quantized less than its name says on this device (see the report's Problems section)."
    if latency and any(b.ok and b.latency_noisy for b in data.backends):
        out += " $^\\ast$Noisy: p90$-$p10 exceeds the median."
    return out


def performance_tex(data: ReportData) -> str:
    """Memory and latency per backend, one unit and one format per column (as the page)."""
    ok = [b for b in data.backends if b.ok]
    cuda = data.has_cuda_memory
    fields = ["load_peak_reserved_gib", "peak_allocated_gib", "peak_reserved_gib"] if cuda else ["footprint_gib", "cpu_peak_rss_gib"]
    mem_dec = {f: decimals_for([b.memory_value(f) for b in ok], 3, at_least=GIB_DECIMALS) for f in fields}
    lat = SecondsColumn([b.latency.get("median_s") for b in ok])
    load = SecondsColumn([(b.record or {}).get("load_time_s") for b in ok])
    if cuda:
        header = ["Backend", "Load (res.)", "Peak (alloc.)", "Peak (res.)"]
        notes = ("Memory in GiB ($2^{30}$ bytes). Load: peak reserved while loading "
                 "(\\texttt{torch.cuda.max\\_memory\\_reserved}); Peak: during generation. "
                 "Latency: median per image.")
    else:
        header = ["Backend", "Weights", "CPU peak RSS"]
        notes = ("CPU run: no GPU memory was measured. Weights: parameter bytes; CPU peak RSS: worker process "
                 "\\texttt{ru\\_maxrss}, GiB. Latency: median per image.")
    header += [f"Latency ({lat.unit})", f"Load time ({load.unit})"]
    rows = []
    for b in data.backends:
        if not b.ok:
            rows.append([latex_escape(b.name)] + [f"\\multicolumn{{{len(header) - 1}}}{{l}}{{{latex_escape(b.status)}: {latex_escape((b.reason or '')[:60])}}}"])
            continue
        name = latex_escape(b.name) + ("$^\\dagger$" if b.partial else "")
        mem = [tex_fixed(b.memory_value(f), mem_dec[f]) for f in fields]
        noisy = "$^\\ast$" if b.latency_noisy else ""
        rows.append([name] + mem + [lat(b.latency.get("median_s")).replace("—", "--") + noisy,
                                    load((b.record or {}).get("load_time_s")).replace("—", "--")])
    notes += _footnotes(data)
    return _tabular("Memory and latency per backend.", "tab:evalkit-performance", header, rows, "l" + "r" * (len(header) - 1), notes)


def noise_floor_rows(data: ReportData) -> list[dict[str, Any]]:
    """One CSV row per metric the calibration measured: the floor as calibration.json states it."""
    return [{"metric": key, "status": f.status, "value": f.value, "identical": f.identical, "display": f.display,
             "set_by": f.source, "reason": f.reason} for key, f in data.floors.items()]


def _floor_tex_row(data: ReportData) -> list[str] | None:
    if not data.floors:
        return None
    cells = ["\\textit{noise floor}"]
    for m in data.metrics:
        f = data.floors.get(m.key)
        text = floor_text(data, m)  # in the column's format, as on the page
        cells.append("--" if f is None else "n/a" if text is None else
                     latex_escape(text) if text and text[0] not in "0123456789-" else text)
    return cells


def quality_tex(data: ReportData) -> str:
    header = ["Backend"] + [latex_escape(m.label + (f" ({m.unit})" if m.unit else "")) + (" $\\uparrow$" if m.higher_is_better else " $\\downarrow$" if m.higher_is_better is False else "") for m in data.metrics]
    decimals = {m.key: quality_column(data, m).decimals for m in data.metrics}  # one format per column, as the page
    rows = []
    for b in data.backends:
        if not b.ok or not b.metrics:
            continue
        cells = [latex_escape(b.name) + ("$^\\dagger$" if b.partial else "")]
        for m in data.metrics:
            rec = b.metrics.get(m.key) or {}
            v = metric_value(rec)
            lo, hi = rec.get("ci_low"), rec.get("ci_high")
            d = decimals[m.key]
            cell = tex_fixed(v, d) + ("$^\\S$" if v is not None and rec.get("indicative") else "")
            if v is not None and isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
                cell += f" {{\\scriptsize [{tex_fixed(lo, d)}, {tex_fixed(hi, d)}]}}"
            cells.append(cell)
        rows.append(cells)
    floor_row = _floor_tex_row(data)
    if floor_row:
        rows.append(["\\midrule " + floor_row[0]] + floor_row[1:])
    ns = sorted({str((b.metrics.get(m.key) or {}).get("n")) for b in data.backends for m in data.metrics if (b.metrics.get(m.key) or {}).get("n") is not None})
    notes = f"Against the {latex_escape(data.reference)} reference. Mean over prompts with 95\\% bootstrap CI; n = {latex_escape(', '.join(ns) or '--')} images."
    if any(rec.get("indicative") for b in data.backends for rec in b.metrics.values()):
        notes += " $^\\S$Indicative only: too few images for this statistic."
    if floor_row:
        notes += (f" Noise floor: the worst 95\\% CI end of {latex_escape(data.reference)} against itself under "
                  "perturbations a release should tolerate (evalkit calibrate); a difference inside it is noise.")
    notes += _footnotes(data, latency=False)
    return _tabular("Image quality per backend.", "tab:evalkit-quality", header, rows, "l" + "r" * len(data.metrics), notes)


def write_tables(data: ReportData) -> list[Path]:
    """Write tables/ and return the files written."""
    out = data.root / "tables"
    written = []

    def put(name: str, text: str) -> None:
        atomic_write_text(out / name, text)
        written.append(out / name)

    put("summary.csv", to_csv(summary_rows(data)))
    put("performance.tex", performance_tex(data))
    if data.metrics and not data.random_weights:
        put("quality.tex", quality_tex(data))
        put("per_prompt.csv", to_csv(per_prompt_rows(data)))
        if data.floors:
            put("noise_floor.csv", to_csv(noise_floor_rows(data)))
        by_category = category_means(data)
        if by_category:  # only when the prompts carry categories (PartiPrompts, DrawBench)
            put("per_category.csv", to_csv(by_category))
            put("per_category.tex", categories_tex(data))
    return written


__all__ = ["latex_escape", "standalone_document", "write_tables"]

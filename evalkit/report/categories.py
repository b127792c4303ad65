"""Per-category breakdowns (issue #16.5): when the prompts carry a `category` (PartiPrompts, DrawBench), the mean
of each per-prompt metric per category and backend, for the page and as tables/per_category.csv and .tex.

A metric's per-prompt values (metrics/<backend>.json `per_prompt`) are averaged over the category's prompts that
have a value; `n` says how many, so a category mean over two prompts is not read like one over two hundred.
Prompts without a category are grouped as "(none)" when others have one. Set metrics (FID, KID) have no
per-prompt value and are left out: a per-category FID would need its own reference statistics.
"""

from __future__ import annotations

import math
from typing import Any

from evalkit.report.data import MetricInfo, ReportData
from evalkit.report.latex import latex_escape, tabular
from evalkit.report.numbers import decimals_for, fmt_fixed

NO_CATEGORY = "(none)"


def categories(data: ReportData) -> list[str]:
    """The prompts' categories in first-seen order; empty when no prompt has one (no breakdown then)."""
    cats = [p.get("category") for p in data.prompts]
    if not any(isinstance(c, str) and c for c in cats):
        return []
    return list(dict.fromkeys(c if isinstance(c, str) and c else NO_CATEGORY for c in cats))


def _prompt_metrics(data: ReportData) -> list[MetricInfo]:
    return [m for m in data.metrics if any((b.metrics.get(m.key) or {}).get("per_prompt") for b in data.backends if b.ok)]


def category_means(data: ReportData) -> list[dict[str, Any]]:
    """Rows {category, backend, metric, mean, n, n_prompts}: every number of the breakdown, for the CSV."""
    cats = categories(data)
    if not cats:
        return []
    members: dict[str, list[str]] = {c: [] for c in cats}
    for p in data.prompts:
        c = p.get("category")
        members[c if isinstance(c, str) and c else NO_CATEGORY].append(str(p["id"]))
    rows = []
    for m in _prompt_metrics(data):
        for b in data.backends:
            per_prompt = (b.metrics.get(m.key) or {}).get("per_prompt") if b.ok else None
            if not per_prompt:
                continue
            for c in cats:
                vals = [v for pid in members[c] for v in [per_prompt.get(pid)]
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
                rows.append({"category": c, "backend": b.name, "metric": m.key,
                             "mean": sum(vals) / len(vals) if vals else None, "n": len(vals),
                             "n_prompts": len(members[c])})
    return rows


def category_tables(data: ReportData) -> list[dict[str, Any]]:
    """Per metric, for the page: categories × backends, each cell the mean over the category (n in the title)."""
    rows = category_means(data)
    if not rows:
        return []
    tables = []
    for m in _prompt_metrics(data):
        mine = [r for r in rows if r["metric"] == m.key]
        backends = list(dict.fromkeys(r["backend"] for r in mine))
        cells = {(r["category"], r["backend"]): r for r in mine}
        d = decimals_for([r["mean"] for r in mine], 3, at_least=min(m.digits, 3))  # one format per table
        body = []
        for c in categories(data):
            n_prompts = next((r["n_prompts"] for r in mine if r["category"] == c), 0)
            body.append({"category": c, "n_prompts": n_prompts,
                         "cells": [{"text": fmt_fixed(cells[(c, b)]["mean"], d) if (c, b) in cells else "—",
                                    "n": cells[(c, b)]["n"] if (c, b) in cells else 0} for b in backends]})
        tables.append({"key": m.key, "label": m.label, "unit": m.unit, "hib": m.higher_is_better,
                       "backends": backends, "rows": body})
    return tables


def categories_tex(data: ReportData) -> str:
    """One booktabs table per metric: category rows, backend columns (tables/per_category.tex)."""
    out = []
    for t in category_tables(data):
        arrow = " $\\uparrow$" if t["hib"] else " $\\downarrow$" if t["hib"] is False else ""
        header = ["Category", "$n$"] + [latex_escape(b) for b in t["backends"]]
        body = [[latex_escape(r["category"]), str(r["n_prompts"])] + [c["text"].replace("—", "--") for c in r["cells"]]
                for r in t["rows"]]
        unit = f" ({latex_escape(t['unit'])})" if t["unit"] else ""
        out.append(tabular(f"{latex_escape(t['label'])}{unit}{arrow} per prompt category: mean over the category's prompts.",
                            f"tab:evalkit-category-{t['key'].replace('_', '-')}", header, body,
                            "lr" + "r" * len(t["backends"]),
                            f"Against the {latex_escape(data.reference)} reference; $n$: prompts in the category."))
    return "\n".join(out)

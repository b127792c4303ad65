"""Summaries of the score stage: per backend and metric, the record of docs/run-directory.md (mean, bootstrap
CI, n, per-prompt means, skips with reasons; set statistics with their sample sizes), the per-image CSV,
each extractor's settings (fid_mode.json) and summary.json. Reads values from the score cache; computes no image.
Every fact about a metric comes from the registry (kind, direction, derivation, extractor, class hooks)."""

from __future__ import annotations

import csv
import hashlib
import io
from typing import TYPE_CHECKING, Any

import numpy as np

from evalkit.records import build_metric_record
from evalkit.io import atomic_write_json, atomic_write_text, read_json
from evalkit.metrics import registry as reg
from evalkit.score.cache import json_key
from evalkit.score.common import (MAX_LISTED, Item, feature_key, get_metric, metric_options, prompt_table,
                                    set_extractors, skipped, text_sha, unavailable)
from evalkit.score.images import RESIZE_POLICY
from evalkit.score.stats import summarize
from evalkit.rundir import RunDir, write_summary

if TYPE_CHECKING:
    from evalkit.score.state import State

CSV_COLUMNS = ["backend", "prompt_id", "seed", "metric", "value", "status", "note"]


def _per_prompt(items: list[Item], values: dict[int, float]) -> dict[str, float]:
    acc: dict[str, list[float]] = {}
    for i, v in values.items():
        acc.setdefault(items[i].prompt_id, []).append(v)
    return {k: float(np.mean(v)) for k, v in sorted(acc.items())}


def summary_record(state: "State", name: str, items: list[Item], values: dict[int, float],
                   skips: list[tuple[int, str]], extra: dict[str, Any]) -> dict[str, Any]:
    spec = reg.get_spec(name)
    if not values:
        reasons = sorted({r for _i, r in skips})
        if len(reasons) > 1 and all(r.startswith(("broken ", "its reference image is broken")) for r in reasons):
            kinds = sorted({r.split(":", 1)[0] for r in reasons})
            rec = skipped(f"every image is broken or has a broken reference ({', '.join(kinds)}): the record's "
                          f"`broken` list says which and why")
        else:
            rec = skipped(reasons[0] if len(reasons) == 1 else f"no pair could be scored ({'; '.join(reasons[:3])})"
                          if reasons else "no images to score")
        rec["n_skipped"] = len(skips)
        return rec
    order = sorted(values)
    return {"status": "ok", **summarize([values[i] for i in order], state.opts.bootstrap_samples),
            "higher_is_better": spec.higher_is_better, "per_prompt": _per_prompt(items, values),
            "n_skipped": len(skips),
            "skipped": [{"prompt_id": items[i].prompt_id, "seed": items[i].seed, "reason": r}
                        for i, r in skips[:MAX_LISTED]],
            "description": spec.description, **extra}


def summarise_backend(state: "State", b: str, ref_ok: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every metric's record for backend `b`, and its rows of per_image.csv."""
    return _BackendSummary(state, b, ref_ok).run()


class _BackendSummary:
    """summarise_backend's work for one backend: a record per metric from the cache's tables, and the CSV rows."""

    def __init__(self, state: "State", b: str, ref_ok: bool) -> None:
        self.state, self.b, self.ref_ok = state, b, ref_ok
        self.items = state.items[b]
        self.corrupt_t = state.cache.table("corrupt")
        self.n_corrupt = sum(1 for it in self.items if it.sha in self.corrupt_t)
        self.rows: list[dict[str, Any]] = []
        # Broken images (evalkit.score.broken) are left out of every mean, with their reason; so are pairs whose
        # reference image is broken.
        _entries, bad, ref_bad, _notes = state.broken.get(b, ([], {}, {}, []))
        self.bad_key = {(self.items[i].prompt_id, self.items[i].seed): why for i, why in bad.items()}
        self.ref_bad_key = {(self.items[i].prompt_id, self.items[i].seed): why for i, why in ref_bad.items()}
        self.n_broken = len(bad)

    def run(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        state, opts = self.state, self.state.opts
        out: dict[str, Any] = {}
        for m in opts.metrics:
            spec = reg.get_spec(m)
            why_not = unavailable(opts, m)
            if why_not:
                out[m] = skipped(why_not)
            elif spec.kind == "set":
                out[m] = _set_record(state, self.b, m, self.ref_ok)
            elif (spec.kind == "paired" or spec.derived_from) and (nr := self.no_reference()):
                out[m] = nr
            elif spec.kind == "paired":
                out[m] = self.paired(m)
            elif spec.derived_from:
                out[m] = self.derived(m, spec.derived_from)
            else:
                out[m] = self.prompt(m)
        return out, self.rows

    def corrupt_reason(self, it: Item, with_ref: bool) -> str | None:
        if (it.prompt_id, it.seed) in self.bad_key:
            return self.bad_key[(it.prompt_id, it.seed)]
        if with_ref and (it.prompt_id, it.seed) in self.ref_bad_key:
            return self.ref_bad_key[(it.prompt_id, it.seed)]
        if it.sha in self.corrupt_t:
            return f"corrupt image {it.path.name}: {self.corrupt_t[it.sha]}"
        if with_ref and it.ref_sha in self.corrupt_t:
            return (f"corrupt reference image {it.ref_path.name if it.ref_path else '?'}: "
                    f"{self.corrupt_t[it.ref_sha]}")
        return None

    def row(self, it: Item, metric: str, value: float | None, status: str, note: str = "") -> None:
        self.rows.append({"backend": self.b, "prompt_id": it.prompt_id, "seed": it.seed, "metric": metric,
                          "value": "" if value is None else repr(float(value)), "status": status, "note": note})

    def no_reference(self) -> dict[str, Any] | None:
        state, b = self.state, self.b
        if b == state.ref:
            return skipped(f"{b} is the reference backend (compared against itself)")
        if not self.ref_ok or state.ref not in state.items:
            return skipped(f"reference backend {state.ref} has no usable images")
        return None

    def skip(self, skips: list[tuple[int, str]], i: int, it: Item, m: str, why: str) -> None:
        skips.append((i, why))
        self.row(it, m, None, "skipped", why)

    def paired(self, m: str) -> dict[str, Any]:
        table = self.state.cache.table(f"pair-{m}-{reg.cache_key(m)}")
        values: dict[int, float] = {}
        skips: list[tuple[int, str]] = []
        n_resized = 0
        for i, it in enumerate(self.items):
            cr = self.corrupt_reason(it, True)
            e = table.get(it.pair_key)
            if cr or e is None or e.get("v") is None:
                self.skip(skips, i, it, m, cr or (e or {}).get("skip") or "not computed")
                continue
            values[i] = e["v"]
            n_resized += bool(e.get("r"))
            self.row(it, m, e["v"], "ok", "reference resized" if e.get("r") else "")
        extra = {"n_resized": n_resized, "resize_policy": RESIZE_POLICY if n_resized else None,
                 "n_corrupt": self.n_corrupt, "n_broken": self.n_broken, "options": metric_options(m)}
        hook = getattr(reg.factory_class(m), "summary_extra", None)
        if hook is not None:
            extra.update(hook([values[i] for i in sorted(values)]))
        return summary_record(self.state, m, self.items, values, skips, extra)

    def _prompt_facts(self, base: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """A prompt metric's class, what it says of itself (describe) and its per-image table in the cache."""
        cls = reg.factory_class(base)
        fopts = self.state.opts.factory_options("prompt")
        described = dict(reg.call_with(cls.describe, fopts)) if hasattr(cls, "describe") else {}
        return cls, described, self.state.cache.table(prompt_table(self.state.opts, base))

    def derived(self, m: str, base: str) -> dict[str, Any]:
        """A metric derived from prompt metric `base`: reference minus backend, per image."""
        state = self.state
        _cls, described, table = self._prompt_facts(base)
        values: dict[int, float] = {}
        skips: list[tuple[int, str]] = []
        ref_by_key = {(it.prompt_id, it.seed): it for it in state.items[state.ref]}
        for i, it in enumerate(self.items):
            r = ref_by_key.get((it.prompt_id, it.seed))
            e = table.get(f"{it.sha}:{text_sha(it.prompt)}")
            er = table.get(f"{r.sha}:{text_sha(r.prompt)}") if r else None
            if e is None or er is None or r is None or r.sha in self.corrupt_t or self.corrupt_reason(it, True):
                self.skip(skips, i, it, m, self.corrupt_reason(it, True) or
                          f"no {base} for this image or its reference")
                continue
            values[i] = er["v"] - e["v"]
            self.row(it, m, values[i], "ok")
        # What identifies the numbers: the model, and the weights' SHA-256 where the user supplied them.
        extra = {k: v for k, v in described.items() if k in ("model", "weights_sha256")}
        return summary_record(state, m, self.items, values, skips, {**extra, "definition": "reference minus backend",
                                                                    "n_broken": self.n_broken})

    def prompt(self, m: str) -> dict[str, Any]:
        cls, described, table = self._prompt_facts(m)
        values: dict[int, float] = {}
        skips: list[tuple[int, str]] = []
        n_flag = 0
        for i, it in enumerate(self.items):
            e = table.get(f"{it.sha}:{text_sha(it.prompt)}")
            cr = self.corrupt_reason(it, False)
            if cr or e is None:
                self.skip(skips, i, it, m, cr or "not computed")
                continue
            values[i] = e["v"]
            n_flag += bool(e.get("t"))
            self.row(it, m, e["v"], "ok", getattr(cls, "FLAG_NOTE", "flagged") if e.get("t") else "")
        flags = {getattr(cls, "FLAG_COUNT", "n_flagged"): n_flag}
        return summary_record(self.state, m, self.items, values, skips,
                              {**described, **flags, "n_corrupt": self.n_corrupt, "n_broken": self.n_broken})


def kept_items(state: "State", b: str) -> list[Item]:
    """Backend b's items less its broken images (evalkit.score.broken): what a set statistic is over."""
    bad = (state.broken.get(b) or ([], {}, {}, []))[1]
    return [it for i, it in enumerate(state.items[b]) if i not in bad]


def _set_features(state: "State", items: list[Item], ext: str) -> np.ndarray:
    key = feature_key(ext, state.opts)
    corrupt_t = state.cache.table("corrupt")
    fs = [state.cache.get_features(key, it.sha) for it in items if it.sha not in corrupt_t]
    fs = [f for f in fs if f is not None]
    return np.stack(fs) if fs else np.zeros((0, 0))


def _set_record(state: "State", b: str, m: str, ref_ok: bool) -> dict[str, Any]:
    """A set metric's record: the statistic of b's features against the reference set's (or --real-dir's)."""
    from evalkit.metrics.kinds import NotComputable

    spec = reg.get_spec(m)
    ext = str(spec.extractor)
    against_real = spec.reference == "real"
    if not against_real and b == state.ref:
        return skipped(f"{b} is the reference set")
    if not against_real and not ref_ok:
        return skipped(f"reference backend {state.ref} has no usable images")
    fb = _set_features(state, kept_items(state, b), ext)
    if against_real:
        real = state.real_feats.get(ext)
        if isinstance(real, reg.MetricUnavailable) or real is None:
            return skipped(str(real or "no --real-dir"))
        fr, n_ref, _nc = real
        ref_name = f"real images ({state.opts.real_dir})"
        ref_shas = ["real"] + sorted(hashlib.sha256(f.tobytes()).hexdigest()[:16] for f in fr)
    else:
        fr = _set_features(state, kept_items(state, state.ref), ext)
        n_ref = fr.shape[0]
        ref_name = state.ref
        ref_shas = sorted(it.sha for it in kept_items(state, state.ref))
    n = fb.shape[0]
    state.dist_n.setdefault(ext, {})[b] = n
    base = {"n": n, "n_reference": int(n_ref), "reference": ref_name}
    key = hashlib.sha256(json_key([m, reg.cache_key(m), state.opts.result_options(), feature_key(ext, state.opts), ref_shas,
                                   sorted(it.sha for it in kept_items(state, b))])).hexdigest()
    table = state.cache.table("distribution")
    if key in table:
        return table[key]
    metric = get_metric(state.opts, m, state.device)
    if isinstance(metric, reg.MetricUnavailable):
        return skipped(str(metric))
    try:
        rec = {"status": "ok", **metric.statistic(fb, fr), **base, "higher_is_better": spec.higher_is_better}
        rec["value"] = float(rec["value"])
    except NotComputable as e:
        rec = {**skipped(e.reason), **base}
    state.cache.put("distribution", key, rec)
    return rec


def write_outputs(rd: RunDir, results: dict[str, dict[str, Any]], rows: list[dict[str, Any]], ref: str,
                  names: list[str], state: "State | None") -> None:
    """metrics/<backend>.json, metrics/per_image.csv, each extractor's settings file, then summary.json."""
    from evalkit.score.common import extractor_unavailable
    from evalkit.weights.store import headline_missing

    # Default metrics that were asked for and lack their pinned weights: summary.json's status says so.
    missing_headline = list(headline_missing(names, state.opts.weights_dir)) if state else []
    # The kind of device, not rank 0's own GPU: a score on N GPUs states what one process on one GPU states.
    device = state.device.split(":")[0] if state else None

    for b, mets in results.items():
        broken = broken_fields(state, b) if state is not None and b in state.broken else {}
        rec = build_metric_record(backend=b, metrics=mets, reference_backend=ref, metrics_version=reg.METRICS_VERSION,
                                  device=device, missing_headline_metrics=missing_headline, **broken)
        atomic_write_json(rd.metrics_record(b), rec)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(rd.metrics_dir / "per_image.csv", buf.getvalue())
    if state is not None:
        for ext in set_extractors(names):
            espec = reg.get_extractor_spec(ext)
            cls = reg.extractor_class(ext)
            if not espec.mode_key or extractor_unavailable(state.opts, ext) or not hasattr(cls, "describe"):
                continue
            mode = dict(reg.call_with(cls.describe, state.opts.factory_options("extractor")))
            mode["n"] = dict(sorted(state.dist_n.get(ext, {}).items()))
            mode["n_reference"] = len(state.items.get(ref, []))
            mode["reference_backend"] = ref
            if state.opts.real_dir:
                mode["real_dir"] = state.opts.real_dir
            path = rd.extractor_mode(espec.mode_key)  # score's own file: the manifest is generate's
            if not path.is_file() or read_json(path) != mode:
                atomic_write_json(path, mode)
    write_summary(rd.root)


def broken_fields(state: "State", b: str) -> dict[str, Any]:
    """The metric record's `broken` list and `tripwires` summary (docs/run-directory.md "Broken output")."""
    from evalkit import tripwires

    entries, bad, ref_bad, notes = state.broken[b]
    return {"broken": entries,
            "tripwires": {"version": tripwires.TRIPWIRES_VERSION,
                          "n_broken": tripwires.count_broken(entries, len(state.items[b])),
                          "n_reference_broken": len(ref_bad), "not_evaluated": notes[:MAX_LISTED],
                          "n_not_evaluated": len(notes)}}

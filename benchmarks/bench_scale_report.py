"""benchmarks/bench_scale.py's JSON -> benchmarks/results/scale-<device>x<N>-<date>.md: per backend and rank the fixed
costs and per-image times, steady-state throughput against one GPU, the study's wall-time ratio, the schedule chosen,
PNG identity, the fixed-cost share, a projection (1,000 prompts; #14's 16 prompts x 4 backends on 4 GPUs) checked
against the real N-GPU run, and scoring pairs/s on 1 rank vs N.

    python benchmarks/bench_scale_report.py scale.json [--out benchmarks/results]

Where the numbers come from (all from the run directories' own records, nothing re-timed here):
  * per image: `latency_s` (the pipeline call) and the cycle, the median gap between consecutive PNGs' mtimes on one
    rank (the call plus writing the PNG and its record line);
  * per (backend, rank) worker: its wall time from `started_utc`/`finished_utc` (1-s resolution, so the fixed costs
    below are +-1 s); fixed cost F = wall - images x cycle, split into load (`load_time_s`), warm-up
    (`warmup_times_s`) and start-up = first PNG - start - cycle - load - warm-up (fork, imports, CUDA context);
  * per run: overhead S = the command's wall - the busiest rank's summed worker walls (launcher, rank start, plan,
    merge, summary).
The model: a unit (backend b, c prompts) costs F_b + c t_b, a rank runs its units one after another, the study takes
S + the busiest rank. F_b and t_b (the cycle) come from the one-GPU run, S from each run.
"""

from __future__ import annotations

import argparse
import calendar
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

THROUGHPUT_BACKENDS = ("bf16", "torchao-int8wo")
THROUGHPUT_TARGET = 0.95  # issue #14: aggregate images/s over N ranks >= 0.95 N x one GPU's
FIXED_SHARE_TARGET = 0.10
MAX_K_COMBINATIONS = 200_000


def _epoch(utc: str | None) -> float | None:
    return calendar.timegm(time.strptime(utc, "%Y-%m-%dT%H:%M:%SZ")) if utc else None


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


# ------------------------------------------------------------------------------------------------ per rank rows

def _units(run: dict, backend: str) -> dict[str, dict]:
    """prompt_id -> {tag, rank} from merge.json (the sharded stage's attribution), else {}."""
    merge = run.get("merge") or {}
    units = ((merge.get("backends") or {}).get(backend) or {}).get("units") or []
    return {u["prompt_id"]: u for u in units if isinstance(u, dict) and "prompt_id" in u}


def _row(backend: str, tag: str, rank: int, src: dict, images: list[dict], status: str) -> dict[str, Any]:
    lat = [i["latency_s"] for i in images if isinstance(i.get("latency_s"), (int, float))]
    mt = sorted(i["mtime_ns"] / 1e9 for i in images if isinstance(i.get("mtime_ns"), int))
    gaps = [b - a for a, b in zip(mt, mt[1:])]
    cycle = _median(gaps) if gaps else _median(lat)
    started, finished = _epoch(src.get("started_utc")), _epoch(src.get("finished_utc"))
    load = src.get("load_time_s")
    warm = sum(src.get("warmup_times_s") or []) if src.get("warmup_times_s") is not None else None
    row: dict[str, Any] = {"backend": backend, "tag": tag, "rank": rank, "status": status, "n": len(images),
                           "latency_median_s": _median(lat), "cycle_s": cycle, "load_s": load, "warmup_s": warm,
                           "compile_s": src.get("compile_time_s"), "gpu": src.get("gpu"), "host": src.get("host"),
                           "wall_s": None, "fixed_s": None, "startup_s": None, "teardown_s": None,
                           "started_epoch": started}
    if started is not None and finished is not None:
        row["wall_s"] = finished - started
        if cycle is not None:
            row["fixed_s"] = row["wall_s"] - len(images) * cycle
    if started is not None and mt and cycle is not None and load is not None and warm is not None:
        row["startup_s"] = mt[0] - started - cycle - load - warm
    if finished is not None and mt:
        row["teardown_s"] = finished - mt[-1]
    return row


def rank_rows(run: dict) -> list[dict[str, Any]]:
    """One row per (backend, rank) that worked on it, whatever the stage version wrote: a merged record with `ranks`,
    a plain record (one rank), or, for a backend cut before its merge, its shard records and partial lists."""
    files = run.get("generation") or {}
    backends = (run.get("manifest") or {}).get("backends") or []
    rows: list[dict[str, Any]] = []
    for b in backends:
        rec = files.get(f"generation/{b}.json")
        if isinstance(rec, dict) and rec.get("status") == "ok":
            if rec.get("ranks"):
                units = _units(run, b)
                for r in rec["ranks"]:
                    mine = [i for i in rec.get("images", [])
                            if (units.get(i["prompt_id"], {}).get("tag") == r.get("tag") if units
                                else i.get("pid") == r.get("pid"))]
                    rows.append(_row(b, r.get("tag", "?"), r.get("rank", 0), r, mine, "ok"))
            else:
                rows.append(_row(b, "w1-r0", 0, rec, rec.get("images", []), "ok"))
            continue
        rows.extend(_cut_rows(b, files, rec))
    return rows


def _cut_rows(b: str, files: dict[str, Any], rec: Any) -> list[dict[str, Any]]:
    out = []
    prefix = f"generation/shards/{b}/"
    tags = sorted({Path(k).name.split(".")[0] for k in files if k.startswith(prefix)})
    for tag in tags:
        final, partial = files.get(f"{prefix}{tag}.json"), files.get(f"{prefix}{tag}.partial.jsonl") or []
        src = final if isinstance(final, dict) else {}
        images = src.get("images") or [i for i in partial if isinstance(i, dict)]
        status = src.get("status") or "cut"
        rank = (src.get("shard") or {}).get("rank", int(tag.split("-r")[-1]) if "-r" in tag else 0)
        out.append(_row(b, tag, rank, src, images, status if status != "ok" else "ok (not merged)"))
    legacy = files.get(f"generation/{b}.partial.jsonl")
    if not tags and (legacy or isinstance(rec, dict)):
        src = rec if isinstance(rec, dict) else {}
        out.append(_row(b, "w1-r0", 0, src, [i for i in legacy or [] if isinstance(i, dict)],
                        src.get("status") or "cut"))
    return out


# ------------------------------------------------------------------------------------------------ the model

def lpt(units: list[tuple[str, float]], n: int) -> tuple[float, list[float]]:
    """Longest first onto the least loaded rank that has no unit of the same backend yet (as the design asks)."""
    loads, owned = [0.0] * n, [set() for _ in range(n)]
    for b, cost in sorted(units, key=lambda u: -u[1]):
        free = [r for r in range(n) if b not in owned[r]] or list(range(n))
        r = min(free, key=lambda i: loads[i])
        loads[r] += cost
        owned[r].add(b)
    return max(loads), loads


def chunks(n_prompts: int, k: int) -> list[int]:
    return [n_prompts // k + (1 if i < n_prompts % k else 0) for i in range(k)]


def plan(costs: dict[str, tuple[float, float]], n_prompts: int, n: int, policy: str) -> dict[str, Any]:
    """Makespan (without the run's overhead S) of one policy: whole backends, every backend split over all ranks,
    or the best per-backend chunk counts k_b (ties to fewer chunks: fewer fixed costs)."""
    names = list(costs)
    kmax = min(n, n_prompts)

    def evaluate(ks: tuple[int, ...]) -> tuple[float, float, tuple[int, ...]]:
        units = [(b, costs[b][0] + c * costs[b][1]) for b, k in zip(names, ks) for c in chunks(n_prompts, k)]
        span, _ = lpt(units, n)
        return span, sum(k * costs[b][0] for b, k in zip(names, ks)), ks

    if policy == "backends":
        best = evaluate(tuple(1 for _ in names))
    elif policy == "prompts":
        best = evaluate(tuple(kmax for _ in names))
    else:
        space = itertools.product(range(1, kmax + 1), repeat=len(names))
        if kmax ** len(names) > MAX_K_COMBINATIONS:  # many ranks: the same k for every backend, a fair approximation
            space = (tuple(k for _ in names) for k in range(1, kmax + 1))
        best = min((evaluate(ks) for ks in space), key=lambda e: (round(e[0], 6), sum(e[2])))
    span, fixed, ks = best
    work = sum(costs[b][0] * k + n_prompts * costs[b][1] for b, k in zip(names, ks))
    return {"policy": policy, "makespan_s": span, "chunks": dict(zip(names, ks)), "fixed_s": fixed,
            "fixed_share": fixed / (n * span) if span else None, "busy_s": work}


def evalkit_plan(costs: dict[str, tuple[float, float]], n_prompts: int, n: int) -> dict[str, Any] | None:
    """What evalkit's own scheduler (evalkit/generate/schedule.py, `--schedule auto`) chooses for these costs; None
    in a tree without it. Same costs as the other policies, so the rows compare policies, not cost models."""
    try:
        from evalkit.generate.schedule import Cost, make_schedule
    except ImportError:
        return None
    s = make_schedule({b: [f"p{i}" for i in range(n_prompts)] for b in costs},
                      {b: Cost(f, t, "measured") for b, (f, t) in costs.items()}, n, "auto")
    fixed = sum(costs[u.backend][0] for u in s.units)
    return {"policy": f"evalkit ({s.policy})", "makespan_s": s.makespan_s, "chunks": dict(s.chunks), "fixed_s": fixed,
            "fixed_share": fixed / (n * s.makespan_s) if s.makespan_s else None, "reason": s.reason}


PROJECTED_POLICIES = ("backends", "prompts", "auto", "evalkit")


def project(costs: dict[str, tuple[float, float]], n_prompts: int, n: int, s1: float, sn: float) -> dict[str, Any]:
    one = s1 + sum(f + n_prompts * t for f, t in costs.values())
    out: dict[str, Any] = {"n_prompts": n_prompts, "n": n, "one_gpu_s": one}
    for policy in PROJECTED_POLICIES:
        p = evalkit_plan(costs, n_prompts, n) if policy == "evalkit" else plan(costs, n_prompts, n, policy)
        if p is None:
            continue
        p["wall_s"] = sn + p["makespan_s"]
        p["speedup"] = one / p["wall_s"]
        out[policy] = p
    return out


# ------------------------------------------------------------------------------------------------ analysis

def _step(res: dict, name: str) -> dict:
    return next((s for s in res.get("steps", []) if s.get("name") == name), {})


def _find(obj: Any, word: str, path: str = "") -> dict[str, Any]:
    """Every manifest entry whose key mentions `word` (the stage records its schedule there; the key may move)."""
    found: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{path}.{k}" if path else k
            if word in k.lower():
                found[p] = v
            elif isinstance(v, dict):
                found.update(_find(v, word, p))
    return found


def analyse(res: dict) -> dict[str, Any]:
    n = res["n"]
    s1, sn = _step(res, "study-1"), _step(res, "study-n")
    rows1, rowsn = rank_rows(s1.get("run") or {}), rank_rows(sn.get("run") or {})
    a: dict[str, Any] = {"rows_1": rows1, "rows_n": rowsn}
    # Costs per backend from the one-GPU run (its rank ran every backend whole).
    costs, a["costs_basis"] = _costs(rows1, rowsn)
    a["costs"] = costs
    overhead = {}
    for key, step, rows in (("1", s1, rows1), ("n", sn, rowsn)):
        busy: dict[int, float] = {}
        for r in rows:
            busy[r["rank"]] = busy.get(r["rank"], 0.0) + (r["wall_s"] or 0.0)
        wall = step.get("wall_s")
        # A rank's start: from the command's start to its first worker's (torchrun, imports, plan, forkserver).
        first: dict[int, float] = {}
        for r in rows:
            if r["started_epoch"] is not None and res.get("started_epoch") is not None and "started_s" in step:
                at = r["started_epoch"] - (res["started_epoch"] + step["started_s"])
                first[r["rank"]] = min(first.get(r["rank"], at), at)
        overhead[key] = {"wall_s": wall, "cut": step.get("cut"), "rc": step.get("rc"), "busy_by_rank": busy,
                         "first_worker_after_s": first,
                         "overhead_s": wall - max(busy.values()) if wall is not None and busy else None,
                         "fixed_sum_s": sum(r["fixed_s"] or 0.0 for r in rows),
                         "fixed_share": (sum(r["fixed_s"] or 0.0 for r in rows) / ((n if key == "n" else 1) * wall))
                         if wall else None}
    a["runs"] = overhead
    w1, wn = overhead["1"]["wall_s"], overhead["n"]["wall_s"]
    a["wall_ratio"] = w1 / wn if w1 and wn and not overhead["1"]["cut"] and not overhead["n"]["cut"] else None
    a["throughput"] = {}
    for b in THROUGHPUT_BACKENDS:
        one = [r for r in rows1 if r["backend"] == b and r["latency_median_s"]]
        many = [r for r in rowsn if r["backend"] == b and r["latency_median_s"]]
        if not one or not many:
            continue
        single = 1.0 / one[0]["latency_median_s"]
        agg = sum(1.0 / r["latency_median_s"] for r in many)
        a["throughput"][b] = {"one_gpu_img_s": single, "ranks_ran": len(many), "aggregate_img_s": agg,
                              "ratio_to_ranks_ran": agg / (single * len(many)),
                              "per_rank_latency_s": {r["tag"]: r["latency_median_s"] for r in many},
                              "measured_over_all_n": len(many) == n}
    manifest_n = ((sn.get("run") or {}).get("manifest")) or {}
    a["schedule"] = {"manifest": _find(manifest_n, "schedul"), "printed": sn.get("schedule_lines") or []}
    a["chosen_units"] = _chosen_units(rowsn)
    if costs and len(costs) == len(res["backends"]):
        s_n = overhead["n"]["overhead_s"] or 0.0
        # A cut one-GPU run has no overhead of its own: the N-GPU run's stands in (it also pays torchrun's start).
        measured = not overhead["1"]["cut"] and overhead["1"]["overhead_s"] is not None
        s_1 = overhead["1"]["overhead_s"] if measured else s_n
        a["s_1_basis"] = "measured" if measured else "the N-GPU run's S (1-GPU run cut)"
        a["check"] = _check(costs, res["prompts_count"], n, s_1, s_n, rowsn, wn)
        a["projected_1_wall_s"] = s_1 + sum(f + res["prompts_count"] * t for f, t in costs.values())
        a["projections"] = [project(costs, 1000, n, s_1, s_n), project(costs, 16, 4, s_1, s_n)]
        if n != 4:
            a["projections"].append(project(costs, 1000, 4, s_1, s_n))
    return a


def _costs(rows1: list[dict], rowsn: list[dict]) -> tuple[dict[str, tuple[float, float]], dict[str, str]]:
    """F_b and t_b per backend: from the one-GPU run (every backend whole on one GPU), else, where that run was cut
    before the backend finished, the median over the N-GPU run's ranks that finished it."""
    costs, basis = {}, {}
    for r in rows1:
        if r["status"] == "ok" and r["fixed_s"] is not None and r["cycle_s"] is not None:
            costs[r["backend"]], basis[r["backend"]] = (r["fixed_s"], r["cycle_s"]), "1-GPU run"
    for b in dict.fromkeys(r["backend"] for r in rowsn):
        done = [r for r in rowsn if r["backend"] == b and r["status"] == "ok" and r["fixed_s"] is not None
                and r["cycle_s"] is not None]
        if b not in costs and done:
            costs[b] = (statistics.median(r["fixed_s"] for r in done), statistics.median(r["cycle_s"] for r in done))
            basis[b] = f"N-GPU run, {len(done)} rank(s)"
    return costs, basis


def _chosen_units(rows: list[dict]) -> dict[str, dict[str, int]]:
    """backend -> {tag: images} as the N-GPU run actually split it."""
    return {b: {r["tag"]: r["n"] for r in rows if r["backend"] == b} for b in dict.fromkeys(r["backend"] for r in rows)}


def _check(costs: dict, prompts: int, n: int, s1: float, sn: float, rowsn: list[dict], wall_n: float | None) -> dict:
    """The model against the real N-GPU run: the units the run chose, costed with the one-GPU run's F_b and t_b."""
    loads: dict[int, float] = {}
    for r in rowsn:
        if r["backend"] in costs:
            f, t = costs[r["backend"]]
            loads[r["rank"]] = loads.get(r["rank"], 0.0) + f + r["n"] * t
    predicted = sn + max(loads.values()) if loads else None
    return {"predicted_n_wall_s": predicted, "measured_n_wall_s": wall_n,
            "error": (predicted - wall_n) / wall_n if predicted and wall_n else None,
            "model_best": {p: plan(costs, prompts, n, p) for p in ("backends", "prompts", "auto")}}


# ------------------------------------------------------------------------------------------------ markdown

def _f(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _device(res: dict) -> tuple[str, str]:
    """(file slug, words) for the machine."""
    env = res.get("environment") or {}
    if res.get("device") == "cpu" or not env.get("nvidia_smi"):
        return "cpu", f"CPU ({env.get('cpu_count')} cores, host {env.get('host')})"
    name = env["nvidia_smi"][0].split(",")[1].strip()
    slug = name.replace("NVIDIA", "").strip().split()[0].lower()
    return slug, f"{len(env['nvidia_smi'])}x {name} ({env.get('cpu_count')} CPU cores), {res['n']} used"


def render(res: dict, a: dict) -> str:
    slug, device = _device(res)
    env = res.get("environment") or {}
    L = [f"# Scale-out on {device}, {res['started_utc'][:10]} (issue #14)", "",
         "Written by `benchmarks/bench_scale_report.py` from `bench_scale.py`'s JSON; do not edit by hand.", "",
         f"Study: `--model {res['model']}`, backends {', '.join(res['backends'])}, the first {res['prompts_count']} "
         f"prompts of `benchmarks/{res['prompts_file']}`, warm-up {res['warmup']}; one GPU (world size 1, "
         f"CUDA_VISIBLE_DEVICES=0) against N = {res['n']} (`--gpus`). Started {res['started_utc']}; "
         f"versions: {', '.join(f'{k} {v}' for k, v in (env.get('versions') or {}).items() if v)}; "
         f"tree {(env.get('tree_commit') or '?')[:10]}.", ""]
    L += ["## The study: wall time", "", "| run | wall s | rc | ranks busy s | first worker after s | overhead S s "
          "| fixed share |", "|---|---|---|---|---|---|---|"]
    for key, label in (("1", "1 GPU"), ("n", f"{res['n']} GPUs")):
        r = a["runs"][key]
        rc = "cut at the deadline" if r["cut"] else "not run" if r["wall_s"] is None else r["rc"]
        L.append(f"| {label} | {_f(r['wall_s'])} | {rc} | "
                 f"{', '.join(f'r{k}: {v:.0f}' for k, v in sorted(r['busy_by_rank'].items())) or '-'} | "
                 f"{', '.join(f'r{k}: {v:.0f}' for k, v in sorted(r['first_worker_after_s'].items())) or '-'} | "
                 f"{_f(r['overhead_s'])} | {_f(r['fixed_share'] and 100 * r['fixed_share'])}% |")
    L += ["", f"Wall-time ratio (1 GPU / {res['n']} GPUs): **{_f(a['wall_ratio'], 2)}x** (ideal {res['n']}x)"
          + ("" if a["wall_ratio"] else ": not measured (a run was cut or failed)") + "."]
    if not a["wall_ratio"] and a.get("projected_1_wall_s") and a["runs"]["n"]["wall_s"] and not a["runs"]["n"]["cut"]:
        L.append(f"Projected instead, NOT measured: the 1-GPU run's wall from the model (S + sum of F_b + P t_b; "
                 f"S {a['s_1_basis']}) = {a['projected_1_wall_s']:.0f} s, ratio "
                 f"{a['projected_1_wall_s'] / a['runs']['n']['wall_s']:.2f}x.")
    L += [
          "Busy = a rank's summed worker walls; first worker after = the command's start to the rank's first "
          "worker (launcher, imports, plan, forkserver; +-1 s); S = wall - the busiest rank (start, merge, summary); "
          "fixed share = the workers' fixed costs F over (ranks x wall).", ""]
    L += _schedule_md(res, a) + _rows_md(a) + _throughput_md(res, a) + _pngs_md(res) + _projection_md(res, a)
    L += _scoring_md(res)
    L += ["## Steps of the call", "", "| step | started s | wall s | rc |", "|---|---|---|---|"]
    for s in res["steps"] + ((res.get("scoring") or {}).get("steps") or []):
        L.append(f"| {s['name']} | {_f(s.get('started_s'))} | {_f(s.get('wall_s'))} | "
                 f"{s.get('not_started') or ('cut at the deadline' if s.get('cut') else s.get('rc'))} |")
    L += ["", f"Deadline {res['deadline_s']:.0f} s after the call's start; the script finished at "
          f"{_f(res.get('finished_s'))} s. Plan (seconds, from the seed table): {res.get('estimate')}.", ""]
    return "\n".join(L)


def _schedule_md(res: dict, a: dict) -> list[str]:
    L = ["## The schedule the N-GPU run chose", ""]
    sch = a["schedule"]
    if sch["manifest"]:
        L += [f"- manifest `{k}`: `{json.dumps(v)[:600]}`" for k, v in sch["manifest"].items()]
    L += [f"- printed: `{ln}`" for ln in sch["printed"]]
    if not sch["manifest"] and not sch["printed"]:
        L.append("- the stage recorded and printed no schedule (this tree predates `--schedule`).")
    L.append("- units as run (backend: rank tag = images): " + "; ".join(
        f"{b}: " + ", ".join(f"{t} = {k}" for t, k in sorted(u.items())) for b, u in a["chosen_units"].items()))
    return L + [""]


def _rows_md(a: dict) -> list[str]:
    L = ["## Fixed costs and per-image time, per backend and rank", "",
         "Seconds. F = worker wall - images x cycle; start-up = first PNG - start - cycle - load - warm-up "
         "(fork, imports, CUDA context); timestamps have 1-s resolution, so F, start-up and tear-down are +-1 s.", "",
         "| run | backend | rank | status | images | latency median | cycle | start-up | load | warm-up | compile "
         "| tear-down | F | worker wall |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, rows in (("1 GPU", a["rows_1"]), ("N GPUs", a["rows_n"])):
        for r in rows:
            L.append(f"| {label} | {r['backend']} | {r['tag']} | {r['status']} | {r['n']} | "
                     f"{_f(r['latency_median_s'], 2)} | {_f(r['cycle_s'], 2)} | {_f(r['startup_s'])} | "
                     f"{_f(r['load_s'])} | {_f(r['warmup_s'])} | {_f(r['compile_s'])} | {_f(r['teardown_s'])} | "
                     f"{_f(r['fixed_s'])} | {_f(r['wall_s'])} |")
    return L + [""]


def _throughput_md(res: dict, a: dict) -> list[str]:
    L = ["## Steady-state throughput", "",
         f"Aggregate images/s = sum over the ranks that ran the backend of 1 / median latency; target "
         f">= {THROUGHPUT_TARGET} x ranks x one GPU's (issue #14).", "",
         "| backend | 1 GPU img/s | ranks ran it | aggregate img/s | aggregate / (ranks x 1 GPU) | per-rank median s |",
         "|---|---|---|---|---|---|"]
    for b, t in a["throughput"].items():
        L.append(f"| {b} | {t['one_gpu_img_s']:.4f} | {t['ranks_ran']} of {res['n']} | {t['aggregate_img_s']:.4f} | "
                 f"**{t['ratio_to_ranks_ran']:.3f}** | "
                 + ", ".join(f"{k}: {v:.2f}" for k, v in sorted(t["per_rank_latency_s"].items())) + " |")
    partial = [b for b, t in a["throughput"].items() if not t["measured_over_all_n"]]
    if partial:
        L += ["", f"{', '.join(partial)}: the schedule ran it on fewer than {res['n']} ranks, so the aggregate over "
              f"all {res['n']} GPUs is not measured; the ratio is over the ranks that ran it (per-GPU efficiency)."]
    if not a["throughput"]:
        L.append("Not measured: a run lacks these backends' records.")
    return L + [""]


def _pngs_md(res: dict) -> list[str]:
    p = res.get("pngs") or {}
    if p.get("differ"):
        verdict = "NOT identical"
    elif not p.get("common"):
        verdict = "not compared: no image was made by both runs"
    elif p.get("only_in_a") or p.get("only_in_b"):
        verdict = "identical where both runs made the image; the others were not reached by one run"
    else:
        verdict = "identical"
    L = ["## Byte identity", "", f"{p.get('identical')} of {p.get('common')} PNGs common to both runs are "
         f"byte-identical ({p.get('in_a')} in the 1-GPU run, {p.get('in_b')} in the N-GPU run; mean "
         f"{_f((p.get('bytes_mean') or 0) / 1e6, 2)} MB): **{verdict}**."]
    for key in ("differ", "only_in_a", "only_in_b"):
        if p.get(key):
            L.append(f"- {key}: {', '.join(p[key][:8])}{' ...' if len(p[key]) > 8 else ''}")
    return L + [""]


def _projection_md(res: dict, a: dict) -> list[str]:
    L = ["## Model and projection", ""]
    if "check" not in a:
        return L + ["Not computed: the one-GPU run has no finished record for every backend.", ""]
    L.append("Costs (F = a unit's fixed cost, t = the cycle per image): " + "; ".join(
        f"{b} F = {f:.1f} s, t = {t:.2f} s (from the {a['costs_basis'][b]})" for b, (f, t) in a["costs"].items())
             + f". Overheads S: 1 GPU {_f(a['runs']['1']['overhead_s'])} s, N GPUs {_f(a['runs']['n']['overhead_s'])} s.")
    c = a["check"]
    L += ["", f"Model vs measurement, {res['prompts_count']} prompts on {res['n']} GPUs with the units the run chose: "
          f"predicted {_f(c['predicted_n_wall_s'])} s, measured {_f(c['measured_n_wall_s'])} s, error "
          f"{_f(c['error'] and 100 * c['error'])}%. The model's own best choices for this study: "
          + "; ".join(f"{p}: {_f(v['makespan_s'])} s + S, chunks {v['chunks']}" for p, v in c["model_best"].items()),
          "", "| prompts | GPUs | 1 GPU s | policy | chunks per backend | wall s | speedup | fixed share |",
          "|---|---|---|---|---|---|---|---|"]
    for pr in a["projections"]:
        for policy in (k for k in PROJECTED_POLICIES if k in pr):
            p = pr[policy]
            L.append(f"| {pr['n_prompts']} | {pr['n']} | {pr['one_gpu_s']:.0f} | {p['policy']} | "
                     f"{', '.join(f'{b} {k}' for b, k in p['chunks'].items())} | {p['wall_s']:.0f} | "
                     f"{p['speedup']:.2f}x | {100 * p['fixed_share']:.1f}% |")
    L += ["", "Wall = S (the N-GPU run's overhead) + the busiest rank; speedup against one GPU's S + every unit; "
          "fixed share = the units' F over (GPUs x makespan). `auto` is this model's best per-backend chunk count "
          "(exhaustive, ties to fewer chunks); `evalkit (...)` is what evalkit/generate/schedule.py's `--schedule "
          "auto` chooses when given the same measured costs.", ""]
    return L


def _scoring_md(res: dict) -> list[str]:
    sc = res.get("scoring") or {}
    L = ["## Scoring across ranks", ""]
    if sc.get("skipped"):
        return L + [f"Skipped: {sc['skipped']}.", ""]
    info = sc.get("input") or {}
    L += [f"Input: {info.get('pairs')} pairs ({info.get('images')} PNGs of {info.get('size_px')} px, mean "
          f"{_f((info.get('png_bytes_mean') or 0) / 1e6, 2)} MB), made by the script: {info.get('note')}. "
          f"Metrics: {sc.get('metrics')}. Each command's wall time, process start included.", "",
          "| ranks | wall s | rc | pairs/s |", "|---|---|---|---|"]
    pairs = info.get("pairs") or 0
    rates = []
    for s in sc.get("steps", []):
        ok = s.get("rc") == 0 and not s.get("cut") and s.get("wall_s")
        rate = pairs / s["wall_s"] if ok else None
        rates.append(rate)
        L.append(f"| {s['name'].split('-')[-1]} | {_f(s.get('wall_s'))} | "
                 f"{s.get('not_started') or ('cut' if s.get('cut') else s.get('rc'))} | {_f(rate)} |")
    if len(rates) == 2 and all(rates):
        L.append(f"\nN ranks / 1 rank: **{rates[1] / rates[0]:.2f}x**. The two scorings agree to "
                 f"{sc['agreement']['max_abs_diff']:.3g} over {sc['agreement']['values_compared']} values.")
    for s in sc.get("steps", []):
        if s.get("rc") not in (0, None) or s.get("cut"):
            L += ["", f"`{s['name']}` ended with rc {s.get('rc')}; its log ends:", "```",
                  *s.get("log_tail", "").splitlines()[-8:], "```"]
    return L + [""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", help="scale.json written by bench_scale.py")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results")), help="folder for the Markdown")
    a = ap.parse_args(argv)
    res = json.loads(Path(a.json).read_text())
    if res.get("schema") != "evalkit.bench-scale/1":
        raise SystemExit(f"{a.json}: not a bench_scale.py result (schema {res.get('schema')!r})")
    slug, _ = _device(res)
    path = Path(a.out) / f"scale-{slug}x{res['n']}-{res['started_utc'][:10]}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(res, analyse(res)))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

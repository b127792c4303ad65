"""Which rank makes which images: work units (backend, contiguous chunk of its missing prompts), as pure functions.

Rank 0 computes the schedule once and broadcasts it; every rank runs the units given to it. The reference is a
backend like any other: nothing waits for it (scoring waits for the merge, not for bf16).

Cost model per backend b: a unit of n images costs F_b + n * t_b seconds, where F_b is what every unit pays again
(process start, pipeline load, warm-up, compilation) and t_b the seconds per image. Splitting a backend into k_b
chunks spreads its images over k_b ranks but pays F_b k_b times. Policies:

    backends   whole backends to ranks (LPT: longest first, to the least loaded rank)
    prompts    every backend split into min(N, batches) chunks
    auto       per backend the k_b that minimises the makespan: every vector of k_b when there are at most
               EXHAUSTIVE_MAX of them; otherwise, for each target makespan M among the chunk costs
               F_b + chunk(n_b, k) t_b, k_b(M) is the fewest chunks whose cost fits M; the chunks are LPT-assigned
               (never two chunks of one backend on one rank) and the schedule with the smallest makespan wins.
               Schedules within AUTO_TIE of the best count as ties, and the one with the fewest chunks wins
               (fixed costs stay small when it costs next to nothing in wall time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from evalkit.errors import EvalkitError
from evalkit.record_readings import startup_median_s

POLICIES = ("auto", "prompts", "backends")
# Makespans within this fraction of the best are ties in `auto`: the one with fewer chunks is taken.
AUTO_TIE = 0.01
# `auto` tries every vector of chunk counts when there are at most this many (each costs one LPT assignment).
EXHAUSTIVE_MAX = 4096


@dataclass(frozen=True)
class Cost:
    """One backend's cost model: `fixed_s` paid per unit, `per_image_s` per image; `basis` says where they come from."""

    fixed_s: float
    per_image_s: float
    basis: str = ""


@dataclass(frozen=True)
class Unit:
    backend: str
    prompt_ids: tuple[str, ...]
    rank: int

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "prompt_ids": list(self.prompt_ids), "rank": self.rank}


@dataclass
class Schedule:
    policy: str  # the policy applied: backends or prompts (auto resolves to the split it chose)
    requested: str  # what the user asked for (auto|prompts|backends)
    world_size: int
    units: list[Unit] = field(default_factory=list)
    chunks: dict[str, int] = field(default_factory=dict)  # backend -> k_b
    makespan_s: float = 0.0
    fixed_share: float = 0.0  # sum of k_b F_b over all the GPU time the units take
    reason: str = ""

    def units_of(self, rank: int) -> list[Unit]:
        return [u for u in self.units if u.rank == rank]

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "requested": self.requested, "world_size": self.world_size,
                "chunks": dict(self.chunks), "estimated_makespan_s": self.makespan_s,
                "fixed_cost_share": self.fixed_share, "reason": self.reason,
                "units": [u.to_json() for u in self.units]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Schedule:
        return cls(policy=data["policy"], requested=data["requested"], world_size=data["world_size"],
                   units=[Unit(u["backend"], tuple(u["prompt_ids"]), u["rank"]) for u in data["units"]],
                   chunks=dict(data["chunks"]), makespan_s=data["estimated_makespan_s"],
                   fixed_share=data["fixed_cost_share"], reason=data["reason"])


def split_prompts(prompt_ids: Sequence[str], k: int, batch_size: int = 1) -> list[tuple[str, ...]]:
    """`prompt_ids` in k contiguous chunks as even as batches allow (every chunk but the last holds whole batches)."""
    n = len(prompt_ids)
    bs = max(1, batch_size)
    batches = math.ceil(n / bs)
    if not 1 <= k <= max(1, batches):
        raise ValueError(f"cannot split {n} prompts ({batches} batches) into {k} chunks")
    out, start = [], 0
    for i in range(k):
        nb = batches // k + (1 if i < batches % k else 0)
        out.append(tuple(prompt_ids[start:start + nb * bs]))
        start += nb * bs
    return [c for c in out if c]


def _assign(chunks: list[tuple[str, tuple[str, ...], float]], n_ranks: int) -> tuple[list[Unit], list[float]]:
    """LPT: longest chunk first, to the least loaded rank that holds no chunk of the same backend."""
    loads = [0.0] * n_ranks
    held: list[set[str]] = [set() for _ in range(n_ranks)]
    units = []
    order = sorted(range(len(chunks)), key=lambda i: (-chunks[i][2], i))
    for i in order:
        backend, ids, cost = chunks[i]
        rank = min((r for r in range(n_ranks) if backend not in held[r]), key=lambda r: (loads[r], r))
        loads[rank] += cost
        held[rank].add(backend)
        units.append(Unit(backend, ids, rank))
    first = {b: i for i, (b, _, _) in reversed(list(enumerate(chunks)))}
    units.sort(key=lambda u: (u.rank, first[u.backend], u.prompt_ids))
    return units, loads


def _build(missing: Mapping[str, Sequence[str]], costs: Mapping[str, Cost], ks: Mapping[str, int], n_ranks: int,
           batch_size: int) -> tuple[list[Unit], float, float]:
    chunks = []
    for b, ids in missing.items():
        for part in split_prompts(list(ids), ks[b], batch_size):
            chunks.append((b, part, costs[b].fixed_s + len(part) * costs[b].per_image_s))
    units, loads = _assign(chunks, n_ranks)
    busy = sum(loads)
    fixed = sum(costs[b].fixed_s * len([u for u in units if u.backend == b]) for b in missing)
    return units, max(loads, default=0.0), (fixed / busy if busy > 0 else 0.0)


def make_schedule(missing: Mapping[str, Sequence[str]], costs: Mapping[str, Cost], n_ranks: int,
                  policy: str = "auto", batch_size: int = 1) -> Schedule:
    """The units for `missing` ({backend: its missing prompt ids, in manifest order}) on `n_ranks` ranks.
    Deterministic: the same inputs give the same schedule on every rank and every rerun."""
    if policy not in POLICIES:
        raise EvalkitError(f"--schedule {policy!r}: expected one of {', '.join(POLICIES)}")
    if n_ranks < 1:
        raise ValueError("n_ranks must be at least 1")
    missing = {b: list(ids) for b, ids in missing.items() if ids}
    bs = max(1, batch_size)
    kmax = {b: max(1, min(n_ranks, math.ceil(len(ids) / bs))) for b, ids in missing.items()}
    if not missing:
        return Schedule(policy=policy if policy != "auto" else "backends", requested=policy, world_size=n_ranks,
                        reason="nothing to generate")
    candidates: list[dict[str, int]]
    if policy == "backends":
        candidates = [{b: 1 for b in missing}]
    elif policy == "prompts":
        candidates = [dict(kmax)]
    else:
        def chunk_cost(b: str, k: int) -> float:
            return costs[b].fixed_s + len(split_prompts(missing[b], k, bs)[0]) * costs[b].per_image_s

        targets = sorted({chunk_cost(b, k) for b in missing for k in range(1, kmax[b] + 1)})
        candidates = []
        if math.prod(kmax.values()) <= EXHAUSTIVE_MAX:
            # Small studies (few backends or ranks): every chunk-count vector. The scan below can miss the best by
            # up to 8% there (e.g. 3 prompts x 4 backends on 3 GPUs: 7.2%), found by benchmarks/test_bench_scale.py.
            import itertools

            names = list(missing)
            candidates = [dict(zip(names, ks)) for ks in itertools.product(*(range(1, kmax[b] + 1) for b in names))]
        for m in targets if not candidates else ():
            ks = {b: next((k for k in range(1, kmax[b] + 1) if chunk_cost(b, k) <= m + 1e-9), kmax[b])
                  for b in missing}
            if ks not in candidates:
                candidates.append(ks)
    results = []
    for ks in candidates:
        units, makespan, share = _build(missing, costs, ks, n_ranks, bs)
        results.append((makespan, sum(ks.values()), ks, units, share))
    lowest = min(r[0] for r in results)
    tied = [r for r in results if r[0] <= lowest * (1 + AUTO_TIE) + 1e-9]
    best = min(tied, key=lambda r: (r[1], r[0]))
    makespan, n_chunks, ks, units, share = best
    applied = ("backends" if all(k == 1 for k in ks.values()) else
               "prompts" if ks == kmax else "mixed")
    why = {
        "backends": "whole backends to ranks (--schedule backends)",
        "prompts": "every backend split over all ranks (--schedule prompts)",
    }.get(policy) or (f"auto: {applied} split chose the smallest estimated makespan"
                      + (" (ties go to fewer chunks)" if len(tied) > 1 else ""))
    return Schedule(policy=applied if policy == "auto" else policy, requested=policy, world_size=n_ranks,
                    units=units, chunks=dict(ks), makespan_s=makespan, fixed_share=share, reason=why)


# Rough fixed costs per unit, by model kind, used when this run has not measured its own: process start + load +
# warm-up. Assumptions, stated in the schedule's description wherever they are used.
ROUGH_FIXED_S = {"tiny": 3.0, "full": 30.0}
ROUGH_COMPILE_S = {"tiny": 10.0, "full": 120.0}


def rough_cost(backend: str, model_kind: str, per_image_s: float, basis: str) -> Cost:
    kind = "tiny" if model_kind == "tiny" else "full"
    fixed = ROUGH_FIXED_S[kind] + (ROUGH_COMPILE_S[kind] if "+compile" in backend else 0.0)
    return Cost(fixed, per_image_s, f"assumed: fixed {fixed:.0f} s a unit ({kind} model"
                                    f"{', +compile' if '+compile' in backend else ''}), {per_image_s:.3g} s an image "
                                    f"({basis})")


def measured_cost(record: Mapping[str, Any]) -> Cost | None:
    """A backend's costs from its own merged record: start-up + load + warm-up as fixed (the start-up is the median
    over its units, records before it was recorded have none), median latency per image."""
    lat = (record.get("latency") or {}).get("median_s")
    load = record.get("load_time_s")
    if not lat or load is None:
        return None
    warm = sum(record.get("warmup_times_s") or [])
    start = startup_median_s(record)
    if start is None:
        return Cost(float(load) + float(warm), float(lat), "measured in this run (load + warm-up, median latency)")
    return Cost(start + float(load) + float(warm), float(lat),
                "measured in this run (start-up + load + warm-up, median latency)")


def describe(schedule: Schedule, costs: Mapping[str, Cost]) -> str:
    """Two lines for the console and the log: the choice, its reason, the estimate and the cost basis."""
    if not schedule.units:
        return f"schedule: {schedule.reason}"
    split = ", ".join(f"{b}x{k}" for b, k in schedule.chunks.items())
    bases = sorted({c.basis for b, c in costs.items() if b in schedule.chunks})
    return (f"schedule {schedule.policy} on {schedule.world_size} rank(s): {schedule.reason}; chunks {split}; "
            f"estimated makespan {schedule.makespan_s:.0f} s, fixed-cost share {schedule.fixed_share:.0%}\n"
            f"  costs: {'; '.join(bases)}")

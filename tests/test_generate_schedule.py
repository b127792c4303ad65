"""The work-unit schedule as pure functions (evalkit/generate/schedule.py): deterministic, every missing prompt in
exactly one unit, chunk counts within bounds, and the choices of issue #14's examples."""

from __future__ import annotations

import pytest

from evalkit.errors import EvalkitError
from evalkit.generate.schedule import Cost, Schedule, make_schedule, split_prompts


def _ids(n: int) -> list[str]:
    return [f"p{i:04d}" for i in range(n)]


def _check_cover(missing: dict[str, list[str]], sched, n_ranks: int) -> None:
    for b, ids in missing.items():
        got = [p for u in sched.units if u.backend == b for p in u.prompt_ids]
        assert sorted(got) == sorted(ids), b  # every missing prompt in exactly one unit
        ranks = [u.rank for u in sched.units if u.backend == b]
        assert len(ranks) == len(set(ranks)), "two chunks of one backend on one rank"
        assert 1 <= sched.chunks[b] <= min(n_ranks, len(ids))
        for u in sched.units:
            if u.backend == b:  # contiguous runs of the manifest order
                i = ids.index(u.prompt_ids[0])
                assert list(u.prompt_ids) == ids[i:i + len(u.prompt_ids)]


def test_few_prompts_give_whole_backends_to_ranks() -> None:
    """#14: 16 prompts x 4 backends on 4 GPUs with a fixed cost of about 3 images: splitting would make every rank
    pay every backend's fixed cost; whole backends win."""
    t = 10.0
    missing = {b: _ids(16) for b in ("bf16", "torchao-int8wo", "bnb-nf4", "fp8-layerwise")}
    costs = {b: Cost(3 * t, t) for b in missing}
    s = make_schedule(missing, costs, 4)
    _check_cover(missing, s, 4)
    assert s.policy == "backends" and set(s.chunks.values()) == {1}
    assert sorted(u.rank for u in s.units) == [0, 1, 2, 3]
    assert s.makespan_s == pytest.approx(19 * t)
    forced = make_schedule(missing, costs, 4, policy="prompts")
    _check_cover(missing, forced, 4)
    assert forced.makespan_s == pytest.approx(4 * (3 * t + 4 * t)) and forced.makespan_s > s.makespan_s


def test_many_prompts_are_split_with_a_small_fixed_share() -> None:
    t = {"bf16": 10.0, "torchao-int8wo": 14.0, "bnb-nf4": 18.0, "fp8-layerwise": 11.0}
    missing = {b: _ids(1000) for b in t}
    costs = {b: Cost(3 * v, v) for b, v in t.items()}
    s = make_schedule(missing, costs, 4)
    _check_cover(missing, s, 4)
    assert any(k > 1 for k in s.chunks.values()), s.chunks
    whole = make_schedule(missing, costs, 4, policy="backends")
    assert s.makespan_s < 0.85 * whole.makespan_s
    assert s.fixed_share < 0.10
    lower_bound = sum(1000 * v for v in t.values()) / 4
    assert s.makespan_s < 1.05 * lower_bound


def test_more_ranks_than_backends_splits_even_equal_backends() -> None:
    missing = {b: _ids(1000) for b in ("bf16", "q")}
    s = make_schedule(missing, {b: Cost(30, 10) for b in missing}, 8)
    _check_cover(missing, s, 8)
    assert s.chunks == {"bf16": 4, "q": 4} and len({u.rank for u in s.units}) == 8


def test_deterministic_and_round_trips_through_json() -> None:
    missing = {"bf16": _ids(37), "a": _ids(5), "b": _ids(12)[3:]}
    costs = {"bf16": Cost(5, 1.0), "a": Cost(50, 2.0), "b": Cost(1, 0.5)}
    one = make_schedule(missing, costs, 3)
    assert make_schedule(missing, costs, 3).to_json() == one.to_json()
    assert Schedule.from_json(one.to_json()).to_json() == one.to_json()
    _check_cover(missing, one, 3)


def test_chunks_are_aligned_to_batches_and_bounded() -> None:
    assert [len(c) for c in split_prompts(_ids(10), 3, batch_size=4)] == [4, 4, 2]
    assert [len(c) for c in split_prompts(_ids(7), 3)] == [3, 2, 2]
    with pytest.raises(ValueError):
        split_prompts(_ids(5), 3, batch_size=4)  # two batches cannot make three chunks
    s = make_schedule({"bf16": _ids(5)}, {"bf16": Cost(0, 1)}, 4, policy="prompts", batch_size=2)
    assert s.chunks == {"bf16": 3} and [len(u.prompt_ids) for u in s.units] == [2, 2, 1]


def test_one_rank_and_nothing_to_do() -> None:
    s = make_schedule({"bf16": _ids(4), "q": _ids(2)}, {"bf16": Cost(3, 1), "q": Cost(3, 1)}, 1)
    assert [u.rank for u in s.units] == [0, 0] and s.chunks == {"bf16": 1, "q": 1}
    assert make_schedule({"bf16": []}, {}, 4).units == []
    with pytest.raises(EvalkitError, match="--schedule"):
        make_schedule({}, {}, 2, policy="round-robin")


def test_auto_searches_every_chunk_count_on_small_studies(monkeypatch) -> None:
    """The makespan scan alone misses the best split by 2-8% on some small studies (benchmarks/test_bench_scale.py
    found 7.2% for 3 prompts x 4 backends on 3 GPUs); with few combinations, auto tries them all."""
    import evalkit.generate.schedule as sched

    costs = {b: sched.Cost(30.0, t) for b, t in (("bf16", 9.0), ("int8", 12.0), ("nf4", 9.5), ("fp8", 10.5))}
    for n, ranks in ((3, 3), (8, 3), (16, 3), (5, 4)):
        missing = {b: [f"p{i}" for i in range(n)] for b in costs}
        full = sched.make_schedule(missing, costs, ranks)
        monkeypatch.setattr(sched, "EXHAUSTIVE_MAX", 0)
        scan = sched.make_schedule(missing, costs, ranks)
        monkeypatch.undo()
        assert full.makespan_s <= scan.makespan_s + 1e-9
    missing = {b: [f"p{i}" for i in range(3)] for b in costs}
    assert sched.make_schedule(missing, costs, 3).makespan_s < 0.99 * scan_only(missing, costs, 3, monkeypatch)


def scan_only(missing, costs, ranks, monkeypatch) -> float:
    import evalkit.generate.schedule as sched

    monkeypatch.setattr(sched, "EXHAUSTIVE_MAX", 0)
    try:
        return sched.make_schedule(missing, costs, ranks).makespan_s
    finally:
        monkeypatch.undo()

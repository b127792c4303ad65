"""The allocator replay of benchmarks/allocator_rounding.py against the rules of c10/cuda/CUDACachingAllocator.cpp,
case by case (run with `python -m pytest benchmarks/test_allocator_rounding.py`)."""

from allocator_rounding import MIB, allocated_after


def test_a_large_request_keeps_its_whole_2_mib_rounded_block_when_less_than_1_mib_is_left() -> None:
    w = 2432 * 2432 * 2  # SD3.5-Large's square bf16 weight: 11.28 MiB -> a 12 MiB segment, 0.72 MiB left: not split
    assert allocated_after([w]) == (12 * MIB, 12 * MIB)
    assert allocated_after([3072 * 3072 * 2]) == (18 * MIB, 18 * MIB)  # FLUX.1's: exactly 18 MiB, nothing left


def test_a_large_request_is_split_when_more_than_1_mib_is_left_and_the_rest_is_reused() -> None:
    w = 2560 * 2560 * 2  # 12.5 MiB -> 14 MiB segment, 1.5 MiB left: split, the 12.5 MiB counted
    assert allocated_after([w]) == (w, 14 * MIB)
    # a 1.25 MiB request takes that 1.5 MiB rest, whole (0.25 MiB left is not worth a split): no new segment
    assert allocated_after([w, int(1.25 * MIB)]) == (w + int(1.5 * MIB), 14 * MIB)


def test_medium_requests_share_a_20_mib_segment_and_small_ones_a_2_mib_one() -> None:
    assert allocated_after([5 * MIB] * 4) == (20 * MIB, 20 * MIB)  # the fourth takes the last 5 MiB whole
    assert allocated_after([5 * MIB] * 3) == (15 * MIB, 20 * MIB)
    assert allocated_after([100, 1000]) == (512 + 1024, 2 * MIB)  # rounded to 512 B

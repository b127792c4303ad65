"""How much of a bf16 pipeline's after-load `torch.cuda.memory_allocated()` is the CUDA caching allocator's
rounding, not tensors: predicted on a CPU from each variant's published architecture, compared with the measured
GPU records (issue #25 item 6: "bf16 after-load memory ... must agree with the configs' parameter bytes within 1%").

    python benchmarks/allocator_rounding.py [--orders 20] [--out benchmarks/results/allocator-rounding-DATE.md]

`memory_allocated()` is the sum of the allocator's *blocks*, not of the tensors' bytes. The allocator
(c10/cuda/CUDACachingAllocator.cpp, unchanged in this respect from torch 2.0 to 2.11) rounds a request up to 512 B,
serves it from the smallest cached free block that fits or from a new segment (a request of at most 1 MiB gets a
2 MiB segment, up to 10 MiB a 20 MiB one, larger ones their size rounded up to 2 MiB), and splits the block only
when what is left is over 1 MiB in the large pool (at least 512 B in the small one). So a 2432 x 2432 bf16 weight
(11.28 MiB, SD3.5-Large's width) takes a 12 MiB block whole, counted as 12 MiB allocated: 0.72 MiB that no tensor
holds. This script replays that rule over every tensor `pipe.to("cuda")` creates, in the order `Module._apply`
visits them (children first, then parameters, then buffers, each tensor once), with the pipeline's components in
every order diffusers may take them (`DiffusionPipeline.to` walks a set of names), and prints the predicted
after-load allocated against the tensors' own bytes and against each committed bf16 record's measured figure.

Needs no GPU: the modules are built on the meta device from the same configs the random builds use.
"""

from __future__ import annotations

import argparse
import bisect
import json
import random
import sys
from pathlib import Path
from typing import Iterable, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MIB = 1 << 20
GIB = 1 << 30
K_MIN_BLOCK = 512
K_SMALL_SIZE = MIB  # the largest "small" request
K_SMALL_BUFFER = 2 * MIB
K_LARGE_BUFFER = 20 * MIB
K_MIN_LARGE_ALLOC = 10 * MIB
K_ROUND_LARGE = 2 * MIB

# The committed bf16 records of the random full-size builds (variant -> generation record), with their device
RECORDS = {
    "flux1-dev": "benchmarks/results/noise-floor-h200-2026-11-29/floor/generation/bf16.json",
    "sd3.5-large": "benchmarks/results/sd35-large-random-h200-2026-12-05/s1/generation/bf16.json",
    "z-image-turbo": "benchmarks/results/z-image-turbo-random-h100-2026-12-06/z1/generation/bf16.json",
    "qwen-image": "benchmarks/results/qwen-image-random-h100-2026-12-06/q2/generation/shards/bf16/w1-r0.json",
    "flux2-klein-4b": "benchmarks/results/flux2-klein-4b-random-h100-2026-12-06/k1/generation/bf16.json",
}


def _round(size: int) -> int:
    return K_MIN_BLOCK if size < K_MIN_BLOCK else K_MIN_BLOCK * ((size + K_MIN_BLOCK - 1) // K_MIN_BLOCK)


def _segment(size: int) -> int:
    if size <= K_SMALL_SIZE:
        return K_SMALL_BUFFER
    if size < K_MIN_LARGE_ALLOC:
        return K_LARGE_BUFFER
    return K_ROUND_LARGE * ((size + K_ROUND_LARGE - 1) // K_ROUND_LARGE)


def allocated_after(requests: Iterable[int]) -> tuple[int, int]:
    """(allocated, reserved) bytes after these requests, none freed, on a fresh allocator (default settings: no
    max_split_size, no expandable segments, no power-of-two rounding)."""
    pools: dict[bool, list[int]] = {True: [], False: []}  # small? -> sorted free block sizes
    allocated = reserved = 0
    for n in requests:
        if n <= 0:
            continue
        size = _round(n)
        small = size <= K_SMALL_SIZE
        free = pools[small]
        i = bisect.bisect_left(free, size)
        if i < len(free):
            block = free.pop(i)
        else:
            block = _segment(size)
            reserved += block
        remaining = block - size
        if remaining >= K_MIN_BLOCK if small else remaining > K_SMALL_SIZE:
            bisect.insort(free, remaining)
            allocated += size
        else:
            allocated += block
    return allocated, reserved


def tensor_sizes(module: object, seen: set[int]) -> Iterator[int]:
    """Bytes of each tensor `module.to(device)` allocates, in Module._apply's order; a tied tensor once."""
    for child in module.children():  # type: ignore[attr-defined]
        yield from tensor_sizes(child, seen)
    for store in (module._parameters, module._buffers):  # type: ignore[attr-defined]
        for t in store.values():
            if t is None or id(t) in seen:
                continue
            seen.add(id(t))
            # from_pretrained(dtype=bf16) loads every floating tensor of the file in bf16, whatever the module built
            # it as (SD3's pos_embed is float32 at init, bf16 on the GPU: the records' footprint dtypes)
            yield t.numel() * (2 if t.is_floating_point() else t.element_size())


def variant_modules(name: str) -> dict[str, object]:
    import torch

    from evalkit.families.registry import find_variant

    fam, variant = find_variant(name)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # as the random build (evalkit.families.registry.ensure_random)
    try:
        with torch.device("meta"):
            return fam.build_modules(variant.configs)
    finally:
        torch.set_default_dtype(prev)


def predict(name: str, orders: int) -> dict[str, float]:
    """Tensor bytes and the predicted allocated bytes (min and max over component orders), in GiB."""
    modules = {k: m for k, m in variant_modules(name).items() if hasattr(m, "_apply")}
    per_component = {k: list(tensor_sizes(m, set())) for k, m in modules.items()}
    names = sorted(per_component)
    rng = random.Random(0)
    results = []
    for i in range(orders):
        order = names if i == 0 else rng.sample(names, len(names))
        # the worker's CUDA context probe (torch.zeros(1)) comes first (evalkit/generate/worker/run.py)
        results.append(allocated_after([4] + [s for c in order for s in per_component[c]])[0])
    tensors = sum(sum(v) for v in per_component.values())
    return {"tensors": tensors / GIB, "allocated_min": min(results) / GIB, "allocated_max": max(results) / GIB}


def measured(path: str) -> tuple[float | None, float | None, str]:
    p = REPO / path
    if not p.is_file():
        return None, None, "no record"
    rec = json.loads(p.read_text(encoding="utf-8"))
    return ((rec.get("memory") or {}).get("after_load_allocated_gib"), (rec.get("footprint") or {}).get("total_gib"),
            path.split("/")[2])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", type=int, default=20, help="component orders tried per variant")
    ap.add_argument("--variants", default=",".join(RECORDS))
    a = ap.parse_args(argv)
    print("| variant | tensors GiB (meta) | record's footprint GiB | predicted allocated GiB | measured allocated GiB "
          "| measured - predicted MiB | rounding share of measured - tensors | record |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name in a.variants.split(","):
        p = predict(name, a.orders)
        got, footprint, where = measured(RECORDS.get(name, ""))
        pred = f"{p['allocated_min']:.3f}" + (f"-{p['allocated_max']:.3f}"
                                             if p["allocated_max"] - p["allocated_min"] > 5e-4 else "")
        if got is None:
            print(f"| {name} | {p['tensors']:.3f} | - | {pred} | - | - | - | {where} |")
            continue
        mid = (p["allocated_min"] + p["allocated_max"]) / 2
        share = (mid - p["tensors"]) / (got - p["tensors"]) if got > p["tensors"] else float("nan")
        print(f"| {name} | {p['tensors']:.3f} | {footprint:.3f} | {pred} | {got:.3f} | {(got - mid) * 1024:+.1f} "
              f"| {share:.0%} | {where} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

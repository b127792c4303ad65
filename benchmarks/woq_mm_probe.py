"""Is `aten._weight_int8pack_mm` what makes compiled torchao-int8wo slow on CUDA at Flux's shapes?

The 2026-11-29 compile probe (results/compile-probe-h200-2026-11-29.md) saw inductor's weight-only-int8 pattern rewrite
the matmuls of a compiled torchao-int8wo block into `aten._weight_int8pack_mm` (17 matches), and that block run 2.29 s
a call, where the uncompiled backend runs about 4 ms a block. This times, side by side in one process, the three ways
to multiply Flux's activations (4,608 rows at 1024²) by an int8 weight with per-channel bf16 scales:

- `bf16`: F.linear with a bf16 weight (the reference),
- `dequant`: (w_int8 -> bf16) * scale, then F.linear (what the uncompiled Int8Tensor path amounts to),
- `int8pack`: torch._weight_int8pack_mm(x, w_int8, scale) (what inductor's pattern lowers to),
- `compiled`: torchao's Int8Tensor weight-only matmul, `mm(x, w_int8.t().to(bf16)) * scale`, through
  torch.compile with evalkit's guard declining that rewrite on CUDA (the default, `[compile] woq_int8pack = false`),
- `compiled+int8pack`: the same with torch's own choice (`woq_int8pack = true`), and how many matmuls it rewrote.

    python3 benchmarks/woq_mm_probe.py --out woq.json            # on the GPU
    python3 benchmarks/woq_mm_probe.py --device cpu --rows 64    # a dry run here

Output: per shape and way, the median milliseconds over `--iters` calls after `--warmup`, and the largest absolute
difference from `bf16` (the three compute the same product up to rounding).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

# (in_features, out_features) of FLUX.1-dev's transformer Linears (hidden 3072, MLP 4x, fused QKV+MLP in the
# single blocks' proj_mlp 3072 -> 12288 and proj_out 15360 -> 3072).
FLUX_LINEARS = ((3072, 3072), (3072, 12288), (12288, 3072), (15360, 3072))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--rows", type=int, default=4608, help="activation rows: 4,096 image + 512 text tokens at 1024²")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from evalkit.generate.worker.compile_options import woq_int8pack_guard

    dev = a.device

    def torchao_woq(x, w, s):  # torchao 0.17/0.18 Int8Tensor's weight-only linear, per-row scales
        return torch.mm(x.reshape(-1, x.shape[-1]), w.t().to(x.dtype)) * s

    def compiled(reject):
        from torch._dynamo.utils import counters

        torch._dynamo.reset()
        counters.clear()
        woq_int8pack_guard(reject)
        return torch.compile(torchao_woq)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    g = torch.Generator(dev).manual_seed(0)
    results = []
    for k, n in FLUX_LINEARS:
        x = torch.randn(a.rows, k, device=dev, dtype=torch.bfloat16, generator=g)
        w_int8 = torch.randint(-127, 128, (n, k), device=dev, dtype=torch.int8, generator=g)
        scale = (torch.rand(n, device=dev, generator=g) * 0.01 + 0.001).to(torch.bfloat16)
        w_bf16 = w_int8.to(torch.bfloat16) * scale[:, None]
        ways = {
            "bf16": lambda: F.linear(x, w_bf16),
            "dequant": lambda: F.linear(x, w_int8.to(torch.bfloat16) * scale[:, None]),
            "int8pack": lambda: torch._weight_int8pack_mm(x, w_int8, scale),
            "compiled": (lambda: compiled((dev,))),
            "compiled+int8pack": (lambda: compiled(())),
        }
        ref = ways["bf16"]()
        for name, fn in ways.items():
            try:
                if name.startswith("compiled"):
                    from torch._dynamo.utils import counters

                    c = fn()
                    fn = lambda c=c: c(x, w_int8, scale)  # noqa: E731
                for _ in range(a.warmup):
                    out = fn()
                times = []
                for _ in range(a.iters):
                    sync()
                    t = time.perf_counter()
                    out = fn()
                    sync()
                    times.append((time.perf_counter() - t) * 1e3)
                row = {"in": k, "out": n, "rows": a.rows, "way": name, "ms_median": statistics.median(times),
                       "max_abs_diff_vs_bf16": float((out.float() - ref.float()).abs().max())}
                if name.startswith("compiled"):
                    row["woq_matcher_count"] = int(counters["inductor"].get("woq_matcher_count", 0))
            except Exception as e:  # a way this torch/device lacks is a result too
                row = {"in": k, "out": n, "rows": a.rows, "way": name, "error": f"{type(e).__name__}: {e}"[:300]}
            results.append(row)
            print(json.dumps(row), flush=True)
    info = {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "results": results}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()

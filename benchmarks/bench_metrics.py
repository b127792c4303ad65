"""Paired-metric throughput at 1024x1024: evalkit's batched LPIPS(alex) + SSIM + PSNR vs a naive per-image loop.

    python benchmarks/bench_metrics.py [--device cpu|cuda] [--pairs 8] [--size 1024] [--batch 4] [--decode]

Both sides get the same in-memory uint8 image pairs (real photographs upscaled, JPEG/blur/noise distorted) and
produce the same three numbers per pair:
  * evalkit: one upload of each uint8 batch to the device, LPIPSNet (both images of a pair in one backbone pass),
    ssim_per_image (one batched 11x11 conv over all moment maps), integer PSNR on the device;
  * naive:   per pair, float conversion on the host, torchmetrics.functional SSIM (gaussian 11 / 1.5) and PSNR,
    and LPIPS with evalkit's network at batch size 1 (torchmetrics' LPIPS needs torchvision, absent on CPU here).
It prints the pairs/s of each, the ratio, and the largest difference between the two sides' values.
Both sides are timed alternately (median of rounds), so machine drift falls on both.
`--decode` adds the end-to-end figure a user sees, from PNG files on disk: the naive side decodes each pair in its own
process; evalkit runs `compare_folders` (`evalkit compare-images`), whose worker pool decodes two chunks ahead while a
thread uploads the next chunk and the current one is scored.
Results go to stdout as JSON (and to $OUT/bench_metrics.json when $OUT is set).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def make_pairs(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """n (reference, distorted) uint8 pairs at size x size from scikit-image's photographs."""
    import io

    from PIL import Image, ImageFilter
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    refs, dists = [], []
    rng = np.random.default_rng(0)
    for i in range(n):
        a = np.asarray(Image.fromarray(photos[i % len(photos)]).resize((size, size), Image.BICUBIC))
        kind = i % 3
        if kind == 0:
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="JPEG", quality=40)
            d = np.asarray(Image.open(buf).convert("RGB"))
        elif kind == 1:
            d = np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(2)))
        else:
            d = np.clip(a + rng.normal(0, 12, a.shape), 0, 255).astype(np.uint8)
        refs.append(a)
        dists.append(d)
    return np.stack(refs), np.stack(dists)


class Evalkit:
    def __init__(self, device: str, batch: int, overlap: bool = True) -> None:
        from evalkit.metrics.lpips import LPIPSMetric
        from evalkit.metrics.psnr import PSNRMetric
        from evalkit.metrics.ssim import SSIMMetric

        self.device, self.batch, self.overlap = device, batch, overlap
        self.lpips = LPIPSMetric("alex", device=device, batch_size=batch)
        self.ssim = SSIMMetric(device=device, batch_size=batch)
        self.psnr = PSNRMetric()

    def __call__(self, refs: np.ndarray, dists: np.ndarray) -> np.ndarray:
        # As compare-images does: batch k+1 is copied to page-locked memory and uploaded (on a side stream) by a
        # thread while batch k is scored.
        from evalkit.metrics.tensors import Uploads

        out = []
        starts = list(range(0, len(refs), self.batch))
        with Uploads(self.device) as up:
            def prepare(s: int) -> tuple:
                return up.upload(refs[s:s + self.batch]), up.upload(dists[s:s + self.batch])

            fut = up.submit(prepare, starts[0])
            for k in range(len(starts)):
                ha, hb = fut.result()
                if k + 1 < len(starts):
                    fut = up.submit(prepare, starts[k + 1])
                    if not self.overlap:  # for comparison: upload, then score, one after the other
                        fut.result()
                a, b = up.ready(ha), up.ready(hb)
                out.append(np.stack([self.lpips.compute(a, b), self.ssim.compute(a, b), self.psnr.compute(a, b)], 1))
        return np.concatenate(out)


class Naive:
    def __init__(self, device: str) -> None:
        from evalkit.metrics.lpips import load_lpips

        self.device = device
        self.lpips = load_lpips("alex", device)

    @torch.inference_mode()
    def __call__(self, refs: np.ndarray, dists: np.ndarray) -> np.ndarray:
        # Same arithmetic as evalkit: fp32 convolutions. (torch's default lets cuDNN use TF32, ~3.5x faster for
        # AlexNet at 1024² on an H100 and ~1e-4 off; the 2026-11-21 GPU figures had the naive side in TF32.)
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            return self._loop(refs, dists)

    def _loop(self, refs: np.ndarray, dists: np.ndarray) -> np.ndarray:
        from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

        rows = []
        for a, b in zip(refs, dists):
            x = (torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 255).to(self.device)
            y = (torch.from_numpy(b.copy()).permute(2, 0, 1)[None].float() / 255).to(self.device)
            lp = float(self.lpips(x, y))
            ss = float(structural_similarity_index_measure(y, x, gaussian_kernel=True, sigma=1.5, kernel_size=11,
                                                           data_range=1.0))
            ps = float(peak_signal_noise_ratio(y, x, data_range=1.0))
            rows.append((lp, ss, ps))
        return np.array(rows)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, refs, dists, device: str, repeat: int) -> tuple[float, np.ndarray]:
    """Best-of-`repeat` seconds (after one warm-up call) and the values."""
    vals = fn(refs, dists)
    _sync(device)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        vals = fn(refs, dists)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best, vals


def timed_ab(fa, fb, refs_a, dists_a, refs_b, dists_b, device: str, rounds: int) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Median seconds of fa and fb, timed alternately (a, b, a, b, ...) after one warm-up each, so a drift of the
    machine (clocks, other load) falls on both sides alike. Returns (t_a, t_b, values_a, values_b)."""
    va = fa(refs_a, dists_a)
    vb = fb(refs_b, dists_b)
    _sync(device)
    ta, tb = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        va = fa(refs_a, dists_a)
        _sync(device)
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        vb = fb(refs_b, dists_b)
        _sync(device)
        tb.append(time.perf_counter() - t)
    return float(np.median(ta)), float(np.median(tb)), va, vb


def end_to_end(refs: np.ndarray, dists: np.ndarray, ours: Evalkit, naive: Naive, device: str,
               workers: "int | None | list[int | None]", naive_pairs: int, copies: int = 1) -> dict:
    """From PNG files on disk to numbers. Naive: per pair, decode both files in this process, then the per-image
    loop. evalkit: `compare_folders` (what `evalkit compare-images A B --metrics lpips_alex,ssim,psnr` runs), timed
    whole, worker-pool start and weight loading included. Each pair is written `copies` times under different names,
    so the run is long enough for that start to matter little (the files are decoded every time: no cache).
    `workers` may be a list of decode-worker counts: each is run, the fastest is reported, all are recorded."""
    import shutil

    from PIL import Image

    from evalkit.score.images import Decoder, decode_file
    from evalkit.score.stage import compare_folders

    with tempfile.TemporaryDirectory() as d:
        da, db = Path(d, "a"), Path(d, "b")
        da.mkdir()
        db.mkdir()
        pa, pb = [], []
        for i, (a, b) in enumerate(zip(refs, dists)):
            pa.append(da / f"{i:05d}.png")
            pb.append(db / f"{i:05d}.png")
            Image.fromarray(a).save(pa[-1])
            Image.fromarray(b).save(pb[-1])
        for c in range(1, copies):
            for i in range(len(refs)):
                for folder in (da, db):
                    shutil.copyfile(folder / f"{i:05d}.png", folder / f"{c * len(refs) + i:05d}.png")
        n = len(refs) * copies
        png_mb = sum(p.stat().st_size for p in pa + pb) / len(pa + pb) / 1e6
        t = time.perf_counter()
        for x, y in zip(pa[:naive_pairs], pb[:naive_pairs]):
            naive(decode_file(x).array[None], decode_file(y).array[None])
        _sync(device)
        naive_pps = naive_pairs / (time.perf_counter() - t)
        runs = {}
        for w in workers if isinstance(workers, (list, tuple)) else [workers]:
            t = time.perf_counter()
            res = compare_folders(da, db, "lpips_alex,ssim,psnr", device=device, workers=w, batch_size=ours.batch)
            _sync(device)
            dt = time.perf_counter() - t
            assert res["metrics"]["lpips_alex"]["n"] == n, res
            runs[str(res["timing"]["decode_workers"])] = {"pairs_per_s": n / dt, **res["timing"]}
        best_w, best = max(runs.items(), key=lambda kv: kv[1]["pairs_per_s"])
        ours_pps = best["pairs_per_s"]
        workers = int(best_w)
        files = sorted(da.iterdir()) + sorted(db.iterdir())
        with Decoder(workers) as dec:
            dec.decode(files[:2 * dec.workers])  # start the pool outside the timing
            t = time.perf_counter()
            dec.decode(files)
            decode_only = n / (time.perf_counter() - t)
            used = dec.workers
        return {"workers": used, "by_decode_workers": runs, "png_mb_mean": png_mb, "pairs": n, "distinct_pairs": len(refs),
                "naive_pairs": naive_pairs, "naive_pairs_per_s": naive_pps,
                "evalkit_pairs_per_s": ours_pps, "speedup": ours_pps / naive_pps,
                "evalkit_how": "compare_folders, one call, pool start and weight loading included",
                "decode_only_pairs_per_s": decode_only}


def stage_end_to_end(device: str, size: int, prompts: int, backends: int, batch: int,
                     workers: "int | None", rounds: int = 1) -> dict:
    """The score stage itself (`evalkit score RUN --metrics lpips_alex,ssim,psnr`) on a run directory of real
    photographs at size x size: bf16 plus `backends` distorted backends, `prompts` images each, no cache. Timed
    whole: hashing, decoding (each reference once per run), uploading, scoring, writing the records; `rounds` times
    after an untimed warm-up, median. (The stage streams chunks across backends; the per-backend loop this once
    compared against, side by side, is gone from evalkit: benchmarks/results/metrics-gpu-2026-11-21.md.)"""
    sys.path.insert(0, str(REPO / "tests"))
    from metrics_fixtures import jpeg, make_run, noise

    from evalkit.score import stage

    kinds = [lambda a, i: jpeg(a, 40 + 10 * (i % 5)), lambda a, i: noise(a, 4 + i % 7, seed=i),
             lambda a, i: jpeg(noise(a, 3, seed=i), 85)]
    walls: list[float] = []
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        run_dir = make_run(Path(d, "run"), {"bf16": None, **{f"q{k}": kinds[k % 3] for k in range(backends)}},
                           n_prompts=prompts, size=size)
        made = time.perf_counter() - t
        stage.score_run(run_dir, "lpips_alex,ssim,psnr", device=device, workers=workers, batch_size=batch,
                        use_cache=False, progress=False)  # warm-up (cuDNN, page cache), not timed
        for _ in range(rounds):
            t = time.perf_counter()
            res = stage.score_run(run_dir, "lpips_alex,ssim,psnr", device=device, workers=workers,
                                  batch_size=batch, use_cache=False, progress=False)
            _sync(device)
            walls.append(time.perf_counter() - t)
            n = sum(res[f"q{k}"]["lpips_alex"]["n"] for k in range(backends))
            assert n == prompts * backends, res
    wall = float(np.median(walls))
    return {"pairs": n, "backends_scored": backends, "size": size, "batch": batch, "workers": workers,
            "wall_s": wall, "pairs_per_s": n / wall, "run_dir_build_s": made, "walls_s": walls,
            "how": f"score_run on one fresh run directory, use_cache=False; {rounds} round(s) after a warm-up; median"}


def run(device: str, pairs: int, size: int, batch: int, repeat: int, decode: bool, workers: int | None) -> dict:
    refs, dists = make_pairs(pairs, size)
    ours, naive = Evalkit(device, batch), Naive(device)
    t_ours, t_naive, v_ours, v_naive = timed_ab(ours, naive, refs, dists, refs, dists, device, max(3, repeat))
    res = {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
                    "torch": torch.__version__, "python": platform.python_version(),
                    "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "device": device, "size": size, "pairs": pairs, "batch": batch, "rounds": max(3, repeat),
        "timing": "median of alternating rounds (evalkit, naive, evalkit, ...) after one warm-up each",
        "metrics": "lpips_alex + ssim + psnr",
        "evalkit_pairs_per_s": pairs / t_ours, "naive_pairs_per_s": pairs / t_naive, "speedup": t_naive / t_ours,
        "max_abs_diff_vs_naive": {"lpips_alex": float(np.abs(v_ours[:, 0] - v_naive[:, 0]).max()),
                                  "ssim": float(np.abs(v_ours[:, 1] - v_naive[:, 1]).max()),
                                  "psnr": float(np.abs(v_ours[:, 2] - v_naive[:, 2]).max())},
    }
    if decode:
        res["end_to_end"] = end_to_end(refs, dists, ours, naive, device, workers, min(pairs, 8))
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--decode", action="store_true", help="also time PNG decode + scoring end to end")
    p.add_argument("--workers", type=int, default=None)
    a = p.parse_args(argv)
    emit(run(a.device, a.pairs, a.size, a.batch, a.repeat, a.decode, a.workers), "bench_metrics.json")
    return 0


def emit(res: dict, filename: str) -> None:
    """Print the result as JSON, and write it to $OUT/filename when $OUT is set (the device tool's output folder)."""
    text = json.dumps(res, indent=2)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], filename).write_text(text)


if __name__ == "__main__":
    sys.exit(main())

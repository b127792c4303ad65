"""Where the paired-metric time goes at 1024² on the GPU, part by part (a diagnostic for gpu_metrics.py).

    python benchmarks/gpu_profile_metrics.py [--pairs 32] [--weights-dir .gl]

Times (best of 3, synchronized): the uint8 upload, LPIPS-alex with fp32 convolutions (NCHW and channels_last),
LPIPS with TF32 allowed (for information: evalkit keeps fp32), SSIM, MS-SSIM, PSNR; and PNG decoding: the parts of
decode_file in one process, then evalkit's Decoder with 4/8/16 workers. JSON to stdout and $OUT/gpu_profile.json.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402


DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a dry run of the script itself


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def best(fn, repeat: int = 3) -> float:
    fn()
    sync()
    t_best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        t_best = min(t_best, time.perf_counter() - t)
    return t_best


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--weights-dir")
    p.add_argument("--size", type=int, default=1024, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.weights_dir:
        os.environ["EVALKIT_WEIGHTS_DIR"] = str(Path(a.weights_dir).resolve())
    os.environ.setdefault("EVALKIT_CACHE", tempfile.mkdtemp())
    from bench_metrics import make_pairs

    from evalkit.score.images import Decoder, decode_file
    from evalkit.metrics.tensors import to_device_uint8
    from evalkit.metrics.lpips import LPIPSMetric
    from evalkit.metrics.psnr import PSNRMetric
    from evalkit.metrics.ssim import MSSSIMMetric, SSIMMetric

    n = a.pairs
    refs, dists = make_pairs(n, a.size)
    res: dict = {"device": torch.cuda.get_device_name(0) if DEV == "cuda" else DEV, "pairs": n, "cpu_count": os.cpu_count(),
                 "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    ms = lambda t: round(t / n * 1000, 3)  # noqa: E731 - ms per pair
    res["upload_ms_per_pair"] = ms(best(lambda: (to_device_uint8(refs, DEV), to_device_uint8(dists, DEV))))
    ra, da = to_device_uint8(refs, DEV), to_device_uint8(dists, DEV)
    for bs in (16, 32):
        m = LPIPSMetric("alex", device=DEV, batch_size=bs)
        res[f"lpips_fp32_nchw_bs{bs}_ms"] = ms(best(lambda: m.compute(ra, da)))
        m.memory_format = torch.channels_last
        m.model = m.model.to(memory_format=torch.channels_last)
        res[f"lpips_fp32_nhwc_bs{bs}_ms"] = ms(best(lambda: m.compute(ra, da)))
    m = LPIPSMetric("alex", device=DEV, batch_size=32)
    x = ra.permute(0, 3, 1, 2).float() / 255
    y = da.permute(0, 3, 1, 2).float() / 255

    def tf32():
        with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=True):
            m.model(x, y)

    res["lpips_tf32_ms_for_information"] = ms(best(tf32))

    def feats_only():
        with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            m.model.features(torch.cat([x, y], 0))

    res["lpips_backbone_only_fp32_ms"] = ms(best(feats_only))
    for name, metric in (("ssim", SSIMMetric(device=DEV, batch_size=32)), ("ms_ssim", MSSSIMMetric(device=DEV)),
                         ("psnr", PSNRMetric())):
        try:
            res[f"{name}_ms"] = ms(best(lambda: metric.compute(ra, da)))
        except Exception as e:  # noqa: BLE001
            res[f"{name}_ms"] = f"{type(e).__name__}: {e}"

    # Decoding.
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i, (r, q) in enumerate(zip(refs, dists)):
            for tag, arr in (("a", r), ("b", q)):
                path = Path(d) / f"{tag}{i}.png"
                from PIL import Image

                Image.fromarray(arr).save(path)
                paths.append(path)
        res["png_mb_mean"] = round(sum(p.stat().st_size for p in paths) / len(paths) / 1e6, 3)
        from PIL import Image

        from evalkit.score.images import _fast_png

        parts = {"read": 0.0, "sha256": 0.0, "pil_decode": 0.0, "to_numpy": 0.0, "libspng_decode": 0.0}
        for path in paths:
            t = time.perf_counter()
            data = path.read_bytes()
            parts["read"] += time.perf_counter() - t
            t = time.perf_counter()
            hashlib.sha256(data).hexdigest()
            parts["sha256"] += time.perf_counter() - t
            import io

            t = time.perf_counter()
            im = Image.open(io.BytesIO(data))
            im.load()
            parts["pil_decode"] += time.perf_counter() - t
            t = time.perf_counter()
            np.asarray(im.convert("RGB"), dtype=np.uint8)
            parts["to_numpy"] += time.perf_counter() - t
            t = time.perf_counter()
            _fast_png(data)  # None when pyspng is missing: then this part reads ~0
            parts["libspng_decode"] += time.perf_counter() - t
        res["decode_parts_ms_per_image"] = {k: round(v / len(paths) * 1000, 2) for k, v in parts.items()}
        t = time.perf_counter()
        for path in paths:
            decode_file(path)
        res["decode_file_one_process_images_per_s"] = round(len(paths) / (time.perf_counter() - t), 1)
        for w in (4, 8, 16):
            with Decoder(w) as dec:
                dec.decode(paths[:2 * w])
                t = time.perf_counter()
                dec.decode(paths)
                res[f"decoder_{w}_workers_images_per_s"] = round(len(paths) / (time.perf_counter() - t), 1)
    from bench_metrics import emit

    emit(res, "gpu_profile.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

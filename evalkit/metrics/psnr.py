"""PSNR between a candidate image and its reference, per image, then averaged. Higher is better.

data_range 1.0 on images scaled to [0, 1] from 8 bits (identical to data_range 255 on the uint8 values).
The squared error is summed exactly in integers, so PSNR does not depend on float rounding.

Identical images have infinite PSNR, which JSON cannot hold and which would make any mean infinite.
evalkit caps every per-image PSNR at PSNR_CAP_DB = 100 dB (x264's convention) and counts the capped pairs
(`n_capped`) in the record. 100 dB is an MSE below 1e-10 of the range: fewer than 1 in ~150,000 values
off by one 8-bit level, invisible, so the cap orders images the way a viewer would.
"""

from __future__ import annotations

import numpy as np

from evalkit.metrics.tensors import row_bands

PSNR_CAP_DB = 100.0


def psnr_uint8(ref: "np.ndarray | object", img: "np.ndarray | object", cap_db: float = PSNR_CAP_DB) -> np.ndarray:
    """Per-image PSNR of uint8 (N, H, W, C) batches (numpy, or torch on any device) -> float64 (N,), capped."""
    if tuple(ref.shape) != tuple(img.shape):
        raise ValueError(f"PSNR needs equal shapes, got {tuple(ref.shape)} and {tuple(img.shape)}")
    n, h = ref.shape[0], ref.shape[1]
    w = ref.shape[2] if len(ref.shape) > 2 else 1
    count = int(np.prod(ref.shape[1:]))
    sse = np.zeros(n, dtype=np.int64)
    # Summed exactly in integers, band by band for a large image (evalkit.metrics.tensors.row_bands): the same
    # value, with a bounded working set.
    for r0, r1 in row_bands(h, w):
        sse += _sse(ref[:, r0:r1], img[:, r0:r1])
    mse = sse.astype(np.float64) / count / (255.0 ** 2)
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(1.0 / mse)
    return np.minimum(out, cap_db)


def _sse(ref: "np.ndarray | object", img: "np.ndarray | object") -> np.ndarray:
    """Per-image sum of squared 8-bit differences, int64, exact (numpy, or torch on the images' device)."""
    n = ref.shape[0]
    if isinstance(ref, np.ndarray):
        d = ref.reshape(n, -1).astype(np.int32) - img.reshape(n, -1).astype(np.int32)
        return np.einsum("ij,ij->i", d, d, dtype=np.int64)  # exact; int64 holds 255^2 * 2^43 values
    import torch  # stay on the device the images already live on

    d = ref.reshape(n, -1).to(torch.int32) - img.reshape(n, -1).to(torch.int32)
    return (d * d).sum(dim=1, dtype=torch.int64).cpu().numpy()


class PSNRMetric:
    """Paired metric: per-pair PSNR (data_range 1.0 on [0,1] floats), capped at 100 dB."""

    OPTIONS = {"data_range": 1.0, "input": "8-bit images scaled to [0,1]", "cap_db": PSNR_CAP_DB,
               "reduction": "per image, then mean"}

    def __init__(self, device: str = "cpu", cap_db: float = PSNR_CAP_DB) -> None:
        self.cap_db = cap_db
        self.options = {**self.OPTIONS, "cap_db": cap_db}

    def min_size_reason(self, h: int, w: int) -> str | None:
        return None

    def compute(self, ref: np.ndarray, img: np.ndarray) -> np.ndarray:
        return psnr_uint8(ref, img, self.cap_db)

    @staticmethod
    def summary_extra(values: list[float]) -> dict[str, int]:
        """How many pairs hit the cap (identical images): their mean is a floor, not a measurement."""
        return {"n_capped": sum(1 for v in values if v >= PSNR_CAP_DB)}

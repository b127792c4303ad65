"""Image batches as tensors on a device: the one upload every paired metric shares.

uint8 HWC arrays go to the device as uint8 (a quarter of the float bytes over PCIe) and become float NCHW there.
Metrics import this module; the score stage's decoding (evalkit/score/images.py) feeds it.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np


def to_device_uint8(batch: "np.ndarray | Iterable[np.ndarray] | object", device: "str | object" = "cpu") -> "object":
    """uint8 (N, H, W, 3) numpy (or a list of HWC arrays, or a tensor) -> uint8 tensor on `device`.
    Paired metrics share this one upload; 8-bit is a quarter of the float bytes over PCIe. For CUDA the arrays are
    copied once, straight into page-locked memory, and sent from there without blocking."""
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if isinstance(batch, np.ndarray) and batch.ndim != 4:
        raise ValueError(f"expected a batch of images, shape (N, H, W, C), got shape {batch.shape}")
    arrays: Sequence[np.ndarray] = batch if isinstance(batch, np.ndarray) else list(batch)
    for i, a in enumerate(arrays):
        if a.dtype != np.uint8:
            raise ValueError(f"image #{i} is {a.dtype}, expected uint8")
    if isinstance(batch, np.ndarray) and (len(batch) == 0 or not cuda):
        if not cuda and batch.flags.c_contiguous and batch.flags.writeable:
            return torch.from_numpy(batch).to(dev)  # no copy on the CPU
        return torch.from_numpy(batch.copy()).to(dev)
    if len(arrays) == 0:
        raise ValueError("no images to upload")
    shape = arrays[0].shape
    for i, a in enumerate(arrays):
        if a.shape != shape:
            raise ValueError(f"images in one batch must share a shape: #0 is {shape}, #{i} is {a.shape}")
    host = torch.empty((len(arrays), *shape), dtype=torch.uint8, pin_memory=cuda)
    # torch's copy_ uses all intra-op threads, numpy's copy one (what that is worth on a GPU host:
    # benchmarks/results/metrics-gpu-2026-11-21.md). torch.from_numpy refuses nothing but warns on read-only arrays (PIL's): numpy copies those.
    if isinstance(batch, np.ndarray) and batch.flags.writeable:
        host.copy_(torch.from_numpy(np.ascontiguousarray(batch)))
    else:
        for i, a in enumerate(arrays):
            if a.flags.writeable:
                host[i].copy_(torch.from_numpy(np.ascontiguousarray(a)))
            else:
                host[i].numpy()[...] = a
    return host.to(dev, non_blocking=True)


_T = TypeVar("_T")


class Uploads:
    """A background thread that prepares and uploads the next batch while the caller scores this one. On CUDA the
    host's copy into page-locked memory and the transfer (on a side stream) overlap the GPU's work.

        with Uploads("cuda") as up:
            for k, prepared, _ in up.pipeline(n, submit, prepare):  # prepare runs in the thread, calls up.upload
                t = up.ready(prepared["handle"])  # the device tensor, safe to use on the current stream
    """

    def __init__(self, device: "str | object") -> None:
        import torch
        from concurrent.futures import ThreadPoolExecutor

        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="evalkit-upload")

    def submit(self, fn: "object", *args: object) -> "object":
        return self._pool.submit(fn, *args)  # type: ignore[arg-type]

    def pipeline(self, n: int, submit: Callable[[int], Any],
                 prepare: Callable[[int, Any], _T]) -> Iterator[tuple[int, _T, float]]:
        """Chunks 0..n-1 with three in flight: `submit(k)` starts chunk k decoding (in the Decoder's workers),
        `prepare(k, submitted)` runs in this object's thread (wait for the pixels, pair them, `upload` them), and
        chunk k is yielded to be scored while k+1 is prepared and k+2 decodes. Yields (k, prepared, seconds the
        caller waited for it)."""
        if n <= 0:
            return
        pending = {k: submit(k) for k in range(min(2, n))}
        fut = self._pool.submit(prepare, 0, pending.pop(0))
        for k in range(n):
            t = time.perf_counter()
            cur = fut.result()
            waited = time.perf_counter() - t
            if k + 2 < n:
                pending[k + 2] = submit(k + 2)
            if k + 1 < n:
                fut = self._pool.submit(prepare, k + 1, pending.pop(k + 1))
            yield k, cur, waited

    def upload(self, arrays: Sequence[np.ndarray]) -> tuple[object, object]:
        """Start the upload of one uint8 batch; returns a handle for `ready`."""
        import torch

        if not self.cuda:
            return to_device_uint8(arrays, self.device), None
        with torch.cuda.stream(self.stream):
            t = to_device_uint8(arrays, self.device)
            done = torch.cuda.Event()
            done.record(self.stream)
        return t, done

    def ready(self, handle: tuple[object, object]) -> "object":
        import torch

        t, done = handle
        if done is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(done)  # type: ignore[arg-type]
            t.record_stream(current)  # type: ignore[attr-defined]  # allocated on the side stream: keep it alive
        return t

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "Uploads":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def to_float_nchw(batch: "np.ndarray | object", device: "str | object" = "cpu", dtype: "object | None" = None) -> "object":
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1] on `device`. The division happens on the device."""
    import torch

    t = to_device_uint8(batch, device).permute(0, 3, 1, 2)
    return t.to(dtype or torch.float32) / 255.0


# Pixels of one image above which the per-pixel metrics (PSNR, SSIM, ΔE, Lab shifts) work through it in bands of
# rows, so that their float working set is bounded whatever the image size (an 8000x8000 pair cost 14 GB in SSIM).
# At or below it they compute exactly as they always have, so every stored value of such images is unchanged.
BAND_PIXELS = 2048 * 2048


def row_bands(h: int, w: int, halo: int = 0, band_pixels: int | None = None) -> list[tuple[int, int]]:
    """Row ranges [r0, r1) of the output rows of an h x w image whose metric needs `halo` more input rows below
    each output row (SSIM's window: 10), each band about `band_pixels` (default BAND_PIXELS) input pixels. One
    band for an image of at most that many pixels."""
    band_pixels = BAND_PIXELS if band_pixels is None else band_pixels
    out_rows = h - halo
    if h * w <= band_pixels or out_rows <= 1:
        return [(0, out_rows)]
    step = max(1, band_pixels // max(w, 1) - halo)
    return [(r, min(r + step, out_rows)) for r in range(0, out_rows, step)]

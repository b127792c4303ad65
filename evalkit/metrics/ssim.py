"""SSIM and MS-SSIM between a candidate image and its reference. Higher is better (1 = identical).

SSIM: Gaussian window 11x11 (sigma 1.5, truncated at 3.5 sigma as scipy does), K1 0.01, K2 0.03,
population (not sample) covariance, data_range 1.0 on images scaled to [0, 1] from 8 bits.
Per channel, then averaged over channels and over the valid area, per image.

Border convention: skimage.metrics.structural_similarity filters with reflect padding and then crops
(win_size - 1) // 2 = 5 pixels from every side before averaging. The cropped values never touch
the padding, so this module computes the same numbers with a *valid* (unpadded) convolution.
Parity with skimage (gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
channel_axis=-1) is tested at 1e-4 on real photographs.

MS-SSIM: torchmetrics' functional multiscale SSIM (5 scales, the standard betas, Gaussian 11 / 1.5,
data_range 1.0; its import does not need torchvision). It downsamples 4 times; torchmetrics accepts
sides with side // 16 > 10, i.e. >= 176 px. Smaller images are skipped with that reason.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from evalkit.metrics.tensors import row_bands

WIN = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03
# torchmetrics checks `side // 16 > win - 1` (its message says "> 160"; 161..175 px still fail): so 176 px.
MS_SSIM_MIN_SIDE = WIN * 2 ** 4


def gaussian_kernel_1d(sigma: float = SIGMA, truncate: float = 3.5, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """scipy.ndimage's Gaussian taps: radius int(truncate * sigma + 0.5), normalised to sum 1."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def _shifted_adds(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    taps = [float(v) for v in g]
    w = x.shape[-1] - WIN + 1
    y = x[..., 0:w] * taps[0]
    for k in range(1, WIN):
        y.add_(x[..., k:k + w], alpha=taps[k])
    h = x.shape[-2] - WIN + 1
    z = y[..., 0:h, :] * taps[0]
    for k in range(1, WIN):
        z.add_(y[..., k:k + h, :], alpha=taps[k])
    return z


def _conv11x11(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    k = g.to(device=x.device, dtype=torch.float32)
    return F.conv2d(x[:, None], (k[:, None] * k[None, :]).view(1, 1, WIN, WIN))[:, 0]


def _separable_conv(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    k = g.to(device=x.device, dtype=torch.float32)
    return F.conv2d(F.conv2d(x[:, None], k.view(1, 1, 1, WIN)), k.view(1, 1, WIN, 1))[:, 0]


def _depthwise_separable(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    # The maps as channels of one image, filtered by a grouped (depthwise) 1x11 then 11x1 conv.
    k = g.to(device=x.device, dtype=torch.float32)
    m, h, w = x.shape
    y = F.conv2d(x[None], k.view(1, 1, 1, WIN).expand(m, 1, 1, WIN).contiguous(), groups=m)
    return F.conv2d(y, k.view(1, 1, WIN, 1).expand(m, 1, WIN, 1).contiguous(), groups=m)[0]


# Ways to apply the separable Gaussian to (M, H, W) maps; all compute the same function (tests check they agree
# to float32 rounding). CPU uses shifted adds (4x faster than oneDNN's single-channel 11x11 conv on the 2-core CI
# machine). CUDA uses CUDA_FILTER: benchmarks/gpu_metrics.py --ssim-variants times them all on the GPU.
FILTERS = {"shifted_adds": _shifted_adds, "conv11x11": _conv11x11, "separable_conv": _separable_conv,
           "depthwise_separable": _depthwise_separable}
CUDA_FILTER = "depthwise_separable"


def gaussian_filter_valid(x: torch.Tensor, method: str | None = None) -> torch.Tensor:
    """Gaussian 11x11 (sigma 1.5) filter of (M, H, W) maps, 'valid' region only -> (M, H-10, W-10), fp32
    (TF32 off on CUDA). `method` is a key of FILTERS; by default shifted adds on CPU, CUDA_FILTER on CUDA."""
    g = gaussian_kernel_1d(dtype=torch.float64)
    method = method or (CUDA_FILTER if x.device.type == "cuda" else "shifted_adds")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        return FILTERS[method](x, g)


def ssim_per_image(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM of each pair in (N, C, H, W) float tensors -> (N,), in float32.

    float32 agrees with skimage's float64 to < 1e-6 on 8-bit photographs (C2 = 9e-4 bounds the effect of
    cancellation in E[x^2] - E[x]^2); float64 is ~10x slower on CPU. The 5 moment maps of every channel are
    filtered together as one (N*5*C, H, W) batch; SSIMMetric.compute takes a large image in bands instead."""
    if a.shape != b.shape:
        raise ValueError(f"SSIM needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    h, w = a.shape[-2:]
    if h < WIN or w < WIN:
        raise ValueError(f"SSIM needs images of at least {WIN}x{WIN} px, got {h}x{w}")
    return ssim_map(a, b, data_range).mean(dim=(1, 2, 3))


def ssim_map(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """The SSIM map of (N, C, H, W) pairs over the 'valid' region -> (N, C, H-10, W-10), float32."""
    n, c, h, w = a.shape
    a, b = a.float(), b.float()
    stack = torch.stack([a, b, a * a, b * b, a * b], dim=1)  # (N, 5, C, H, W)
    stack = gaussian_filter_valid(stack.reshape(n * 5 * c, h, w)).view(n, 5, c, h - WIN + 1, w - WIN + 1)
    mu_a, mu_b, e_aa, e_bb, e_ab = stack.unbind(1)
    var_a = e_aa - mu_a * mu_a
    var_b = e_bb - mu_b * mu_b
    cov = e_ab - mu_a * mu_b
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


def ms_ssim_per_image(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms_ssim

    h, w = a.shape[-2:]
    if min(h, w) < MS_SSIM_MIN_SIDE:
        raise ValueError(ms_ssim_too_small_reason(h, w))
    return ms_ssim(a.float(), b.float(), data_range=data_range, kernel_size=WIN, sigma=SIGMA,
                   reduction="none", normalize="relu")


def ms_ssim_too_small_reason(h: int, w: int) -> str:
    return (f"images are {h}x{w} px; MS-SSIM (5 scales, window {WIN}) needs each side >= {MS_SSIM_MIN_SIDE} px")


class SSIMMetric:
    """Paired metric: per-pair SSIM between uint8 HWC batches."""

    OPTIONS = {"window": "gaussian 11x11", "sigma": SIGMA, "k1": K1, "k2": K2, "data_range": 1.0,
               "covariance": "population", "border": "valid (= skimage's crop of 5 px)"}

    def __init__(self, device: str = "cpu", batch_size: int = 8) -> None:
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.options = dict(self.OPTIONS)

    # The per-pair function on float NCHW batches in [0, 1]; MS-SSIM swaps in its own.
    per_image = staticmethod(lambda a, b: ssim_per_image(a, b))
    banded = True  # a large image is scored band by band (row_bands); MS-SSIM's pyramid cannot be

    def min_size_reason(self, h: int, w: int) -> str | None:
        return None if min(h, w) >= WIN else f"images are {h}x{w} px; SSIM needs at least {WIN}x{WIN}"

    @torch.inference_mode()
    def compute(self, ref: "np.ndarray | torch.Tensor", img: "np.ndarray | torch.Tensor") -> np.ndarray:
        """Per-pair values for uint8 (N, H, W, 3) batches (numpy, or tensors already on the device)."""
        from evalkit.metrics.tensors import to_float_nchw

        h, w = ref.shape[1], ref.shape[2]
        bands = row_bands(h, w, halo=WIN - 1) if self.banded else [(0, h)]
        if len(bands) > 1:  # a large image: converted and filtered band by band, one image at a time
            return np.array([self._banded(ref[i:i + 1], img[i:i + 1], bands) for i in range(len(ref))])
        out = []
        for s in range(0, len(ref), self.batch_size):
            a = to_float_nchw(ref[s:s + self.batch_size], self.device)
            b = to_float_nchw(img[s:s + self.batch_size], self.device)
            out.append(self.per_image(a, b).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def _banded(self, ref: "np.ndarray | torch.Tensor", img: "np.ndarray | torch.Tensor",
                bands: list[tuple[int, int]]) -> float:
        """SSIM of one uint8 (1, H, W, 3) pair from its map's row bands (each the whole map's rows), summed in
        float64: the float working set is a band's, not the image's."""
        from evalkit.metrics.tensors import to_float_nchw

        h, w = ref.shape[1], ref.shape[2]
        total = 0.0
        for r0, r1 in bands:
            a = to_float_nchw(ref[:, r0:r1 + WIN - 1], self.device)
            b = to_float_nchw(img[:, r0:r1 + WIN - 1], self.device)
            total += float(ssim_map(a, b).sum(dtype=torch.float64))
        return total / (3 * (h - WIN + 1) * (w - WIN + 1))


class MSSSIMMetric(SSIMMetric):
    """Paired metric: per-pair MS-SSIM (torchmetrics functional), skipped below 176 px per side."""

    OPTIONS = {"scales": 5, "betas": "(0.0448, 0.2856, 0.3001, 0.2363, 0.1333)", "window": "gaussian 11x11",
               "sigma": SIGMA, "data_range": 1.0, "implementation": "torchmetrics functional", "normalize": "relu"}

    def min_size_reason(self, h: int, w: int) -> str | None:
        return None if min(h, w) >= MS_SSIM_MIN_SIDE else ms_ssim_too_small_reason(h, w)

    per_image = staticmethod(lambda a, b: ms_ssim_per_image(a, b))
    banded = False
    # Peak bytes a pair adds per pixel in torchmetrics' pyramid (CPU, 2026-12-06,
    # benchmarks/results/metric-memory-2026-12-06.md): score refuses a batch that cannot fit, in one line.
    WORKING_BYTES_PER_PIXEL = 340

"""CMMD (Jayasumana et al., "Rethinking FID: Towards a Better Evaluation Metric for Image Generation", CVPR 2024):
the maximum mean discrepancy between CLIP ViT-L/14@336 image embeddings with a Gaussian RBF kernel. Set metric,
lower is better; ``cmmd`` against the reference backend's set, ``cmmd_real`` against ``--real-dir``.

Reference code: google-research/google-research ``cmmd/``:
  * distance.py (@4c42994) L25 _SIGMA = 10, L28 _SCALE = 1000, L31-90 ``mmd(x, y)``: the means over ALL pairs
    (diagonals included) of k(x,x'), k(y,y') and k(x,y) with k(a,b) = exp(-||a-b||² / (2σ²)), ||a-b||² written as
    ||a||² + ||b||² - 2a·b; returns 1000 · (k̄_xx + k̄_yy - 2 k̄_xy). Its docstring calls it "the minimum-variance/
    biased version of the estimator described in Eq.(5)" of Gretton et al. 2012: a V-statistic, >= 0.
  * embedding.py (@5b09c22): CLIP 'vit_l14_336px' (OpenAI's ViT-L/14@336), L2-normalised image embeddings
    (scenic CLIP.encode_image(normalize=True)); input = (x - CLIP mean) / CLIP std;
  * io_util.py (@1963839) L38-57, L139: PIL centre square crop ((h-l)//2, (w-l)//2), PIL bicubic resize to
    336×336, /255. (L130-131 batch with drop_remainder=True, dropping the images past a multiple of the batch
    size; evalkit uses every image, as the sayakpaul/cmmd-pytorch port does.)
evalkit computes the statistic in float64: the reference runs in float32 (JAX default), where the k̄ terms (~0.99)
cancel to ~1e-4 absolute error. The weights: openai/clip-vit-large-patch14-336 as a transformers folder.

Sample size. The paper calls CMMD "an unbiased estimator" that is "sample efficient"; the reference code's estimator
is the biased V-statistic above. Its bias is exact and computable from the same kernel sums:
V - U = 1000 · [(1 - Ū_xx)/n + (1 - Ū_yy)/m], where U is the unbiased U-statistic (Gretton's Eq. 3, diagonals left
out) and Ū the off-diagonal kernel means. Every record carries value (the reference's V, the number papers print),
value_unbiased (U) and bias; it is marked ``indicative`` when the bias is 10% or more of the value -- at that n the
number says more about n than about the two sets -- with the n per set that would bring the bias under 10%.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from evalkit.errors import EvalkitError
from evalkit.metrics.clip_score import CLIP_MEAN, CLIP_STD
from evalkit.metrics.kinds import NotComputable

CMMD_SIGMA = 10.0  # distance.py L25
CMMD_SCALE = 1000.0  # distance.py L28
CMMD_SIZE = 336  # ViT-L/14@336
CMMD_BIAS_INDICATIVE = 0.10  # bias / value at or above which a value is "indicative only"
PREPROCESS_ID = "cmmd-io_util:PIL-centre-square-crop,bicubic-336,/255,clip-mean-std"


def _kernel_sum(a: Any, b: Any, gamma: float, block: int = 4096) -> float:
    """Σ_ij exp(-γ(||a_i||² + ||b_j||² - 2 a_i·b_j)) in float64, in row blocks so 20k images need no 3 GB matrix."""
    import torch

    na, nb = (a * a).sum(1), (b * b).sum(1)
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for s in range(0, a.shape[0], block):
        d2 = na[s:s + block, None] + nb[None, :] - 2.0 * (a[s:s + block] @ b.T)
        total += torch.exp(-gamma * d2).sum()
    return float(total)


def cmmd_terms(x: Any, y: Any, sigma: float = CMMD_SIGMA, device: str = "cpu") -> dict[str, float]:
    """The kernel sums behind both estimators: k̄ over all pairs (V) and over distinct pairs (U), in float64."""
    import torch

    xt = torch.as_tensor(np.asarray(x, dtype=np.float64), device=device)
    yt = torch.as_tensor(np.asarray(y, dtype=np.float64), device=device)
    if xt.ndim != 2 or yt.ndim != 2 or xt.shape[1] != yt.shape[1]:
        raise ValueError(f"CMMD needs two [N, D] embedding sets of one D, got {tuple(xt.shape)} and {tuple(yt.shape)}")
    n, m = xt.shape[0], yt.shape[0]
    gamma = 1.0 / (2.0 * sigma ** 2)  # distance.py L58
    sxx, syy, sxy = _kernel_sum(xt, xt, gamma), _kernel_sum(yt, yt, gamma), _kernel_sum(xt, yt, gamma)
    # U leaves out the diagonal, k(a, a) = exp(0) = 1: so V - U = 1000·[(1 - Ū_xx)/n + (1 - Ū_yy)/m] exactly.
    return {"n": n, "m": m, "kxx": sxx / n ** 2, "kyy": syy / m ** 2, "kxy": sxy / (n * m),
            "uxx": (sxx - n) / (n * (n - 1)) if n > 1 else float("nan"),
            "uyy": (syy - m) / (m * (m - 1)) if m > 1 else float("nan")}


def cmmd(x: Any, y: Any, sigma: float = CMMD_SIGMA, scale: float = CMMD_SCALE) -> float:
    """The reference statistic: scale · (k̄_xx + k̄_yy - 2 k̄_xy) over all pairs (V-statistic), in float64."""
    t = cmmd_terms(x, y, sigma)
    return scale * (t["kxx"] + t["kyy"] - 2.0 * t["kxy"])


def cmmd_preprocess(image: Any, size: int = CMMD_SIZE) -> np.ndarray:
    """HWC uint8 -> float32 [3, size, size] as io_util.py + embedding.py: centre square crop, PIL bicubic resize,
    /255, CLIP mean/std. Gray images are tiled to 3 channels (io_util.py L82)."""
    from PIL import Image

    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    im = Image.fromarray(np.ascontiguousarray(a[:, :, :3]))
    w, h = im.size
    side = min(w, h)
    top, left = (h - side) // 2, (w - side) // 2
    im = im.crop((left, top, left + side, top + side)).resize((size, size), resample=Image.BICUBIC)
    x = np.asarray(im).astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _clip_files(metric_weights: Mapping[str, str] | None) -> tuple[Path, str, dict[str, str]]:
    from evalkit.metrics.user_weights import transformers_folder_files
    from evalkit.weights.user import hash_weight_files, resolve_user_weights

    path, origin = resolve_user_weights("cmmd", metric_weights)
    return path, origin, hash_weight_files("cmmd", transformers_folder_files(path, "cmmd"))


class CMMDExtractor:
    """The "clip_vit_l14_336" feature extractor (cmmd and cmmd_real name it): L2-normalised CLIP image embeddings,
    float64 [N, D]. content_key() needs no model, so a cached rerun loads none."""

    def __init__(self, device: str = "cpu", metric_weights: Mapping[str, str] | None = None,
                 batch_size: int = 16) -> None:
        import torch
        from transformers import CLIPModel

        path, _origin, _hashes = _clip_files(metric_weights)
        try:
            model = CLIPModel.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
        except OSError as e:
            raise EvalkitError(f"cmmd: cannot load CLIP from {path}: {str(e).splitlines()[0][:200]}") from None
        vc = model.config.vision_config
        if int(vc.image_size) != CMMD_SIZE or int(vc.patch_size) != 14:
            raise EvalkitError(f"cmmd: {path} is a CLIP at {vc.image_size} px with patch {vc.patch_size}; CMMD is "
                               f"defined on CLIP ViT-L/14@336 (openai/clip-vit-large-patch14-336)")
        self.vision, self.proj = model.vision_model.eval().to(device), model.visual_projection.eval().to(device)
        self.device, self.batch_size = device, int(batch_size)
        self.feature_key = self.content_key(metric_weights)

    @classmethod
    def content_key(cls, metric_weights: Mapping[str, str] | None = None) -> str:
        """Cache key of the features: the CLIP files' SHA-256, the preprocessing, METRICS_VERSION. Raises
        MissingWeightsError without weights (set metrics naming this extractor are then skipped with it)."""
        from evalkit.metrics.registry import METRICS_VERSION

        _path, _origin, hashes = _clip_files(metric_weights)
        blob = json.dumps(["cmmd-clip", PREPROCESS_ID, METRICS_VERSION, sorted(hashes.items())]).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def features(self, images: Sequence[Any]) -> np.ndarray:
        """HxWx3 uint8 images -> unit-norm embeddings, float64 [N, D] (the model runs in fp32)."""
        import torch

        out = []
        with torch.inference_mode():
            for s in range(0, len(images), self.batch_size):
                px = torch.from_numpy(np.stack([cmmd_preprocess(i) for i in images[s:s + self.batch_size]]))
                e = self.proj(self.vision(pixel_values=px.to(self.device)).pooler_output).double()
                out.append((e / e.norm(dim=-1, keepdim=True)).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))


class CMMDMetric:
    """CMMD of a feature set against the reference set, with its finite-sample bias (see the module docstring)."""

    def __init__(self, device: str = "cpu", metric_weights: Mapping[str, str] | None = None) -> None:
        self.device = device
        path, origin, self.hashes = _clip_files(metric_weights)
        self.model = str(path) if origin == "given" else f"{origin} ({path})"

    def statistic(self, features: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
        from evalkit.weights.user import pinned_status

        n, m = len(features), len(reference)
        if min(n, m) < 2:
            raise NotComputable(f"CMMD needs at least 2 images per set, got {min(n, m)} (its bias needs pairs)")
        dev = self.device if str(self.device).startswith("cuda") else "cpu"
        t = cmmd_terms(features, reference, CMMD_SIGMA, dev)
        value = CMMD_SCALE * (t["kxx"] + t["kyy"] - 2.0 * t["kxy"])
        unbiased = CMMD_SCALE * (t["uxx"] + t["uyy"] - 2.0 * t["kxy"])
        bias = CMMD_SCALE * ((1.0 - t["uxx"]) / n + (1.0 - t["uyy"]) / m)  # = value - unbiased, exactly
        rec: dict[str, Any] = {
            "value": value, "value_unbiased": unbiased, "bias": bias,
            "estimator": "google-research cmmd/distance.py: 1000 * biased MMD^2 (V-statistic), RBF sigma 10, float64",
            "model": self.model, "weights_sha256": self.hashes,
            "weights_pinned": pinned_status("cmmd", self.hashes), "preprocess": PREPROCESS_ID}
        if value <= 0 or bias >= CMMD_BIAS_INDICATIVE * value:
            # n per set at which the bias would be 10% of the value: bias scales as 1/n.
            need = (f"about {int(np.ceil(bias * min(n, m) / (CMMD_BIAS_INDICATIVE * unbiased)))} images per set "
                    f"would bring it under {CMMD_BIAS_INDICATIVE:.0%}" if unbiased > 0 else
                    "the unbiased estimate is <= 0: at this n the sets cannot be told apart")
            rec["indicative"] = True
            rec["indicative_reason"] = (f"n={min(n, m)}: the estimator's finite-sample bias {bias:.3g} is "
                                        f"{bias / value:.0%} of the value; {need}" if value > 0 else
                                        f"n={min(n, m)}: the value is 0; {need}")
        return rec


__all__ = ["CMMDExtractor", "CMMDMetric", "CMMD_SCALE", "CMMD_SIGMA", "cmmd", "cmmd_preprocess", "cmmd_terms"]

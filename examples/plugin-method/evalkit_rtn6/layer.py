"""`RTN6Linear`: int6 weights packed four codes to three bytes, group-wise asymmetric round-to-nearest."""

from __future__ import annotations

import torch
import torch.nn.functional as F

BITS = 6
LEVELS = 2**BITS - 1  # codes 0..63


def pack6(codes: torch.Tensor) -> torch.Tensor:
    """[N, K] codes in 0..63 (K a multiple of 4) -> [N, 3K/4] uint8: four 6-bit codes in each 24 bits, low first."""
    c = codes.to(torch.int32).reshape(codes.shape[0], -1, 4)
    bits = c[..., 0] | (c[..., 1] << 6) | (c[..., 2] << 12) | (c[..., 3] << 18)
    out = torch.stack([bits & 0xFF, (bits >> 8) & 0xFF, (bits >> 16) & 0xFF], dim=-1)
    return out.reshape(codes.shape[0], -1).to(torch.uint8)


def unpack6(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of pack6: [N, 3K/4] uint8 -> [N, K] int32 codes."""
    b = packed.to(torch.int32).reshape(packed.shape[0], -1, 3)
    bits = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    codes = torch.stack([(bits >> s) & LEVELS for s in (0, 6, 12, 18)], dim=-1)
    return codes.reshape(packed.shape[0], -1)


class RTN6Linear(torch.nn.Module):
    """A Linear whose weight is stored as packed int6 codes with a bf16 scale and zero point per group of `group`
    input features: w ~= (code - zero) * scale."""

    def __init__(self, linear: torch.nn.Linear, group: int) -> None:
        super().__init__()
        out_f, in_f = linear.weight.shape
        if in_f % group or group % 4:
            raise ValueError(f"in_features {in_f} is not a multiple of the group {group} (itself a multiple of 4)")
        self.in_features, self.out_features, self.group = in_f, out_f, group
        w = linear.weight.detach().float().reshape(out_f, in_f // group, group)
        lo, hi = w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True)
        scale = ((hi - lo) / LEVELS).clamp(min=1e-8)
        zero = torch.round(-lo / scale).clamp(0, LEVELS)
        codes = torch.round(w / scale + zero).clamp(0, LEVELS).reshape(out_f, in_f)
        dtype = linear.weight.dtype
        self.register_buffer("qweight", pack6(codes))
        self.register_buffer("scale", scale.squeeze(-1).to(dtype))
        self.register_buffer("zero", zero.squeeze(-1).to(dtype))
        self.bias = linear.bias

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        codes = unpack6(self.qweight).reshape(self.out_features, -1, self.group).to(dtype)
        w = (codes - self.zero.to(dtype).unsqueeze(-1)) * self.scale.to(dtype).unsqueeze(-1)
        return w.reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={BITS}, group={self.group}"

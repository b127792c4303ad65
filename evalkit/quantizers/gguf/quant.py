"""The GGUF block quantizers evalkit writes with (split from gguf.py, which makes, checks and loads the files).

Q8_0, Q4_0 and Q4_1 are torch re-implementations of `gguf.quants`' numpy code, bit-exact (tests/test_gguf.py); Q2_K
is evalkit's own simple min/max quantizer in ggml's block layout. `quantize_tensor` picks torch on CUDA and gguf's
numpy code on CPU, where it is faster (see `quant_engine`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from evalkit.errors import EvalkitError

if TYPE_CHECKING:  # torch/numpy are imported lazily: the CLI must stay fast
    import numpy as np
    import torch

# Types made by evalkit's own torch code (bit-exact to gguf.quants where gguf has a quantizer).
TORCH_QTYPES = ("Q8_0", "Q4_0", "Q4_1", "Q2_K")
# Rows per torch chunk bound temporary memory for very large weights (fp32 copy + intermediates).
_CHUNK_ELEMENTS = 1 << 24

# ---------------------------------------------------------------------------------------------------------------
# Which types can be made.


def gguf_module() -> Any:
    try:
        import gguf
    except ImportError:
        raise EvalkitError("the gguf package is not installed (pip install gguf)") from None
    return gguf


def qtype_enum(qtype: str) -> Any:
    gguf = gguf_module()
    name = qtype.strip().upper()
    try:
        return gguf.GGMLQuantizationType[name]
    except KeyError:
        from evalkit.errors import suggest

        names = [t.name for t in gguf.GGMLQuantizationType]
        raise EvalkitError(f"unknown GGUF type {qtype!r}.{suggest(name, names)}") from None


def makeable_qtypes() -> list[str]:
    """GGUF types `ensure_gguf` can produce: evalkit's torch quantizers plus the types gguf.quants can quantize,
    limited to those diffusers' GGUF loader can read (gguf also makes e.g. MXFP4/TQ1_0, which diffusers cannot load)."""
    gguf = gguf_module()
    import numpy as np
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES

    out = set(TORCH_QTYPES) | {"BF16"}
    probe = np.zeros((1, 256), dtype=np.float32)
    for t in SUPPORTED_GGUF_QUANT_TYPES:
        if t.name in out:
            continue
        try:
            gguf.quants.quantize(probe, t)
            out.add(t.name)
        except Exception:  # NotImplementedError: gguf can only dequantize this type
            pass
    return sorted(out)


def check_makeable(qtype: str) -> Any:
    t = qtype_enum(qtype)
    if t.name in TORCH_QTYPES:
        return t
    ok = makeable_qtypes()
    if t.name not in ok:
        raise EvalkitError(
            f"GGUF type {t.name}: the gguf package cannot make this type (it can only read it) and evalkit does not "
            f"implement it. Make the file with llama.cpp's llama-quantize or city96's ComfyUI-GGUF tools and pass it "
            f"with --gguf-file PATH. Types evalkit can make: {', '.join(ok)}"
        )
    return t


# ---------------------------------------------------------------------------------------------------------------
# Torch quantizers. Each takes float32 blocks [n, block] and returns uint8 [n, type_size] in ggml's layout.
# They mirror gguf.quants' numpy code operation by operation (same float32 ops, same rounding) so bytes match.


def _np_roundf(x: "torch.Tensor") -> "torch.Tensor":
    # gguf's np_roundf: round half away from zero, computed exactly as gguf does (floor tricks, not x+0.5,
    # which rounds 0.49999997 up in float32).
    import torch

    a = x.abs()
    fl = torch.floor(a)
    return torch.sign(x) * (fl + torch.floor(2 * (a - fl)))


def _fp16_bytes(x: "torch.Tensor") -> "torch.Tensor":
    """[n, 1] float32 -> [n, 2] uint8 of the fp16 value (round to nearest even, as numpy's astype)."""
    import torch

    return x.to(torch.float16).contiguous().view(torch.uint8).reshape(x.shape[0], 2)


def _div(x: "torch.Tensor", c: float) -> "torch.Tensor":
    """x / c, correctly rounded on every device. On CUDA, torch divides by a Python (CPU) scalar as x * (1/c),
    which can differ from numpy's x / c in the last bit (seen on an H100: Q8_0 and Q4_1 bytes differed from gguf's,
    while Q4_0's / -8 matched, 1/8 being exact). A 0-dim tensor on x's device takes the true-division kernel."""
    import torch

    return x / torch.full((), c, dtype=x.dtype, device=x.device)


def _safe_inv(d: "torch.Tensor") -> "torch.Tensor":
    import torch

    # Like gguf's np.where(d == 0, 0, 1 / d): the inf from 1/0 is discarded by the where.
    return torch.where(d == 0, 0.0, 1 / d)


def _pack_nibbles(q: "torch.Tensor") -> "torch.Tensor":
    # ggml: byte j holds value j (low nibble) and value j + block/2 (high nibble).
    half = q.shape[1] // 2
    return q[:, :half] | (q[:, half:] << 4)


def quantize_q8_0(blocks: "torch.Tensor") -> "torch.Tensor":
    import torch

    d = _div(blocks.abs().amax(dim=1, keepdim=True), 127)
    qs = _np_roundf(blocks * _safe_inv(d)).to(torch.int8).view(torch.uint8)
    return torch.cat([_fp16_bytes(d), qs], dim=1)


def quantize_q4_0(blocks: "torch.Tensor") -> "torch.Tensor":
    import torch

    # The signed value of largest magnitude (first one on ties, like numpy's argmax) maps to -8.
    imax = blocks.abs().argmax(dim=1, keepdim=True)
    mx = torch.gather(blocks, 1, imax)
    d = _div(mx, -8)
    q = torch.trunc(blocks * _safe_inv(d) + 8.5).clamp(0, 15).to(torch.uint8)
    return torch.cat([_fp16_bytes(d), _pack_nibbles(q)], dim=1)


def quantize_q4_1(blocks: "torch.Tensor") -> "torch.Tensor":
    import torch

    mx = blocks.amax(dim=1, keepdim=True)
    mn = blocks.amin(dim=1, keepdim=True)
    d = _div(mx - mn, 15)
    q = torch.trunc((blocks - mn) * _safe_inv(d) + 0.5).clamp(0, 15).to(torch.uint8)
    return torch.cat([_fp16_bytes(d), _fp16_bytes(mn), _pack_nibbles(q)], dim=1)


def _q2k_fit(sub: "torch.Tensor", iters: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Per 16-value sub-block: step s >= 0 and offset m >= 0 with x ~ s*q - m, q in 0..3. Starts from min/max, then
    `iters` alternating steps: assign q, refit (s, m) by least squares (Lloyd-style; llama.cpp's make_qkx2_quants
    also searches candidate scales, which this does not). The refits cut the error ~15-20% against plain min/max."""
    import torch

    lo = sub.amin(dim=2).clamp(max=0)  # the format subtracts a non-negative min, so offsets are <= 0
    s = _div(sub.amax(dim=2) - lo, 3)
    b = lo
    for _ in range(iters):
        q = torch.round((sub - b.unsqueeze(2)) * _safe_inv(s).unsqueeze(2)).clamp(0, 3)
        qm, xm = q.mean(dim=2), sub.mean(dim=2)
        qc = q - qm.unsqueeze(2)
        var = (qc * qc).sum(dim=2)
        cov = (qc * (sub - xm.unsqueeze(2))).sum(dim=2)
        s_fit = torch.where(var > 0, cov / var.clamp(min=1e-30), s).clamp(min=0)
        b_fit = (xm - s_fit * qm).clamp(max=0)
        # Where the offset hit its bound (0), refit the step alone: x ~ s*q.
        qq = (q * q).sum(dim=2)
        s_zero = torch.where(qq > 0, (q * sub).sum(dim=2) / qq.clamp(min=1e-30), s_fit)
        s = torch.where(b_fit == 0, s_zero, s_fit).clamp(min=0)
        b = b_fit
    return s, -b


def quantize_q2_k(blocks: "torch.Tensor", iters: int = 2) -> "torch.Tensor":
    """Q2_K, 256 values -> 84 bytes: scales[16] (low nibble scale, high nibble min), qs[64], d (fp16), dmin (fp16).
    A value decodes as d*scale*q - dmin*min with q in 0..3. evalkit's own simple quantizer (gguf has none): per
    16-value sub-block a min/max fit refined by least squares (`_q2k_fit`), sub-scales re-quantized to 4 bits
    against fp16 super-scales. Not llama.cpp's search: expect somewhat larger error than llama.cpp's Q2_K files."""
    import torch

    n = blocks.shape[0]
    sub = blocks.reshape(n, 16, 16)
    step, off = _q2k_fit(sub, iters)  # [n, 16] each, >= 0
    # Super-scales, rounded to fp16 first so the 4-bit sub-scales are computed against what the decoder will use.
    d = _div(step.amax(dim=1, keepdim=True), 15).to(torch.float16)
    dmin = _div(off.amax(dim=1, keepdim=True), 15).to(torch.float16)
    d32, dmin32 = d.float(), dmin.float()
    sc = torch.round(step * _safe_inv(d32)).clamp(0, 15)
    mn = torch.round(off * _safe_inv(dmin32)).clamp(0, 15)
    dl = (d32 * sc).unsqueeze(2)  # [n, 16, 1]: what the decoder will use
    ml = (dmin32 * mn).unsqueeze(2)
    q = torch.round((sub + ml) * _safe_inv(dl)).clamp(0, 3).to(torch.uint8).reshape(n, 2, 4, 32)
    # ggml packing: in each half of 128 values, byte l holds values j*32 + l at bits 2j (j = 0..3).
    qs = q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)  # [n, 2, 32]
    scales = sc.to(torch.uint8) | (mn.to(torch.uint8) << 4)
    return torch.cat([scales, qs.reshape(n, 64), d.view(torch.uint8).reshape(n, 2),
                      dmin.view(torch.uint8).reshape(n, 2)], dim=1)


_TORCH_QUANTIZERS = {"Q8_0": quantize_q8_0, "Q4_0": quantize_q4_0, "Q4_1": quantize_q4_1, "Q2_K": quantize_q2_k}


def quant_engine(qtype: str, device: str | None) -> tuple[str, str]:
    """('torch', device) or ('numpy', 'cpu'). Why: torch wins on CUDA (GB/s), but on CPU torch's broadcasts over
    32-wide blocks run ~10x slower than gguf's numpy code (measured: Q8_0 ~14 vs ~100 Mparam/s on 2 cores), so
    on CPU gguf's own (reference) quantizer is used wherever it exists."""
    import torch

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if qtype not in _TORCH_QUANTIZERS:
        return "numpy", "cpu"
    if dev.startswith("cuda") or qtype not in _NUMPY_QTYPES:
        return "torch", dev
    return "numpy", "cpu"


# Types for which gguf.quants has a quantizer that matches ours byte for byte.
_NUMPY_QTYPES = ("Q8_0", "Q4_0", "Q4_1")


def quantize_tensor(w: "torch.Tensor", qtype: str, device: str | None = None, engine: str = "auto") -> "np.ndarray":
    """Quantize a tensor (rows last) to ggml bytes: a uint8 array of shape [..., row_bytes].

    engine: 'torch' (evalkit's quantizers on `device`, default CUDA when available), 'numpy' (gguf.quants), or
    'auto' (see `quant_engine`). Large tensors go in row chunks so temporary fp32 copies stay bounded."""
    import numpy as np
    import torch

    gguf = gguf_module()
    t = qtype_enum(qtype)
    block, type_size = gguf.GGML_QUANT_SIZES[t]
    if w.shape[-1] % block:
        raise EvalkitError(f"row length {w.shape[-1]} is not a multiple of the {t.name} block size {block}")
    rows = w.reshape(-1, w.shape[-1])
    out_shape = (*w.shape[:-1], w.shape[-1] // block * type_size)
    if t.name == "BF16":
        return rows.to(torch.bfloat16).contiguous().view(torch.uint8).cpu().numpy().reshape(out_shape)
    if engine == "auto":
        engine, dev = quant_engine(t.name, device)
    else:
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if engine == "numpy":
        return gguf.quants.quantize(rows.float().cpu().numpy(), t).reshape(out_shape)
    fn = _TORCH_QUANTIZERS.get(t.name)
    if fn is None:
        raise EvalkitError(f"no torch quantizer for {t.name} (torch ones: {', '.join(_TORCH_QUANTIZERS)})")
    out = np.empty((rows.shape[0], out_shape[-1]), dtype=np.uint8)
    step = max(1, _CHUNK_ELEMENTS // rows.shape[1])
    with torch.no_grad():
        for r0 in range(0, rows.shape[0], step):
            chunk = rows[r0:r0 + step].to(dev).float()
            qb = fn(chunk.reshape(-1, block))
            out[r0:r0 + chunk.shape[0]] = qb.reshape(chunk.shape[0], -1).cpu().numpy()
    return out.reshape(out_shape)

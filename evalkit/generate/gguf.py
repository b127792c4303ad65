"""GGUF for the Flux transformer, both ways: make (and cache) a GGUF quantization of the bf16 transformer, or
check and load a user's pre-quantized file.

Making a file (`ensure_gguf`):
- Tensors keep diffusers' own key names, so `FluxTransformer2DModel.from_single_file` needs no key conversion.
- What is quantized follows city96's Flux GGUF convention: 2-D Linear weights whose row length is a multiple of the
  type's block size get `qtype`; 1-D tensors (biases, norm scales) and tiny tensors (<= 1024 values) are F32; other
  2-D weights (row length not a multiple of the block, e.g. `x_embedder.weight` [3072, 64] under Q2_K) stay BF16.
  Why F32 and not BF16 for 1-D tensors: diffusers' GGUF loader wraps every non-F32/F16 tensor in a GGUFParameter
  (raw bytes) and only knows how to dequantize those inside GGUFLinear; a BF16 bias or norm scale would load as bytes.
- Quantizers: Q8_0, Q4_0, Q4_1 have torch re-implementations of `gguf.quants`' numpy code (bit-exact, tested) that
  run on CUDA when there is one (FLUX.1-dev's 11.9B parameters would take minutes in numpy). On CPU, gguf's numpy
  code is used instead: it is faster there than torch (small 32-wide blocks). Other types gguf can quantize
  (Q5_0, Q5_1) always go through `gguf.quants.quantize`.
- **Q2_K**: gguf 0.19 can only *dequantize* K-quants. evalkit implements Q2_K itself (the block layout ggml
  uses: 256 values as 16 sub-blocks of 16, each with a 4-bit scale and a 4-bit min, an fp16 super-scale `d` and
  super-min `dmin`, 2-bit quants). It is a simple quantizer, NOT llama.cpp's search (`make_qkx2_quants`): a
  min/max fit per sub-block refined by a few least-squares steps, so its error is larger than that of files made
  by llama.cpp / city96's tools. Its files decode with `gguf.quants.dequantize` and diffusers' Q2_K kernel
  (tested). Other K-/I-quants are not made here: `ensure_gguf` raises EvalkitError saying to pass a
  pre-quantized file with `--gguf-file PATH`.
- Streaming: tensors are read one at a time with `safe_open`, quantized, and written straight to the file; memory
  holds one tensor (plus its fp32 copy), not the model.
- Atomic and cached: written to a temp file in the cache folder, fsynced, renamed. The cache key hashes the
  safetensors headers (names, shapes, dtypes, offsets), file sizes, a few sampled 64 KiB chunks of each file (to
  catch weights replaced in place with the same shapes), qtype, the gguf version and CONVERTER_VERSION -- not a
  full hash of 24 GB.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalkit.errors import EvalkitError
from evalkit.io import file_lock

if TYPE_CHECKING:  # torch/diffusers/numpy are imported lazily: the CLI must stay fast
    import numpy as np
    import torch

# Bump when the bytes written for the same input would change (quantizer, tensor-type policy, metadata).
CONVERTER_VERSION = "evalkit-gguf-v2"  # v2: true division on CUDA (v1 bytes could differ from gguf in the last bit)

# Types made by evalkit's own torch code (bit-exact to gguf.quants where gguf has a quantizer).
TORCH_QTYPES = ("Q8_0", "Q4_0", "Q4_1", "Q2_K")
# city96: tensors this small stay F32 (not worth quantizing; keeps odd small weights exact).
SMALL_TENSOR_LIMIT = 1024
# Rows per torch chunk bound temporary memory for very large weights (fp32 copy + intermediates).
_CHUNK_ELEMENTS = 1 << 24
_SAMPLE_CHUNKS, _SAMPLE_BYTES = 8, 1 << 16


# ---------------------------------------------------------------------------------------------------------------
# Which types can be made.


def _gguf_module() -> Any:
    try:
        import gguf
    except ImportError:
        raise EvalkitError("the gguf package is not installed (pip install gguf)") from None
    return gguf


def _qtype_enum(qtype: str) -> Any:
    gguf = _gguf_module()
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
    gguf = _gguf_module()
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


def _check_makeable(qtype: str) -> Any:
    t = _qtype_enum(qtype)
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


def _engine(qtype: str, device: str | None) -> tuple[str, str]:
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
    'auto' (see `_engine`). Large tensors go in row chunks so temporary fp32 copies stay bounded."""
    import numpy as np
    import torch

    gguf = _gguf_module()
    t = _qtype_enum(qtype)
    block, type_size = gguf.GGML_QUANT_SIZES[t]
    if w.shape[-1] % block:
        raise EvalkitError(f"row length {w.shape[-1]} is not a multiple of the {t.name} block size {block}")
    rows = w.reshape(-1, w.shape[-1])
    out_shape = (*w.shape[:-1], w.shape[-1] // block * type_size)
    if t.name == "BF16":
        return rows.to(torch.bfloat16).contiguous().view(torch.uint8).cpu().numpy().reshape(out_shape)
    if engine == "auto":
        engine, dev = _engine(t.name, device)
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


# ---------------------------------------------------------------------------------------------------------------
# The bf16 transformer on disk: files and headers, read without loading weights.


def transformer_files(model_path: str | os.PathLike[str]) -> list[Path]:
    """The transformer's .safetensors files (sharded or not), in a stable order."""
    d = Path(model_path) / "transformer"
    if not d.is_dir():
        raise EvalkitError(f"{model_path}: no transformer/ folder (expected a diffusers Flux pipeline directory)")
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise EvalkitError(f"{d}: no .safetensors weights (GGUF conversion reads the bf16 safetensors)")
    return files


def _read_safetensors_header(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 * 1024 * 1024:
                raise ValueError(f"header length {n} is implausible")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as e:
        raise EvalkitError(f"{path}: not a readable safetensors file ({e})") from None
    header.pop("__metadata__", None)
    return header


def transformer_shapes(model_path: str | os.PathLike[str]) -> dict[str, tuple[tuple[int, ...], str]]:
    """{tensor name: (shape, safetensors dtype)} of the bf16 transformer, from the file headers only."""
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for f in transformer_files(model_path):
        for name, info in _read_safetensors_header(f).items():
            out[name] = (tuple(info["shape"]), info["dtype"])
    return out


def _source_key(files: list[Path], qtype: str, gguf_version: str) -> str:
    h = hashlib.sha256()
    h.update(f"{CONVERTER_VERSION}|{gguf_version}|{qtype}".encode())
    for f in files:
        size = f.stat().st_size
        h.update(f"|{f.name}|{size}|".encode())
        h.update(json.dumps(_read_safetensors_header(f), sort_keys=True).encode())
        # A few evenly spaced chunks: catches weights rewritten in place with identical shapes, for ~0.5 MB read.
        with open(f, "rb") as fh:
            for i in range(_SAMPLE_CHUNKS):
                fh.seek(max(0, (size - _SAMPLE_BYTES) * i // max(1, _SAMPLE_CHUNKS - 1)))
                h.update(fh.read(_SAMPLE_BYTES))
    return h.hexdigest()[:16]


def _gguf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        from evalkit.libraries import LIBRARIES

        return version(LIBRARIES["gguf"].pip_name)
    except PackageNotFoundError:  # pragma: no cover - imported but not installed as a distribution
        return "unknown"


def tensor_qtype(name: str, shape: tuple[int, ...], qtype: str) -> str:
    """The GGUF type a transformer tensor gets under `qtype` (city96's convention, see the module docstring)."""
    gguf = _gguf_module()
    block = gguf.GGML_QUANT_SIZES[_qtype_enum(qtype)][0]
    n = 1
    for s in shape:
        n *= s
    if len(shape) != 2 or not name.endswith(".weight") or n <= SMALL_TENSOR_LIMIT:
        return "F32"
    if shape[-1] % block == 0:
        return _qtype_enum(qtype).name
    return "BF16"


# ---------------------------------------------------------------------------------------------------------------
# Making the file.


def gguf_cache_path(model_path: str, qtype: str, cache_dir: str | os.PathLike[str]) -> Path:
    """Where `ensure_gguf` keeps (or would keep) the file for this transformer and type."""
    t = _qtype_enum(qtype).name
    key = _source_key(transformer_files(model_path), t, _gguf_version())
    return Path(cache_dir) / "gguf" / f"flux-transformer-{t}-{key}.gguf"


def ensure_gguf(model_path: str, qtype: str, cache_dir: str | os.PathLike[str], device: str | None = None) -> Path:
    """The GGUF file of `<model_path>/transformer` quantized to `qtype`, made once and cached under
    `<cache_dir>/gguf/`. Types: see `makeable_qtypes()`; Q2_K is evalkit's own simple min/max quantizer (see
    the module docstring). Raises EvalkitError for a type nothing here can make."""
    t = _check_makeable(qtype)
    target = gguf_cache_path(model_path, t.name, cache_dir)
    if target.exists():
        return target
    with file_lock(target):
        if target.exists():  # another process finished it while we waited
            return target
        convert_transformer(model_path, t.name, target, device=device)
    return target


def convert_transformer(model_path: str, qtype: str, out: str | os.PathLike[str], device: str | None = None) -> dict[str, Any]:
    """Write the GGUF file (atomically) and return stats (also saved as `<out>.json`): seconds, parameters,
    tensor types, engine."""
    import numpy as np
    from safetensors import safe_open

    gguf = _gguf_module()
    t = _check_makeable(qtype)
    out = Path(out)
    files = transformer_files(model_path)
    plan: list[tuple[Path, str, tuple[int, ...], str]] = []  # file, name, shape, gguf type
    for f in files:
        for name, info in sorted(_read_safetensors_header(f).items()):
            shape = tuple(info["shape"])
            plan.append((f, name, shape, tensor_qtype(name, shape, t.name)))

    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    writer = gguf.GGUFWriter(tmp, arch="flux")
    try:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_string("evalkit.converter", CONVERTER_VERSION)
        writer.add_string("evalkit.qtype", t.name)
        writer.add_string("evalkit.key_names", "diffusers")
        for _, name, shape, tt in plan:
            if tt == "F32":
                writer.add_tensor_info(name, shape, np.dtype(np.float32), 4 * int(np.prod(shape)))
            else:
                raw = gguf.GGMLQuantizationType[tt]
                bshape = gguf.quant_shape_to_byte_shape(shape, raw)
                writer.add_tensor_info(name, bshape, np.dtype(np.uint8), int(np.prod(bshape)), raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        counts: Counter[str] = Counter()
        n_params = 0
        handles: dict[Path, Any] = {}
        with contextlib.ExitStack() as stack:
            for f in files:
                handles[f] = stack.enter_context(safe_open(str(f), framework="pt", device="cpu"))
            for f, name, shape, tt in plan:
                w = handles[f].get_tensor(name)
                if tt == "F32":
                    data = w.float().numpy()
                else:
                    data = quantize_tensor(w, tt, device=device)
                writer.write_tensor_data(data)
                counts[tt] += 1
                n_params += w.numel()
                del w, data
        assert writer.fout is not None
        fh = writer.fout[0]
        fh.flush()
        os.fsync(fh.fileno())
        writer.close()
        os.replace(tmp, out)
        dfd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)  # the rename itself survives a crash
        finally:
            os.close(dfd)
    except BaseException:
        writer.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    stats = {"seconds": round(time.perf_counter() - t0, 3), "params": n_params, "tensor_types": dict(counts),
             "qtype": t.name, "engine": "/".join(_engine(t.name, device)), "converter": CONVERTER_VERSION,
             "gguf_version": _gguf_version(), "source": str(Path(model_path).resolve() / "transformer"),
             "file_bytes": out.stat().st_size}
    from evalkit.io import atomic_write_json

    # Optional record for the run's notes (conversion time, engine); the .gguf alone is the cache entry.
    atomic_write_json(conversion_record_path(out), stats)
    return stats


def conversion_record_path(gguf_path: str | os.PathLike[str]) -> Path:
    """The JSON written next to a made file: seconds, params, tensor types, engine, versions."""
    p = Path(gguf_path)
    return p.with_name(p.name + ".json")


# ---------------------------------------------------------------------------------------------------------------
# Checking and loading a file.


_BFL_MARKERS = ("double_blocks.", "single_blocks.", "model.diffusion_model.")


def _read_gguf(path: Path) -> Any:
    gguf = _gguf_module()
    if not path.is_file():
        raise EvalkitError(f"{path}: GGUF file not found")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise EvalkitError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes; {size} bytes)")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # struct/numpy/ValueError from a cut or damaged header: name the file, not the stack
        raise EvalkitError(f"{path}: truncated or damaged GGUF file ({size} bytes; an interrupted download or copy?): "
                           f"{type(e).__name__}: {e}") from None
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size or t.data.nbytes != t.n_bytes:
            raise EvalkitError(f"{path}: truncated GGUF file: tensor {t.name!r} needs bytes up to {end} but the file "
                               f"has {size} bytes (an interrupted download or copy?)")
    return reader


def _logical_shape(t: Any) -> tuple[int, ...]:
    # GGUF stores dims fastest-first (ggml's ne0 = row length); torch shapes are the reverse.
    return tuple(int(x) for x in reversed(t.shape.tolist()))


def _expected_from_bfl(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]] | None:
    """Map original (BFL / city96) key names to diffusers names via diffusers' own converter, on meta tensors."""
    import torch

    try:
        from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

        sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
        conv = convert_flux_transformer_checkpoint_to_diffusers(sd)
        return {k: tuple(v.shape) for k, v in conv.items()}
    except Exception:
        return None


def validate_gguf(path: str | os.PathLike[str], model_path: str) -> dict[str, Any]:
    """Open a GGUF file and check it against `<model_path>/transformer`: tensor names and shapes, and that every
    tensor type is one diffusers can load. Raises EvalkitError naming the file and the first bad tensor.
    Returns {path, file_bytes, n_tensors, tensor_types: {type: count}, key_names: 'diffusers'|'original'}."""
    path = Path(path)
    reader = _read_gguf(path)
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES

    supported = {t.name for t in SUPPORTED_GGUF_QUANT_TYPES} | {"F32", "F16"}
    found: dict[str, tuple[int, ...]] = {}
    types: Counter[str] = Counter()
    for t in reader.tensors:
        tname = t.tensor_type.name
        if tname not in supported:
            raise EvalkitError(f"{path}: tensor {t.name!r} has GGUF type {tname}, which diffusers cannot load "
                               f"(supported: {', '.join(sorted(supported))})")
        found[t.name] = _logical_shape(t)
        types[tname] += 1
    if not found:
        raise EvalkitError(f"{path}: GGUF file holds no tensors")

    expected = {k: v[0] for k, v in transformer_shapes(model_path).items()}
    key_names = "diffusers"
    if not set(found) & set(expected) and any(k.startswith(_BFL_MARKERS) for k in found):
        key_names = "original"
        converted = _expected_from_bfl(found)
        if converted is None:
            raise EvalkitError(f"{path}: tensors use original Flux key names but could not be mapped to the "
                               f"transformer in {model_path} (a different architecture?)")
        found = converted
    problems: list[str] = []
    for name, shape in expected.items():
        if name not in found:
            problems.append(f"tensor {name!r} missing from the GGUF file (expected shape {list(shape)})")
        elif found[name] != shape:
            problems.append(f"tensor {name!r}: expected shape {list(shape)}, found {list(found[name])}")
    problems += [f"tensor {name!r} in the GGUF file is not in the model" for name in found if name not in expected]
    if problems:
        raise EvalkitError(f"{path}: does not match the transformer of {model_path}: {problems[0]} "
                           f"({len(problems)} mismatch{'es' if len(problems) != 1 else ''} in all; was it made "
                           f"for another model?)")
    return {"path": str(path), "file_bytes": path.stat().st_size, "n_tensors": len(reader.tensors),
            "tensor_types": dict(sorted(types.items())), "key_names": key_names}


def load_gguf_transformer(gguf_path: str | os.PathLike[str], model_path: str, compute_dtype: "torch.dtype") -> Any:
    """`FluxTransformer2DModel` with GGUF-quantized Linear layers, from a checked file and the local config in
    `<model_path>/transformer` (no hub call)."""
    validate_gguf(gguf_path, model_path)
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig

    return FluxTransformer2DModel.from_single_file(
        str(gguf_path), config=str(model_path), subfolder="transformer", local_files_only=True,
        quantization_config=GGUFQuantizationConfig(compute_dtype=compute_dtype), dtype=compute_dtype,
    )


def gguf_quantized_layer_counts(model: Any) -> dict[str, Any]:
    """Proof of quantization: GGUFLinear modules, other Linear modules, and GGUF parameters per quant type."""
    import torch
    from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter

    linear = other = 0
    by_type: Counter[str] = Counter()
    quantized_values = 0
    for m in model.modules():
        if isinstance(m, GGUFLinear):
            linear += 1
        elif isinstance(m, torch.nn.Linear):
            other += 1
    for p in model.parameters():
        if isinstance(p, GGUFParameter):
            name = getattr(p.quant_type, "name", str(p.quant_type))
            by_type[name] += 1
            quantized_values += int(torch.Size(p.quant_shape).numel())
    return {"gguf_linear": linear, "other_linear": other, "gguf_params_by_type": dict(sorted(by_type.items())),
            "gguf_param_values": quantized_values}

"""GGUF for a pipeline's denoiser, both ways: make (and cache) a GGUF quantization of the bf16 component, or
check and load a user's pre-quantized file.

Making a file (`ensure_gguf`):
- Tensors keep diffusers' own key names, so the model class's `from_single_file` needs no key conversion (checked
  per family by its tests).
- What is quantized follows city96's Flux GGUF convention: 2-D Linear weights whose row length is a multiple of the
  type's block size get `qtype`; 1-D tensors (biases, norm scales) and tiny tensors (<= 1024 values) are F32; other
  2-D weights (row length not a multiple of the block, e.g. `x_embedder.weight` [3072, 64] under Q2_K) stay BF16.
  Why F32 and not BF16 for 1-D tensors: diffusers' GGUF loader wraps every non-F32/F16 tensor in a GGUFParameter
  (raw bytes) and only knows how to dequantize those inside GGUFLinear; a BF16 bias or norm scale would load as bytes.
- Quantizers (evalkit/quantizers/gguf/quant.py): Q8_0, Q4_0, Q4_1 have torch re-implementations of `gguf.quants`' numpy code (bit-exact, tested) that
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
from evalkit.quantizers.gguf.quant import (  # noqa: F401 (quantizers re-exported: gguf.quantize_tensor etc.)
    TORCH_QTYPES, check_makeable, quant_engine, gguf_module, qtype_enum, makeable_qtypes, quantize_q2_k, quantize_q4_0,
    quantize_q4_1, quantize_q8_0, quantize_tensor)
from evalkit.io import file_lock

if TYPE_CHECKING:  # torch and diffusers are imported lazily: the CLI must stay fast
    import torch

# Bump when the bytes written for the same input would change (quantizer, tensor-type policy, metadata).
CONVERTER_VERSION = "evalkit-gguf-v2"  # v2: true division on CUDA (v1 bytes could differ from gguf in the last bit)

# city96: tensors this small stay F32 (not worth quantizing; keeps odd small weights exact).
SMALL_TENSOR_LIMIT = 1024
_SAMPLE_CHUNKS, _SAMPLE_BYTES = 8, 1 << 16


# ---------------------------------------------------------------------------------------------------------------
# The bf16 component on disk: files and headers, read without loading weights.


def component_files(model_path: str | os.PathLike[str], component: str) -> list[Path]:
    """A component's .safetensors files (sharded or not), in a stable order."""
    d = Path(model_path) / component
    if not d.is_dir():
        raise EvalkitError(f"{model_path}: no {component}/ folder (expected a diffusers pipeline directory)")
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


def component_shapes(model_path: str | os.PathLike[str], component: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """{tensor name: (shape, safetensors dtype)} of a bf16 component, from the file headers only."""
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for f in component_files(model_path, component):
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
        return version("gguf")  # the package LIBRARY names (evalkit/quantizers/gguf/__init__.py imports this module)
    except PackageNotFoundError:  # pragma: no cover - imported but not installed as a distribution
        return "unknown"


def tensor_qtype(name: str, shape: tuple[int, ...], qtype: str) -> str:
    """The GGUF type a tensor gets under `qtype` (city96's convention, see the module docstring)."""
    gguf = gguf_module()
    block = gguf.GGML_QUANT_SIZES[qtype_enum(qtype)][0]
    n = 1
    for s in shape:
        n *= s
    if len(shape) != 2 or not name.endswith(".weight") or n <= SMALL_TENSOR_LIMIT:
        return "F32"
    if shape[-1] % block == 0:
        return qtype_enum(qtype).name
    return "BF16"


# ---------------------------------------------------------------------------------------------------------------
# Making the file.


def gguf_cache_path(model_path: str, qtype: str, cache_dir: str | os.PathLike[str], component: str,
                    arch: str) -> Path:
    """Where `ensure_gguf` keeps (or would keep) the file for this component and type."""
    t = qtype_enum(qtype).name
    key = _source_key(component_files(model_path, component), t, _gguf_version())
    return Path(cache_dir) / "gguf" / f"{arch}-{component}-{t}-{key}.gguf"


def ensure_gguf(model_path: str, qtype: str, cache_dir: str | os.PathLike[str], component: str, arch: str,
                device: str | None = None) -> Path:
    """The GGUF file of `<model_path>/<component>` quantized to `qtype`, made once and cached under
    `<cache_dir>/gguf/`. Types: see `makeable_qtypes()`; Q2_K is evalkit's own simple min/max quantizer (see
    the module docstring). Raises EvalkitError for a type nothing here can make."""
    t = check_makeable(qtype)
    target = gguf_cache_path(model_path, t.name, cache_dir, component, arch)
    if target.exists():
        return target
    with file_lock(target):
        if target.exists():  # another process finished it while we waited
            return target
        convert_component(model_path, t.name, target, component, arch, device=device)
    return target


# What convert_component writes, in file order: (source file, tensor name, shape, GGUF type).
_Plan = list[tuple[Path, str, tuple[int, ...], str]]


def convert_component(model_path: str, qtype: str, out: str | os.PathLike[str], component: str, arch: str,
                      device: str | None = None) -> dict[str, Any]:
    """Write the GGUF file (atomically) and return stats (also saved as `<out>.json`): seconds, parameters,
    tensor types, engine. `arch` is the GGUF architecture name written into the file (city96: "flux")."""
    gguf = gguf_module()
    t = check_makeable(qtype)
    out = Path(out)
    files = component_files(model_path, component)
    plan: _Plan = []
    for f in files:
        for name, info in sorted(_read_safetensors_header(f).items()):
            shape = tuple(info["shape"])
            plan.append((f, name, shape, tensor_qtype(name, shape, t.name)))

    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    _check_room(out.parent, _data_bytes(plan), f"{component} as GGUF {t.name}")
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    writer = gguf.GGUFWriter(tmp, arch=arch)
    try:
        _write_header(writer, plan, t.name)
        counts, n_params = _write_tensors(writer, files, plan, device)
        _replace_durably(writer, tmp, out)
    except BaseException:
        writer.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    stats = {"seconds": round(time.perf_counter() - t0, 3), "params": n_params, "tensor_types": dict(counts),
             "qtype": t.name, "engine": "/".join(quant_engine(t.name, device)), "converter": CONVERTER_VERSION,
             "gguf_version": _gguf_version(), "source": str(Path(model_path).resolve() / component),
             "file_bytes": out.stat().st_size}
    from evalkit.io import atomic_write_json

    # Optional record for the run's notes (conversion time, engine); the .gguf alone is the cache entry.
    atomic_write_json(conversion_record_path(out), stats)
    return stats


def _data_bytes(plan: _Plan) -> int:
    """The tensor data the file will hold (its header is a few MB more), known before anything is written."""
    import numpy as np

    gguf = gguf_module()
    total = 0
    for _, _, shape, tt in plan:
        n = int(np.prod(shape))
        if tt == "F32":
            total += 4 * n
        else:
            total += int(np.prod(gguf.quant_shape_to_byte_shape(shape, gguf.GGMLQuantizationType[tt])))
    return total


def _check_room(folder: Path, needed: int, what: str) -> None:
    """Refuse a conversion the disk cannot hold, naming the folder, before minutes of quantizing end in gguf's
    "N requested and M written" (Qwen-Image's 11 GiB transformer file beside its 54 GiB build on a 64 GiB disk)."""
    import shutil

    free = shutil.disk_usage(folder).free
    if free < needed:
        raise EvalkitError(f"{what}: the file needs {needed / 2**30:.2f} GiB and {folder} has {free / 2**30:.2f} GiB "
                           "free; free space there, set EVALKIT_CACHE to a larger disk, or pass a GGUF file with "
                           "--gguf-file")


def _write_header(writer: Any, plan: _Plan, qtype: str) -> None:
    """The file's header, metadata and tensor table. GGUF puts every tensor's name, shape and type before any data,
    so the whole plan is written here and the tensors are then streamed in its order (_write_tensors)."""
    import numpy as np

    gguf = gguf_module()
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_string("evalkit.converter", CONVERTER_VERSION)
    writer.add_string("evalkit.qtype", qtype)
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


def _write_tensors(writer: Any, files: list[Path], plan: _Plan, device: str | None) -> tuple[Counter[str], int]:
    """Each tensor of the plan read, converted to its type and written, one at a time (memory holds one tensor, not
    the model); returns the count of tensors per type and the number of parameters."""
    from safetensors import safe_open

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
    return counts, n_params


def _replace_durably(writer: Any, tmp: Path, out: Path) -> None:
    """The written temp file synced to disk, closed and renamed to `out`, the rename synced too: a crash leaves
    either no file at `out` or the whole one, never a torn cache entry."""
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


def conversion_record_path(gguf_path: str | os.PathLike[str]) -> Path:
    """The JSON written next to a made file: seconds, params, tensor types, engine, versions."""
    p = Path(gguf_path)
    return p.with_name(p.name + ".json")


# ---------------------------------------------------------------------------------------------------------------
# Checking and loading a file.


def read_gguf(path: Path) -> Any:
    gguf = gguf_module()
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


def _expected_from_original(shapes: dict[str, tuple[int, ...]], converter: str | None) -> dict[str, tuple[int, ...]] | None:
    """Map original (e.g. BFL / city96) key names to diffusers names via diffusers' own converter (a function of
    diffusers.loaders.single_file_utils the family names), on meta tensors."""
    import torch

    if not converter:
        return None
    try:
        from diffusers.loaders import single_file_utils

        sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
        conv = getattr(single_file_utils, converter)(sd)
        return {k: tuple(v.shape) for k, v in conv.items()}
    except Exception:
        return None


def validate_gguf(path: str | os.PathLike[str], model_path: str, component: str,
                  original_markers: tuple[str, ...] = (), original_converter: str | None = None) -> dict[str, Any]:
    """Open a GGUF file and check it against `<model_path>/<component>`: tensor names and shapes, and that every
    tensor type is one diffusers can load. Raises EvalkitError naming the file and the first bad tensor.
    Returns {path, file_bytes, n_tensors, tensor_types: {type: count}, key_names: 'diffusers'|'original'}."""
    path = Path(path)
    reader = read_gguf(path)
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

    expected = {k: v[0] for k, v in component_shapes(model_path, component).items()}
    key_names = "diffusers"
    # An original-layout file may share many key names with diffusers' (Z-Image's: all but its embedders, final
    # layer and fused attention), so a marker and a key set other than the model's decide, not "no key in common".
    if set(found) != set(expected) and original_markers and any(k.startswith(original_markers) for k in found):
        key_names = "original"
        converted = _expected_from_original(found, original_converter)
        if converted is None:
            raise EvalkitError(f"{path}: tensors use the model's original key names but could not be mapped to the "
                               f"{component} in {model_path} (a different architecture?)")
        found = converted
    problems: list[str] = []
    for name, shape in expected.items():
        if name not in found:
            problems.append(f"tensor {name!r} missing from the GGUF file (expected shape {list(shape)})")
        elif found[name] != shape:
            problems.append(f"tensor {name!r}: expected shape {list(shape)}, found {list(found[name])}")
    problems += [f"tensor {name!r} in the GGUF file is not in the model" for name in found if name not in expected]
    if problems:
        raise EvalkitError(f"{path}: does not match the {component} of {model_path}: {problems[0]} "
                           f"({len(problems)} mismatch{'es' if len(problems) != 1 else ''} in all; was it made "
                           f"for another model?)")
    return {"path": str(path), "file_bytes": path.stat().st_size, "n_tensors": len(reader.tensors),
            "tensor_types": dict(sorted(types.items())), "key_names": key_names}


def load_gguf_component(gguf_path: str | os.PathLike[str], model_path: str, component: str,
                        compute_dtype: "torch.dtype", original_markers: tuple[str, ...] = (),
                        original_converter: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The component's model class (named by `<model_path>/<component>/config.json`) with GGUF-quantized Linear
    layers, from a file checked by `validate_gguf` (whose summary is returned too) and that local config (no hub
    call)."""
    summary = validate_gguf(gguf_path, model_path, component, original_markers, original_converter)
    import diffusers
    from diffusers import GGUFQuantizationConfig

    cls_name = _component_class(model_path, component)
    cls = getattr(diffusers, cls_name, None)
    if cls is None or not hasattr(cls, "from_single_file"):
        raise EvalkitError(f"{model_path}/{component}: {cls_name} cannot load from a single GGUF file in this "
                           f"diffusers ({diffusers.__version__})")
    model = cls.from_single_file(
        str(gguf_path), config=str(model_path), subfolder=component, local_files_only=True,
        quantization_config=GGUFQuantizationConfig(compute_dtype=compute_dtype), dtype=compute_dtype,
    )
    return model, summary


def _component_class(model_path: str, component: str) -> str:
    cfg = Path(model_path) / component / "config.json"
    try:
        name = json.loads(cfg.read_text(encoding="utf-8"))["_class_name"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EvalkitError(f"{cfg}: cannot read the component's class name ({e})") from None
    if not isinstance(name, str) or not name.isidentifier():
        raise EvalkitError(f"{cfg}: _class_name {name!r} is not a class name")
    return name


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

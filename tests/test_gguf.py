"""GGUF both ways on the tiny model: files evalkit makes load as real GGUF layers, with error ordered by bits;
evalkit's quantizers match gguf's bytes; the cache converts once; bad files give one clear error."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

from evalkit.errors import EvalkitError  # noqa: E402
from evalkit.io import read_json  # noqa: E402
from evalkit.families.flux1 import FAMILY  # noqa: E402
from evalkit.quantizers.gguf import convert as eg  # noqa: E402

# How FLUX.1's GGUF files with the original (BFL / city96) key names are recognised and mapped.
FLUX_ORIGINAL = (FAMILY.gguf.original_key_markers, FAMILY.gguf.original_converter)

# Bits per weight go down along this list, so errors must go up.
MADE = ("Q8_0", "Q4_1", "Q4_0", "Q2_K")


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf-cache")


@pytest.fixture(scope="module")
def made(tiny_model_path: Path, gguf_dir: Path) -> dict[str, Path]:
    return {q: eg.ensure_gguf(str(tiny_model_path), q, gguf_dir, "transformer", "flux") for q in MADE}


@pytest.fixture(scope="module")
def reference(tiny_model_path: Path) -> tuple[Any, dict[str, Any], Any]:
    """The bf16 transformer, its state dict, one fixed input and its output."""
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel.from_pretrained(str(tiny_model_path), subfolder="transformer", dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    n_img, n_txt = 64, 8
    inputs = dict(
        hidden_states=torch.randn(1, n_img, 16, generator=g).bfloat16(),
        encoder_hidden_states=torch.randn(1, n_txt, 64, generator=g).bfloat16(),
        pooled_projections=torch.randn(1, 64, generator=g).bfloat16(),
        timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
        img_ids=torch.zeros(n_img, 3), txt_ids=torch.zeros(n_txt, 3), return_dict=False,
    )
    with torch.no_grad():
        out = model(**inputs)[0].float()
    return inputs, {k: v.float() for k, v in model.state_dict().items()}, out


@pytest.fixture(scope="module")
def loaded(made: dict[str, Path], tiny_model_path: Path, reference: tuple) -> dict[str, dict[str, Any]]:
    """Each made file loaded through load_gguf_transformer with every socket connect refused (proves no hub call);
    per type: layer counts, weight error and output error relative to bf16."""
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    inputs, ref_sd, ref_out = reference
    results: dict[str, dict[str, Any]] = {}
    with pytest.MonkeyPatch.context() as mp:
        def refuse(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("GGUF loading tried to use the network")

        mp.setattr(socket.socket, "connect", refuse)
        for q, path in made.items():
            model = eg.load_gguf_component(path, str(tiny_model_path), "transformer", torch.bfloat16, *FLUX_ORIGINAL)[0]
            num = den = 0.0
            for name, p in model.named_parameters():
                if p.ndim == 2 and hasattr(p, "quant_type"):
                    w = dequantize_gguf_tensor(p).float()
                    num += float((w - ref_sd[name]).pow(2).sum())
                    den += float(ref_sd[name].pow(2).sum())
            with torch.no_grad():
                out = model(**inputs)[0].float()
            results[q] = {
                "counts": eg.gguf_quantized_layer_counts(model),
                "weight_err": (num / den) ** 0.5,
                "out_err": float((out - ref_out).norm() / ref_out.norm()),
                "dtypes": {p.dtype for p in model.parameters() if not hasattr(p, "quant_type")},
            }
    return results


# ---------------------------------------------------------------------------------------------------------------
# Made files load, are really quantized, and are close to bf16 in order of bits.


@pytest.mark.parametrize("qtype", MADE)
def test_made_file_loads_as_gguf_layers(qtype: str, loaded: dict, tiny_model_path: Path, made: dict) -> None:
    from diffusers import FluxTransformer2DModel

    counts = loaded[qtype]["counts"]
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in
                   FluxTransformer2DModel.from_config(FluxTransformer2DModel.load_config(
                       str(tiny_model_path), subfolder="transformer")).modules())
    # Every Linear became a GGUFLinear; most hold `qtype`, the rest BF16 (rows not a multiple of the block).
    assert counts["gguf_linear"] == n_linear and counts["other_linear"] == 0
    expected = {eg.tensor_qtype(n, s, qtype) for n, (s, _) in eg.component_shapes(tiny_model_path, "transformer").items()}
    assert counts["gguf_params_by_type"][qtype] >= n_linear - 3
    assert set(counts["gguf_params_by_type"]) <= expected - {"F32"}
    # Unquantized tensors (stored F32 in the file) come back in the compute dtype.
    assert loaded[qtype]["dtypes"] == {torch.bfloat16}
    summary = eg.validate_gguf(made[qtype], str(tiny_model_path), "transformer", *FLUX_ORIGINAL)
    assert summary["tensor_types"][qtype] == counts["gguf_params_by_type"][qtype]
    assert summary["n_tensors"] == len(eg.component_shapes(tiny_model_path, "transformer"))
    assert summary["file_bytes"] == made[qtype].stat().st_size and summary["key_names"] == "diffusers"


def test_errors_are_ordered_by_bits(loaded: dict) -> None:
    w = {q: loaded[q]["weight_err"] for q in MADE}
    o = {q: loaded[q]["out_err"] for q in MADE}
    assert w["Q8_0"] < w["Q4_1"] < w["Q2_K"] and w["Q4_1"] < w["Q4_0"] * 1.05, w
    assert o["Q8_0"] < o["Q4_1"] < o["Q2_K"], o
    # Loose absolute bounds (random init weights): 8-bit ~0.4%, 4-bit ~6%, 2-bit ~25% relative error.
    assert w["Q8_0"] < 0.01 and w["Q4_1"] < 0.1 and w["Q2_K"] < 0.35, w
    assert o["Q8_0"] < 0.02 and o["Q4_1"] < 0.15 and o["Q2_K"] < 0.5, o


def test_tensor_type_policy() -> None:
    assert eg.tensor_qtype("transformer_blocks.0.ff.net.2.bias", (3072,), "Q8_0") == "F32"
    assert eg.tensor_qtype("norm.linear.weight", (16, 16), "Q8_0") == "F32"  # tiny: kept exact
    assert eg.tensor_qtype("x_embedder.weight", (3072, 64), "Q8_0") == "Q8_0"
    assert eg.tensor_qtype("x_embedder.weight", (3072, 64), "Q2_K") == "BF16"  # 64 is not a multiple of 256
    assert eg.tensor_qtype("x_embedder.weight", (3072, 48), "Q4_1") == "BF16"


# ---------------------------------------------------------------------------------------------------------------
# Quantizer parity with gguf.


def _awkward_rows() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 512)) * 0.02).astype(np.float32)
    x[0, :32] = 0  # all-zero block: d = 0
    x[1, :32] = 0.75  # constant block
    x[2, :16], x[2, 16:32] = 0.5, -0.5  # +/- ties for the largest magnitude
    x[3] *= 1e3  # large values
    x[4, :32] = np.arange(32) / 31 - 0.5  # values on exact rounding boundaries
    # Real weights are bf16: make every value bf16-representable, as conversion sees them.
    return torch.from_numpy(x).bfloat16().float().numpy()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1"])
def test_torch_quantizer_is_bit_exact_with_gguf(qtype: str, device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA (the full-size conversion path)")
    x = _awkward_rows()
    ref = gguf.quants.quantize(x, gguf.GGMLQuantizationType[qtype])
    mine = eg.quantize_tensor(torch.from_numpy(x), qtype, device=device, engine="torch")
    assert mine.dtype == np.uint8 and mine.shape == ref.shape
    assert np.array_equal(mine, ref)


def test_q2_k_layout_and_round_trip() -> None:
    """gguf cannot make Q2_K; evalkit's bytes must decode with gguf's (and diffusers') Q2_K decoder."""
    from diffusers.quantizers.gguf.utils import dequantize_blocks_Q2_K

    # Layout: a block with a known pattern of 2-bit codes (varying per position, so a wrong bit order or
    # sub-block order shows) must decode to the same pattern; scales only lose fp16 precision (d = step/15).
    step = 2.0 ** -6
    q = np.random.default_rng(1).integers(0, 4, 256)
    q[::16] = 0  # every sub-block spans 0..3, so each gets the same scale and no offset
    q[1::16] = 3
    block = (q * step).astype(np.float32).reshape(1, 256)
    b = eg.quantize_tensor(torch.from_numpy(block), "Q2_K", device="cpu")
    assert b.shape == (1, 84)
    y = gguf.quants.dequantize(b, gguf.GGMLQuantizationType.Q2_K)
    np.testing.assert_array_equal(np.round(y / y.max() * 3).ravel(), q)
    np.testing.assert_allclose(y, block, rtol=1e-3)

    x = _awkward_rows()
    b = eg.quantize_tensor(torch.from_numpy(x), "Q2_K", device="cpu")
    y = gguf.quants.dequantize(b, gguf.GGMLQuantizationType.Q2_K)
    y_diffusers = dequantize_blocks_Q2_K(torch.from_numpy(b).reshape(-1, 84), 256, 84).reshape(x.shape).float()
    # diffusers decodes in fp16: equal to fp16 precision of each row's scale.
    assert (np.abs(y_diffusers.numpy() - y) <= 2e-3 * np.abs(y).max(axis=1, keepdims=True)).all()
    assert np.abs(y[0, :32]).max() < 0.1  # a zero stretch stays near zero
    rel = np.linalg.norm(y[5:] - x[5:]) / np.linalg.norm(x[5:])
    assert rel < 0.3, rel  # Gaussian data: plain min/max gives ~0.33, the least-squares refits ~0.28


def test_q2_k_refinement_beats_plain_min_max() -> None:
    x = torch.randn(512, 256) * 0.02
    errs = []
    for iters in (0, 2):
        y = gguf.quants.dequantize(eg.quantize_q2_k(x, iters=iters).numpy(), gguf.GGMLQuantizationType.Q2_K)
        errs.append(float(np.linalg.norm(y - x.numpy()) / np.linalg.norm(x.numpy())))
    assert errs[1] < errs[0] * 0.92, errs


# ---------------------------------------------------------------------------------------------------------------
# Cache and atomicity.


def test_second_call_reuses_the_file(made: dict, tiny_model_path: Path, gguf_dir: Path) -> None:
    path = made["Q8_0"]
    mtime = path.stat().st_mtime_ns
    t0 = time.perf_counter()
    again = eg.ensure_gguf(str(tiny_model_path), "q8_0", gguf_dir, "transformer", "flux")  # type names are case-insensitive
    assert again == path and path.stat().st_mtime_ns == mtime
    assert time.perf_counter() - t0 < 1.0
    assert len({p.name for p in made.values()}) == len(MADE)  # the type is part of the key
    assert not [p for p in (gguf_dir / "gguf").iterdir() if p.name.endswith(".tmp")]
    record = read_json(eg.conversion_record_path(path))
    assert record["qtype"] == "Q8_0" and record["file_bytes"] == path.stat().st_size and record["params"] > 0


def test_interrupted_conversion_leaves_no_file(tiny_model_path: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = eg.quantize_tensor

    def dies_midway(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # like a kill between tensors
        return real(*args, **kwargs)

    monkeypatch.setattr(eg, "quantize_tensor", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        eg.ensure_gguf(str(tiny_model_path), "Q4_0", tmp_path, "transformer", "flux")
    assert not [p for p in (tmp_path / "gguf").iterdir() if not p.name.endswith(".lock")]  # no temp, no record
    monkeypatch.setattr(eg, "quantize_tensor", real)
    path = eg.ensure_gguf(str(tiny_model_path), "Q4_0", tmp_path, "transformer", "flux")
    assert eg.validate_gguf(path, str(tiny_model_path), "transformer", *FLUX_ORIGINAL)["tensor_types"]["Q4_0"] > 0


def test_a_disk_too_small_for_the_file_is_refused_before_quantizing(tiny_model_path: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The planned size is the file's data: one byte less free space than that is refused with the folder named,
    and nothing is quantized or left behind; with that much free, the conversion runs and the file holds it."""
    import shutil
    from collections import namedtuple

    plan = [(f, n, tuple(i["shape"]), eg.tensor_qtype(n, tuple(i["shape"]), "Q8_0"))
            for f in eg.component_files(str(tiny_model_path), "transformer")
            for n, i in sorted(eg._read_safetensors_header(f).items())]
    needed = eg._data_bytes(plan)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 * needed, 9 * needed, needed - 1))
    monkeypatch.setattr(eg, "quantize_tensor", lambda *a, **k: pytest.fail("quantized on a full disk"))
    with pytest.raises(EvalkitError, match=r"transformer as GGUF Q8_0: the file needs .* GiB and .*gguf has "):
        eg.ensure_gguf(str(tiny_model_path), "Q8_0", tmp_path, "transformer", "flux")
    assert not [p for p in (tmp_path / "gguf").iterdir() if not p.name.endswith(".lock")]
    monkeypatch.undo()
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 * needed, 9 * needed, needed))
    path = eg.ensure_gguf(str(tiny_model_path), "Q8_0", tmp_path, "transformer", "flux")
    assert needed < path.stat().st_size < needed + 4 * 2**20  # data plus header and alignment


# ---------------------------------------------------------------------------------------------------------------
# Bad input.


def test_type_gguf_cannot_make_says_use_a_file(tiny_model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(EvalkitError, match=r"Q4_K.*cannot make.*--gguf-file"):
        eg.ensure_gguf(str(tiny_model_path), "Q4_K", tmp_path, "transformer", "flux")
    with pytest.raises(EvalkitError, match=r"unknown GGUF type 'Q9_0'.*Did you mean"):
        eg.ensure_gguf(str(tiny_model_path), "Q9_0", tmp_path, "transformer", "flux")


def test_corrupt_file(tiny_model_path: Path, tmp_path: Path) -> None:
    bad = tmp_path / "random.gguf"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(EvalkitError, match=r"random\.gguf: not a GGUF file \(it does not start with the GGUF magic") as e:
        eg.load_gguf_component(bad, str(tiny_model_path), "transformer", torch.bfloat16, *FLUX_ORIGINAL)[0]
    assert "Traceback" not in str(e.value)
    with pytest.raises(EvalkitError, match="not found"):
        eg.validate_gguf(tmp_path / "missing.gguf", str(tiny_model_path), "transformer", *FLUX_ORIGINAL)


def test_truncated_file(made: dict, tiny_model_path: Path, tmp_path: Path) -> None:
    data = made["Q8_0"].read_bytes()
    cut = tmp_path / "half.gguf"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(EvalkitError, match=r"half\.gguf: truncated"):
        eg.load_gguf_component(cut, str(tiny_model_path), "transformer", torch.bfloat16, *FLUX_ORIGINAL)[0]
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(data[:100])  # cut inside the tensor table
    with pytest.raises(EvalkitError, match=r"header\.gguf: truncated or damaged GGUF file \(100 bytes"):
        eg.validate_gguf(header_only, str(tiny_model_path), "transformer", *FLUX_ORIGINAL)
    # Cut exactly at the end of the last tensor but one: the header parses, the explicit bounds check names it.
    reader = gguf.GGUFReader(made["Q8_0"])
    last = max(reader.tensors, key=lambda t: t.data_offset)
    del reader
    exact = tmp_path / "exact.gguf"
    exact.write_bytes(data[: int(last.data_offset) + 4])
    with pytest.raises(EvalkitError, match=rf"exact\.gguf: truncated.*{last.name!r}|exact\.gguf: truncated or damaged"):
        eg.validate_gguf(exact, str(tiny_model_path), "transformer", *FLUX_ORIGINAL)


def test_file_for_another_model(tiny_model_path: Path, tmp_path: Path) -> None:
    """A GGUF made from a transformer with a different width: the error names the first tensor, both shapes and
    the number of mismatches, before diffusers gets to raise its own."""
    from diffusers import FluxTransformer2DModel

    from evalkit.families.flux1 import TINY

    other = tmp_path / "other"
    torch.manual_seed(0)
    FluxTransformer2DModel(**{**TINY["transformer"], "attention_head_dim": 32}).save_pretrained(other / "transformer")
    path = eg.ensure_gguf(str(other), "Q8_0", tmp_path / "cache", "transformer", "flux")
    with pytest.raises(EvalkitError) as e:
        eg.load_gguf_component(path, str(tiny_model_path), "transformer", torch.bfloat16, *FLUX_ORIGINAL)[0]
    msg = str(e.value)
    assert str(path) in msg and "does not match the transformer" in msg
    assert "expected shape [256" in msg and "found [128" in msg
    assert "mismatches in all" in msg


def test_file_missing_a_tensor(tiny_model_path: Path, tmp_path: Path) -> None:
    shapes = eg.component_shapes(tiny_model_path, "transformer")
    dropped = sorted(shapes)[0]
    w = gguf.GGUFWriter(tmp_path / "partial.gguf", arch="flux")
    for name, (shape, _) in sorted(shapes.items()):
        if name != dropped:
            w.add_tensor(name, np.zeros(shape, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(EvalkitError, match=rf"partial\.gguf: .*{dropped!r} missing .*\(1 mismatch in all"):
        eg.validate_gguf(tmp_path / "partial.gguf", str(tiny_model_path), "transformer", *FLUX_ORIGINAL)

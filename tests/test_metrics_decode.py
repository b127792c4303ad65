"""#13.2: every image kind compare-images may be handed decodes to the right 8-bit RGB, or is refused with the
reason. Each file is built with PIL (or by hand), and its pixels are checked against a conversion done here."""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evalkit.errors import EvalkitError
from evalkit.score.decode import MAX_PIXELS
from evalkit.score.images import decode_file

RNG = np.random.default_rng(0)


def _rgb(h: int = 24, w: int = 32) -> np.ndarray:
    return RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _dec(path: Path) -> np.ndarray:
    d = decode_file(path)
    assert d.array is not None, d.error
    assert d.array.dtype == np.uint8 and d.array.ndim == 3 and d.array.shape[2] == 3
    return d.array


def _png_by_hand(path: Path, arr: np.ndarray, colour_type: int, depth: int = 16, chunks: bytes = b"") -> Path:
    """A PNG written without PIL (PIL cannot write 16-bit colour): filter 0 rows, one IDAT."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2" if depth == 16 else np.uint8).tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunks + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def _scale16(a: np.ndarray) -> np.ndarray:
    return np.array([[int(v / 257 + 0.5) for v in row] for row in a.reshape(-1, a.shape[-1] if a.ndim == 3 else 1)],
                    dtype=np.uint8).reshape(a.shape)


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("WEBP", "webp"), ("TIFF", "tif"), ("BMP", "bmp")])
def test_8bit_rgb_lossless_formats_are_exact(tmp_path, fmt, ext):
    a = _rgb()
    p = tmp_path / f"x.{ext}"
    Image.fromarray(a).save(p, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    assert np.array_equal(_dec(p), a)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_gray_is_scaled_not_clipped(tmp_path, fmt):
    g = RNG.integers(0, 65536, size=(20, 30), dtype=np.uint16)
    g[0, :4] = [0, 257, 65535, 128 * 257 + 128]
    p = tmp_path / f"g.{fmt.lower()}"
    Image.fromarray(g).save(p, fmt)
    out = _dec(p)
    want = _scale16(g)
    assert np.array_equal(out[..., 0], want) and np.array_equal(out[..., 2], want)
    assert list(out[0, :3, 0]) == [0, 1, 255]  # clipping would give 255 for 257 (and truncation 1 -> 0 elsewhere)


@pytest.mark.parametrize("colour_type,channels", [(2, 3), (6, 4)])
def test_16bit_colour_png_is_scaled_with_pyspng(tmp_path, colour_type, channels):
    pytest.importorskip("pyspng")
    a = RNG.integers(0, 65536, size=(12, 16, channels), dtype=np.uint16)
    a[..., -1] = 65535 if channels in (2, 4) else a[..., -1]  # opaque alpha: the colour is the whole story
    p = _png_by_hand(tmp_path / "c.png", a, colour_type)
    out = _dec(p)
    want = _scale16(a)
    assert np.array_equal(out, want[..., :3])


def test_16bit_gray_alpha_png_is_refused(tmp_path):
    p = _png_by_hand(tmp_path / "ga.png", RNG.integers(0, 65536, size=(8, 8, 2), dtype=np.uint16), 4)
    d = decode_file(p)
    assert d.array is None and d.error.startswith("refused: 16-bit gray+alpha")


def test_16bit_colour_png_is_refused_without_pyspng(tmp_path, monkeypatch):
    a = RNG.integers(0, 65536, size=(8, 8, 3), dtype=np.uint16)
    p = _png_by_hand(tmp_path / "c.png", a, 2)
    monkeypatch.setitem(sys.modules, "pyspng", None)
    d = decode_file(p)
    assert d.array is None and "16-bit colour PNG" in d.error and "truncate" in d.error


def test_palette_and_1bit_are_expanded(tmp_path):
    a = _rgb()
    pim = Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pim.save(tmp_path / "p.png")
    pal = np.array(pim.getpalette()[:16 * 3], dtype=np.uint8).reshape(-1, 3)
    assert np.array_equal(_dec(tmp_path / "p.png"), pal[np.asarray(pim)])
    bits = RNG.integers(0, 2, size=(10, 12)).astype(bool)
    Image.fromarray(bits).save(tmp_path / "b.png")
    assert np.array_equal(_dec(tmp_path / "b.png"), np.repeat((bits * 255).astype(np.uint8)[..., None], 3, axis=2))


def test_alpha_opaque_is_dropped_and_transparency_composited_on_white(tmp_path):
    a = _rgb()
    opaque = np.dstack([a, np.full(a.shape[:2], 255, np.uint8)])
    Image.fromarray(opaque, "RGBA").save(tmp_path / "o.png")
    assert np.array_equal(_dec(tmp_path / "o.png"), a)
    alpha = RNG.integers(0, 256, size=a.shape[:2], dtype=np.uint8)
    Image.fromarray(np.dstack([a, alpha]), "RGBA").save(tmp_path / "t.png")
    Image.fromarray(np.dstack([a, alpha]), "RGBA").save(tmp_path / "t.webp", lossless=True, exact=True)
    want = np.empty_like(a)
    for y in range(a.shape[0]):
        for x in range(a.shape[1]):
            al = alpha[y, x] / 255
            want[y, x] = [int(c * al + 255 * (1 - al) + 0.5) for c in a[y, x]]
    assert np.abs(_dec(tmp_path / "t.png").astype(int) - want).max() <= 1  # rounding at exact .5 only
    assert np.array_equal(_dec(tmp_path / "t.png"), _dec(tmp_path / "t.webp"))
    g = RNG.integers(0, 256, size=(6, 7), dtype=np.uint8)
    Image.fromarray(np.dstack([g, np.zeros_like(g)]), "LA").save(tmp_path / "la.png")
    assert (_dec(tmp_path / "la.png") == 255).all()  # fully transparent: white


def test_cmyk_uses_pils_formula_and_refuses_icc(tmp_path):
    c = RNG.integers(0, 256, size=(10, 12, 4), dtype=np.uint8)
    Image.fromarray(c, "CMYK").save(tmp_path / "c.tif")
    cf = c.astype(np.float64)
    want = np.rint((255 - cf[..., :3]) * (255 - cf[..., 3:4]) / 255).astype(np.uint8)
    assert np.abs(_dec(tmp_path / "c.tif").astype(int) - want).max() <= 1
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(c, "CMYK").save(tmp_path / "icc.jpg", icc_profile=icc)
    d = decode_file(tmp_path / "icc.jpg")
    assert d.array is None and "ICC profile" in d.error


def test_exif_orientation_is_applied(tmp_path):
    a = _rgb(16, 24)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "r.png", exif=exif.tobytes())
    out = _dec(tmp_path / "r.png")
    assert out.shape == (24, 16, 3) and np.array_equal(out, np.rot90(a, -1))
    im.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    with Image.open(tmp_path / "r.jpg") as raw:
        plain = np.asarray(raw.convert("RGB"))  # the JPEG's stored pixels, not rotated
    assert np.array_equal(_dec(tmp_path / "r.jpg"), np.rot90(plain, -1))


def test_32bit_and_float_images_are_refused(tmp_path):
    Image.fromarray(RNG.random((8, 8)).astype(np.float32), "F").save(tmp_path / "f.tif")
    d = decode_file(tmp_path / "f.tif")
    assert d.array is None and "floating-point" in d.error


def test_images_over_the_pixel_limit_are_refused_before_decoding(tmp_path):
    side = int(MAX_PIXELS ** 0.5) + 1
    # A header claiming side x side pixels and a tiny (bogus) image: refused on the header, nothing allocated.
    p = _png_by_hand(tmp_path / "big.png", np.zeros((1, 1, 3), np.uint8), 2, depth=8)
    data = bytearray(p.read_bytes())
    data[16:24] = struct.pack(">II", side, side)
    p.write_bytes(bytes(data))
    d = decode_file(p)
    assert d.array is None and "limit" in d.error and "Mpx" in d.error


def test_compare_images_pairs_by_stem_across_extensions_and_refuses_ambiguous_stems(tmp_path):
    from evalkit.score.compare import compare_folders

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    imgs = [_rgb(32, 32) for _ in range(3)]
    for i, a in enumerate(imgs):
        Image.fromarray(a).save(tmp_path / "a" / f"x{i}.png")
        Image.fromarray(a).save(tmp_path / "b" / f"x{i}.webp", lossless=True)
    out = compare_folders(tmp_path / "a", tmp_path / "b", "psnr", device="cpu", workers=1)
    assert out["n_pairs"] == 3 and out["metrics"]["psnr"]["mean"] == 100.0  # identical pixels, capped
    Image.fromarray(imgs[0]).save(tmp_path / "b" / "x0.png")
    with pytest.raises(EvalkitError, match=r"x0\.png and x0\.webp|x0\.webp and x0\.png"):
        compare_folders(tmp_path / "a", tmp_path / "b", "psnr", device="cpu", workers=1)

"""Image decoding for the metrics: libspng's fast path must give PIL's pixels, and leave everything else to PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evalkit.metrics import images as im


def _photo() -> np.ndarray:
    from skimage import data

    return data.astronaut()[:200, :300]


def _pil(path: Path) -> np.ndarray:
    with Image.open(path) as f:
        return np.asarray(f.convert("RGB"))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16"])
def test_png_decodes_to_pils_pixels_whatever_the_colour_type(tmp_path: Path, mode: str) -> None:
    src = _photo()
    img = Image.fromarray(src)
    if mode == "RGBA":
        alpha = np.linspace(0, 255, src.shape[1], dtype=np.uint8)[None].repeat(src.shape[0], 0)
        img = Image.fromarray(np.dstack([src, alpha]))  # RGBA
    elif mode == "I;16":
        img = Image.fromarray(src[..., 0].astype(np.uint16) * 257)  # 16-bit greyscale
    elif mode != "RGB":
        img = img.convert(mode)
    path = tmp_path / f"x-{mode.replace(';', '')}.png"
    img.save(path)
    d = im.decode_file(path)
    assert d.error is None and d.array is not None
    assert d.array.dtype == np.uint8 and d.array.shape == (200, 300, 3) and d.array.flags.c_contiguous
    np.testing.assert_array_equal(d.array, _pil(path))
    # The fast path is taken exactly for 8-bit RGB/RGBA, where libspng is installed.
    fast = im._fast_png(path.read_bytes())
    if mode in ("RGB", "RGBA") and _has_pyspng():
        assert fast is not None
        np.testing.assert_array_equal(fast, d.array)
    else:
        assert fast is None


def _has_pyspng() -> bool:
    try:
        import pyspng  # noqa: F401
    except ImportError:
        return False
    return True


def test_truncated_png_is_still_flagged_corrupt_in_pils_words(tmp_path: Path) -> None:
    path = tmp_path / "t.png"
    Image.fromarray(_photo()).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert im._fast_png(path.read_bytes()) is None
    d = im.decode_file(path)
    assert d.array is None and d.error.startswith("corrupt image") and d.sha256


def test_decoder_pool_and_prefetch_return_files_in_order(tmp_path: Path) -> None:
    paths = []
    for i in range(9):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)).save(p)
        paths.append(p)
    with im.Decoder(2) as dec:
        first = dec.submit(paths[:5])
        second = dec.submit(paths[5:] + [tmp_path / "missing.png"])
        got = second.result() + first.result()  # results may be collected in any order
    assert [int(d.array[0, 0, 0]) // 20 for d in got[:4]] == [5, 6, 7, 8]
    assert got[4].error == "missing"
    assert [int(d.array[0, 0, 0]) // 20 for d in got[5:]] == [0, 1, 2, 3, 4]


def test_pool_hands_big_arrays_back_through_shared_memory_and_frees_it(tmp_path: Path) -> None:
    # 200x300x3 = 180 KB, above SHM_MIN_BYTES: these come back as shared-memory blocks, not pickles.
    photo = _photo()
    assert photo.nbytes >= im.SHM_MIN_BYTES
    paths = []
    for i in range(6):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.roll(photo, 17 * i, axis=1)).save(p)
        paths.append(p)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    shm = Path("/dev/shm")
    before = set(shm.iterdir()) if shm.is_dir() else set()
    with im.Decoder(2) as dec:
        got = dec.decode(paths + [tmp_path / "bad.png"])
    for p, d in zip(paths, got):
        assert d.shm is None and d.array.flags.writeable
        np.testing.assert_array_equal(d.array, _pil(p))
    assert got[-1].array is None and got[-1].error.startswith("corrupt image")
    raw = im._decode_for_pool(str(paths[1]))  # what a worker sends: a block's name, no pixels
    assert raw.array is None and raw.shm is not None and raw.shm[1] == photo.shape
    np.testing.assert_array_equal(im._from_shm(raw).array, _pil(paths[1]))
    if shm.is_dir():  # every block was unlinked once copied out
        assert {p for p in set(shm.iterdir()) - before if p.name.startswith("psm_")} == set()

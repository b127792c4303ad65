"""Image decoding for the metrics: libspng's fast path must give PIL's pixels, and leave everything else to PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evalkit.metrics import tensors
from evalkit.score import images as im


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
    if mode == "RGBA":  # transparency is composited onto white (evalkit.score.decode), not dropped
        a = alpha[..., None].astype(np.float64) / 255
        want = np.rint(src * a + 255 * (1 - a)).astype(np.uint8)
    elif mode == "I;16":  # 16-bit is scaled (v / 257), where PIL's convert("RGB") clips at 255
        want = np.repeat(src[..., :1], 3, axis=2)
    else:
        want = _pil(path)
    np.testing.assert_array_equal(d.array, want)
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


def _new_blocks(before: set[Path]) -> set[Path]:
    """Shared-memory blocks created since `before`: named by a Decoder ("ek…"), or by Python ("psm_…")."""
    return {q for q in set(Path("/dev/shm").iterdir()) - before if q.name.startswith(("psm_", "ek"))}


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
        assert _new_blocks(before) == set()


def test_full_shared_memory_falls_back_to_the_pipe(tmp_path: Path, monkeypatch) -> None:
    # A full /dev/shm (64 MiB in a default container) must not kill the worker with SIGBUS: reserving the block's
    # pages fails first, the block is removed, and the pixels go back through the pipe.
    if not hasattr(im.os, "posix_fallocate"):
        pytest.skip("no posix_fallocate on this platform")
    p = tmp_path / "a.png"
    Image.fromarray(_photo()).save(p)

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    shm = Path("/dev/shm")
    before = set(shm.iterdir()) if shm.is_dir() else set()
    monkeypatch.setattr(im.os, "posix_fallocate", full)
    d = im._decode_for_pool(str(p))
    assert d.shm is None and d.array is not None
    np.testing.assert_array_equal(d.array, _pil(p))
    if shm.is_dir():
        assert _new_blocks(before) == set()


def test_decoded_ahead_but_never_read_is_freed_when_the_decoder_closes(tmp_path: Path) -> None:
    # The scoring loops decode two chunks ahead; an exception in the loop leaves them unread. Closing the Decoder
    # (the `with` block unwinding) must unlink their shared-memory blocks, not leave them until the process exits.
    paths = []
    for i in range(8):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.roll(_photo(), 9 * i, axis=0)).save(p)
        paths.append(p)
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm")
    before = set(shm.iterdir())
    with pytest.raises(RuntimeError, match="scoring failed"):
        with im.Decoder(2) as dec:
            dec.submit(paths[:4])
            dec.submit(paths[4:])
            raise RuntimeError("scoring failed")
    assert _new_blocks(before) == set()
    assert dec._outstanding == []


def test_upload_refuses_what_is_not_a_uint8_batch() -> None:
    with pytest.raises(ValueError, match="float32, expected uint8"):
        tensors.to_device_uint8(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"shape \(N, H, W, C\)"):
        tensors.to_device_uint8(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="share a shape"):
        tensors.to_device_uint8([np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)])
    ro = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    ro.flags.writeable = False  # PIL's arrays are read-only
    np.testing.assert_array_equal(tensors.to_device_uint8(list(ro)).numpy(), ro)
    np.testing.assert_array_equal(tensors.to_device_uint8(ro).numpy(), ro)
    assert tuple(tensors.to_device_uint8(np.zeros((0, 4, 4, 3), np.uint8)).shape) == (0, 4, 4, 3)


def test_a_worker_killed_mid_request_leaves_no_blocks_and_correct_pixels(tmp_path: Path) -> None:
    """A worker dies while a request is being decoded (the OOM killer, say). The files are decoded again in this
    process, and the blocks the other worker had already written for later files, which will never be read, are
    freed: the Decoder named every block before handing the work out."""
    import os
    import signal
    import time
    import warnings

    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm")
    paths = []
    for i in range(24):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.roll(_photo(), 11 * i, axis=1)).save(p)
        paths.append(p)
    before = set(shm.iterdir())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with im.Decoder(2) as dec:
            pending = dec.submit(paths)
            deadline = time.monotonic() + 30
            while not any(q.name.startswith(dec._shm_prefix) for q in shm.iterdir()) and time.monotonic() < deadline:
                time.sleep(0.005)
            os.kill(next(iter(dec._pool._processes)), signal.SIGKILL)
            got = pending.result()
            assert _new_blocks(before) == set()
    assert any("worker processes failed" in str(w.message) for w in caught)
    for p, d in zip(paths, got):
        np.testing.assert_array_equal(d.array, _pil(p))

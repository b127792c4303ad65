"""Image loading for the metrics: parallel PNG decode, content hashes, and the resize policy.

Resize policy (paired metrics): when a candidate image and its reference differ in size, the
*reference* is resized to the candidate's size with PIL bicubic on the 8-bit image (SVDQuant's
convention), and the record says how many pairs were resized. Candidates are never resized, so a
backend's own pixels are what gets scored.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

RESIZE_POLICY = "reference resized to the candidate's size with PIL bicubic (8-bit)"


@dataclass
class Decoded:
    """One decoded file: `array` is uint8 HWC RGB, or None with `error` set (missing or corrupt)."""

    path: str
    sha256: str | None
    array: np.ndarray | None
    error: str | None = None
    # Only between a pool worker and PendingDecode: (shared-memory block name, array shape).
    shm: tuple[str, tuple[int, ...]] | None = None


def decode_file(path: str | os.PathLike[str]) -> Decoded:
    """Read, hash and decode one image to uint8 RGB. Never raises: a bad file comes back with `error`."""
    from PIL import Image, UnidentifiedImageError

    path = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return Decoded(path, None, None, "missing")
    except OSError as e:
        return Decoded(path, None, None, f"unreadable ({e.strerror})")
    sha = hashlib.sha256(data).hexdigest()
    arr = _fast_png(data)
    if arr is not None:
        return Decoded(path, sha, arr)
    from evalkit.score.decode import Refused, decode_bytes

    try:
        arr = decode_bytes(data)  # evalkit.score.decode states the rules: bit depth, alpha, EXIF, CMYK, size
    except Refused as e:
        return Decoded(path, sha, None, f"refused: {e}")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return Decoded(path, sha, None, f"corrupt image ({type(e).__name__}: {str(e)[:80]})")
    return Decoded(path, sha, arr)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _fast_png(data: bytes) -> np.ndarray | None:
    """8-bit RGB/RGBA PNGs (what diffusers pipelines write) through libspng (`pyspng`, the `fast` extra): 1.7x
    PIL's speed on 1024² images on the CPU machine here, the same pixels (lossless; tested). Anything else, any
    error, or no pyspng: None, and PIL decodes (and reports a corrupt file in its words)."""
    # IHDR is the first chunk: width, height, bit depth (byte 24), colour type (byte 25: 2 RGB, 6 RGBA).
    if len(data) < 33 or not data.startswith(_PNG_SIGNATURE) or data[24] != 8 or data[25] not in (2, 6):
        return None
    from evalkit.score.decode import composite_alpha, png_has_exif, png_header, too_big_reason

    head = png_header(data)
    if head is None or too_big_reason(head[0], head[1]) or png_has_exif(data):
        return None  # the PIL path refuses it with the reason, or applies the EXIF rotation
    try:
        import pyspng
    except ImportError:
        return None
    try:
        arr = pyspng.load(data)
    except Exception:  # noqa: BLE001 - truncated or corrupt: let PIL decode it and say what is wrong
        return None
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        return None
    return composite_alpha(arr) if arr.shape[2] == 4 else arr  # the alpha rule of evalkit.score.decode


# Decoded arrays at least this big come back from a worker through shared memory, not through the pool's pipe.
# Pickling a large array through the pipe costs the main process CPU per image, which, not the decoding, capped a
# pool of many workers (benchmarks/results/metrics-cpu-2026-11-21.md, "Shared memory").
SHM_MIN_BYTES = 1 << 16


def _decode_for_pool(path: str, name: str | None = None) -> Decoded:
    """decode_file in a worker: a big array is copied into a new shared-memory block, and only its name and shape
    go back (`Decoded.shm`); the main process copies it out and unlinks the block (PendingDecode.result).
    The main process chose the block's `name`, so it can free the block even when this worker dies or its result
    never arrives. Where shared memory is missing, not POSIX, or full, the array goes back through the pipe."""
    d = decode_file(path)
    if d.array is None or d.array.nbytes < SHM_MIN_BYTES or os.name != "posix":
        return d
    from multiprocessing import shared_memory

    try:
        block = shared_memory.SharedMemory(create=True, size=d.array.nbytes, name=name)
    except OSError:  # no /dev/shm, or a stale block of that name
        return d
    try:
        # Creating a block only sets its size: a full /dev/shm (64 MiB in a default container) would kill this
        # worker with SIGBUS on the write below. Reserving the pages first fails cleanly with ENOSPC instead.
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(block._fd, 0, d.array.nbytes)  # type: ignore[attr-defined]
        np.ndarray(d.array.shape, np.uint8, buffer=block.buf)[...] = d.array
    except OSError:
        block.close()
        block.unlink()
        return d
    block.close()
    return Decoded(d.path, d.sha256, None, None, shm=(block.name, tuple(d.array.shape)))


def _from_shm(d: Decoded) -> Decoded:
    from multiprocessing import shared_memory

    name, shape = d.shm  # type: ignore[misc]
    block = shared_memory.SharedMemory(name=name)
    try:
        arr = np.ndarray(shape, np.uint8, buffer=block.buf).copy()
    finally:
        block.close()
        block.unlink()
    return Decoded(d.path, d.sha256, arr, d.error)


def _unlink_shm_names(names: Iterable[str]) -> None:
    """Free the blocks of these names that exist (an error, a dead worker or an early exit left them behind)."""
    from multiprocessing import shared_memory

    for name in names:
        try:
            block = shared_memory.SharedMemory(name=name)
        except OSError:  # never created, or already read and unlinked
            continue
        block.close()
        block.unlink()


def default_workers() -> int:
    return max(1, min(32, (os.cpu_count() or 1)))


class Decoder:
    """Decodes batches of files in worker processes (PNG inflate is CPU-bound). Use as a context manager."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = default_workers() if workers is None else max(1, workers)
        self._pool: ProcessPoolExecutor | None = None
        self._outstanding: list[PendingDecode] = []  # submitted, result() not yet taken
        # Shared-memory block names handed to the workers: unique to this decoder, short enough for macOS (31).
        self._shm_prefix, self._shm_count = f"ek{secrets.token_hex(4)}_", itertools.count()

    def __enter__(self) -> "Decoder":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        # An exception in the caller's loop leaves chunks decoded ahead: free their shared-memory blocks now, not
        # when the process exits.
        for pending in self._outstanding:
            pending.discard()
        self._outstanding.clear()
        self._pool = None

    def decode(self, paths: Sequence[str | os.PathLike[str]]) -> list[Decoded]:
        return self.submit(paths).result()

    def submit(self, paths: Sequence[str | os.PathLike[str]]) -> "PendingDecode":
        """Start decoding `paths` in the workers and return at once; `.result()` waits. The caller can compute
        on the previous batch (on the GPU) while this one decodes."""
        paths = [str(p) for p in paths]
        # A pool costs ~0.1 s to start; for a handful of files the main process is faster.
        if self.workers == 1 or len(paths) < 4:
            return PendingDecode(self, paths, None)
        if self._pool is None:
            import multiprocessing as mp

            from evalkit.mainguard import main_guard_problem

            if main_guard_problem("image-decoding workers"):
                # spawn would run the caller's unguarded script again in each worker: decode here instead
                self.workers = 1
                return PendingDecode(self, paths, None)

            # forkserver/spawn would re-import torch in each worker; the workers only need PIL and numpy,
            # but fork after torch threads exist is unsafe, so use spawn with a light entry point.
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"))
        chunk = max(1, len(paths) // (self.workers * 2))
        try:
            # Executor.map submits every task now; iterating the result waits for them in order.
            names = [f"{self._shm_prefix}{next(self._shm_count)}" for _ in paths]
            return PendingDecode(self, paths, self._pool.map(_decode_for_pool, paths, names, chunksize=chunk), names)
        except BrokenProcessPool:
            self._give_up_pool()
            return PendingDecode(self, paths, None)

    def _give_up_pool(self) -> None:
        # e.g. a caller's script without an `if __name__ == "__main__":` guard (spawn re-runs it): slower
        # but correct, decode in this process from now on.
        import warnings

        warnings.warn("image-decoding worker processes failed (could not start, or one died); decoding in the "
                      "main process from now on", RuntimeWarning, stacklevel=3)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool, self.workers = None, 1


class PendingDecode:
    """Files being decoded by a Decoder; `result()` returns them in the order given."""

    def __init__(self, decoder: Decoder, paths: list[str], it: Iterable[Decoded] | None,
                 shm_names: Sequence[str] = ()) -> None:
        self._decoder, self._paths, self._it, self._shm_names = decoder, paths, it, tuple(shm_names)
        self._done: list[Decoded] | None = None
        if it is not None:
            decoder._outstanding.append(self)

    def _settled(self) -> None:
        self._it = None
        if self in self._decoder._outstanding:
            self._decoder._outstanding.remove(self)

    def result(self) -> list[Decoded]:
        if self._done is None:
            if self._it is None:
                self._done = [decode_file(p) for p in self._paths]
            else:
                try:
                    self._done = [_from_shm(d) if d.shm else d for d in self._it]
                except BrokenProcessPool:
                    # The workers are gone; blocks they wrote for files after the one that broke would never be read.
                    _unlink_shm_names(self._shm_names)
                    self._settled()
                    self._decoder._give_up_pool()
                    self._done = [decode_file(p) for p in self._paths]
                except BaseException:
                    # Workers may still be writing this request's blocks: it stays outstanding, and the Decoder's
                    # exit frees them once its pool has stopped (discard). Asked again, it decodes in-process.
                    self._it = None
                    raise
                else:
                    self._settled()
        return self._done

    def discard(self) -> None:
        """Give up on these files: wait until no worker can still write one of their blocks, then free them all."""
        it, self._it = self._it, None
        if it is not None and self._done is None:
            try:
                for _ in it:
                    pass
            except Exception:  # noqa: BLE001 - cancelled or broken: nothing more will arrive
                pass
        if self._done is None:
            _unlink_shm_names(self._shm_names)
        self._settled()


def resize_bicubic(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(arr).resize((width, height), Image.BICUBIC), dtype=np.uint8)


def match_reference(ref: np.ndarray, img: np.ndarray) -> tuple[np.ndarray, bool]:
    """The reference at the candidate's size (see RESIZE_POLICY) and whether it had to be resized."""
    if ref.shape[:2] == img.shape[:2]:
        return ref, False
    return resize_bicubic(ref, img.shape[0], img.shape[1]), True


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    exts = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in exts)

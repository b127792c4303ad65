"""Image decoding rules: every file a metric sees becomes 8-bit RGB the same way, or is refused with the reason.

The rules (docs/metrics.md says the same):
  * 8-bit RGB is used as is. Grayscale (and 1-bit) is replicated to 3 channels. Palette images are expanded.
  * 16-bit samples are scaled, not clipped: v8 = round(v16 / 257) (65535 -> 255, 257 -> 1). 16-bit RGB PNGs
    need libspng (`pyspng`, the `fast` extra): PIL would silently keep only the high byte, so without it they
    are refused. 16-bit RGB TIFFs are refused (PIL cannot read them faithfully); 32-bit integer and float
    images are refused (no defined 8-bit scale).
  * Alpha: a fully opaque alpha channel is dropped; any transparency is composited onto white (straight alpha,
    v = round(c * a/255 + 255 * (1 - a/255))). The same rule applies to both sides of a pair.
  * EXIF orientation is applied (PIL's ImageOps.exif_transpose), so a rotated JPEG is scored as it is shown.
  * CMYK without an ICC profile is converted with PIL's formula R = round((255 - C)(255 - K) / 255), ...;
    CMYK with an ICC profile is refused (its colours need colour management). ICC profiles of RGB images are
    ignored: pixel values are taken as sRGB, as clean-fid and torchmetrics do.
  * Images over MAX_PIXELS (8192 x 8192 = 67 Mpx, 201 MB as 8-bit RGB) are refused before their pixels are
    decoded, so memory stays bounded.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

MAX_PIXELS = 8192 * 8192
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Refused(ValueError):
    """An image this module does not convert (its reason is one line, shown as the file's skip reason)."""


def too_big_reason(width: int, height: int) -> str | None:
    if width * height > MAX_PIXELS:
        return f"{width}x{height} = {width * height / 1e6:.0f} Mpx is over the {MAX_PIXELS / 1e6:.0f} Mpx limit"
    return None


def scale16(a: np.ndarray) -> np.ndarray:
    """16-bit samples -> 8-bit, scaled (round(v / 257)), never clipped."""
    return np.rint(np.asarray(a, dtype=np.float64) / 257.0).astype(np.uint8)


def composite_alpha(rgba: np.ndarray) -> np.ndarray:
    """HxWx4 uint8 -> HxWx3 uint8 by the alpha rule (opaque: the RGB as is; else onto white)."""
    rgb, alpha = rgba[..., :3], rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.float64) / 255.0
    return np.rint(rgb.astype(np.float64) * a + 255.0 * (1.0 - a)).astype(np.uint8)


def gray_to_rgb(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))


def png_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) of a PNG, or None for anything else."""
    if len(data) < 33 or not data.startswith(_PNG_SIGNATURE):
        return None
    return (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"), data[24], data[25])


def png_has_exif(data: bytes) -> bool:
    """Whether a PNG carries an eXIf chunk (it must come before the image data)."""
    end = data.find(b"IDAT")
    return data.find(b"eXIf", 0, end if end > 0 else len(data)) > 0


def from_spng(arr: np.ndarray) -> np.ndarray:
    """An array from libspng (8- or 16-bit; gray, gray+alpha, RGB or RGBA) -> HxWx3 uint8 by the rules."""
    if arr.dtype == np.uint16:
        arr = scale16(arr)
    if arr.ndim == 2:
        return gray_to_rgb(arr)
    c = arr.shape[2]
    if c == 1:
        return gray_to_rgb(arr[..., 0])
    if c == 2:
        return composite_alpha(np.concatenate([gray_to_rgb(arr[..., 0]), arr[..., 1:2]], axis=2))
    if c == 4:
        return composite_alpha(arr)
    return np.ascontiguousarray(arr)


def pil_to_rgb8(im: Any) -> np.ndarray:
    """A PIL image -> HxWx3 uint8 by the rules above; raises Refused with the reason."""
    from PIL import ImageOps

    why = too_big_reason(*im.size)
    if why:
        raise Refused(why)
    if im.format == "TIFF":
        bits = im.tag_v2.get(258) if hasattr(im, "tag_v2") else None
        bits = bits if isinstance(bits, tuple) else (bits,) if bits else ()
        if any(b and b > 8 for b in bits) and im.mode in ("RGB", "RGBA", "CMYK", "LA", "L", "P"):
            raise Refused(f"{max(bits)}-bit {im.mode} TIFF: PIL cannot read it without losing bits; save it as "
                          f"a 16-bit PNG or an 8-bit image")
    im.load()  # a full decode now: a truncated file must fail here, not later
    im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode.startswith("I;16"):
        return gray_to_rgb(scale16(np.asarray(im)))
    if mode in ("I", "F"):
        raise Refused(f"{'32-bit integer' if mode == 'I' else 'floating-point'} image: no defined 8-bit scale")
    if mode == "CMYK":
        if im.info.get("icc_profile"):
            raise Refused("CMYK image with an ICC profile: its colours need colour management, which evalkit "
                          "does not do; convert it to sRGB first")
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    if mode in ("1", "L"):
        return gray_to_rgb(np.asarray(im.convert("L"), dtype=np.uint8))
    if mode == "P":
        if "transparency" in im.info:
            return composite_alpha(np.asarray(im.convert("RGBA"), dtype=np.uint8))
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        return composite_alpha(np.asarray(im.convert("RGBA"), dtype=np.uint8))
    if mode in ("RGB", "YCbCr"):
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    raise Refused(f"image mode {mode} is not supported (8/16-bit gray, palette, RGB, RGBA, CMYK are)")


def decode_bytes(data: bytes) -> np.ndarray:
    """An encoded image -> HxWx3 uint8 by the rules; raises Refused, or PIL's error for a corrupt file."""
    from PIL import Image

    head = png_header(data)
    if head is not None:
        w, h, depth, ctype = head
        why = too_big_reason(w, h)
        if why:
            raise Refused(why)
        if depth == 16 and ctype == 4:
            raise Refused("16-bit gray+alpha PNG: not supported (neither PIL nor libspng reads it faithfully)")
        if depth == 16 and ctype in (2, 6):  # PIL keeps only the high byte of these
            try:
                import pyspng
            except ImportError:
                raise Refused("16-bit colour PNG: reading it faithfully needs pyspng (pip install 'evalkit[fast]'); "
                              "PIL would truncate it") from None
            if png_has_exif(data) and _orientation(data) not in (None, 1):
                raise Refused("16-bit colour PNG with an EXIF rotation: not supported; save it upright")
            try:
                return from_spng(pyspng.load(data))
            except RuntimeError as e:  # libspng's word for a truncated or corrupt file
                raise ValueError(f"corrupt 16-bit PNG: {e}") from None
    with Image.open(io.BytesIO(data)) as im:
        return pil_to_rgb8(im)


def _orientation(data: bytes) -> int | None:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.getexif().get(0x0112)

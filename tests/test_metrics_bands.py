"""A large image is scored band by band by the per-pixel metrics (PSNR, SSIM, ΔE2000, Lab shifts), so their memory
is bounded at any size (#23: one 8000x8000 pair cost 14 GB in SSIM). Banding must not change the value: every
pixel's value is the whole map's, only the order of the sum differs. These tests force small bands on a moderate
image and compare with the one-band computation, and check the bands cover every output row once."""

from __future__ import annotations

import numpy as np
import pytest

from evalkit.metrics import tensors
from evalkit.metrics.tensors import row_bands


def _pair(h: int = 203, w: int = 157) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    a = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    return a, b


@pytest.mark.parametrize("h,w,halo,band", [(203, 157, 10, 1000), (203, 157, 0, 1000), (50, 40, 10, 64),
                                           (2048, 2048, 10, None), (4000, 3000, 10, None), (12, 3000, 10, 100)])
def test_row_bands_cover_every_output_row_once(h: int, w: int, halo: int, band: int | None) -> None:
    bands = row_bands(h, w, halo, band)
    rows = [r for r0, r1 in bands for r in range(r0, r1)]
    assert rows == list(range(h - halo))
    if h * w > (band or tensors.BAND_PIXELS):
        assert len(bands) > 1 and all((r1 - r0 + halo) * w <= max(band or tensors.BAND_PIXELS, (1 + halo) * w)
                                      for r0, r1 in bands)
    else:
        assert len(bands) == 1


def _both(monkeypatch: pytest.MonkeyPatch, compute) -> tuple[np.ndarray, np.ndarray]:
    whole = np.asarray(compute())
    monkeypatch.setattr(tensors, "BAND_PIXELS", 157 * 13)  # bands of a few rows
    banded = np.asarray(compute())
    return whole, banded


def test_psnr_is_identical_in_bands(monkeypatch: pytest.MonkeyPatch) -> None:
    from evalkit.metrics.psnr import psnr_uint8

    a, b = _pair()
    whole, banded = _both(monkeypatch, lambda: psnr_uint8(a, b))
    assert np.array_equal(whole, banded)  # integers: exact


def test_ssim_in_bands_matches_the_whole_map(monkeypatch: pytest.MonkeyPatch) -> None:
    from evalkit.metrics.ssim import SSIMMetric, ssim_per_image
    from evalkit.metrics.tensors import to_float_nchw

    a, b = _pair()
    m = SSIMMetric("cpu")
    whole, banded = _both(monkeypatch, lambda: m.compute(a, b))
    assert np.allclose(whole, banded, rtol=0, atol=2e-7), (whole, banded)
    fa, fb = to_float_nchw(a), to_float_nchw(b)
    assert np.allclose(ssim_per_image(fa, fb).numpy(), whole, rtol=0, atol=2e-7)


def test_colour_metrics_in_bands_match_the_whole_image(monkeypatch: pytest.MonkeyPatch) -> None:
    from evalkit.metrics.color import DeltaE2000Metric, LabShiftMetric

    a, b = _pair(61, 157)
    for metric in (DeltaE2000Metric("cpu"), LabShiftMetric("L"), LabShiftMetric("b")):
        monkeypatch.setattr(tensors, "BAND_PIXELS", 2048 * 2048)
        whole, banded = _both(monkeypatch, lambda: metric.compute(a, b))
        assert np.allclose(whole, banded, rtol=1e-12, atol=1e-12), (metric, whole, banded)


def test_a_pair_lpips_or_ms_ssim_cannot_fit_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """LPIPS and MS-SSIM cannot work in bands: a batch whose declared working set exceeds the free memory is a
    one-line error naming the metric, before any work (not a process killed by the kernel). The banded metrics
    are not refused at the same budget."""
    import evalkit
    import evalkit.device
    from evalkit.errors import EvalkitError

    a, b = _pair(200, 200)
    monkeypatch.setattr(evalkit.device, "available_memory_bytes", lambda device: 5_000_000)
    for name in ("lpips_alex", "ms_ssim"):
        with pytest.raises(EvalkitError, match=rf"^{name}: scoring 2 pair\(s\) of 200x200 px at once needs about "
                                               r"0\.\d GiB \(\d+ bytes a pixel\), more than the 0\.0 GiB free on cpu;"):
            evalkit.compare_images(list(a), list(b), metrics=name, device="cpu", workers=1)
    res = evalkit.compare_images(list(a), list(b), metrics="psnr,ssim,delta_e2000", device="cpu", workers=1)
    assert all(r["status"] == "ok" for r in res.values()), res

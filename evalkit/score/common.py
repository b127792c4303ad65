"""What the score stage, its summaries and compare-images share: the options, one image (Item), and the metric
instances of a run, created once on first need from the registry. Nothing here names a metric."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from evalkit.errors import EvalkitError, MissingWeightsError
from evalkit.io import sha256_file
from evalkit.metrics import registry as reg
from evalkit.score.stats import DEFAULT_RESAMPLES

MAX_LISTED = 20  # skipped pairs listed by name in a record; the count is always complete


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
    metric_weights: dict[str, str] = field(default_factory=dict)  # --metric-weights NAME=PATH (evalkit.weights.user)
    real_dir: str | None = None
    bootstrap_samples: int = DEFAULT_RESAMPLES
    workers: int | None = None
    use_cache: bool = True
    weights_dir: str | None = None
    batch_size: int = 8
    fid_method: str = "auto"
    progress: bool = True
    created: dict[str, Any] = field(default_factory=dict)  # metric name -> instance | MetricUnavailable

    def factory_options(self, kind: str, device: str | None = None) -> dict[str, Any]:
        """What a factory of `kind` is offered (each takes what its signature accepts). Only paired metrics get
        --metrics-batch-size (pairs per device batch); CLIP and Inception keep their own batch sizes."""
        kw: dict[str, Any] = {"weights_dir": self.weights_dir, "clip_model": self.clip_model,
                              "metric_weights": dict(self.metric_weights), "fid_method": self.fid_method}
        if device is not None:
            kw["device"] = device
        if kind == "paired":
            kw["batch_size"] = self.batch_size
        return kw

    def result_options(self) -> dict[str, Any]:
        """The options that can change a metric's numbers (part of set-statistic cache keys)."""
        return {"clip_model": self.clip_model, "metric_weights": dict(sorted(self.metric_weights.items())),
                "fid_method": self.fid_method}


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def prompt_table(opts: Options, name: str) -> str:
    """Cache table of a prompt metric's per-image values: named by the metric's result key (model + weights)."""
    cls = reg.factory_class(name)
    return f"prompt-{name}-{reg.call_with(cls.result_key, opts.factory_options('prompt'))}"


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


def expand_metric_names(metrics: Iterable[str] | str | None, lpips_net: str | None = None,
                        real_dir: str | None = None) -> list[str]:
    """--metrics (comma list, aliases, `all`) -> registered names, in registry order (registry.resolve_names)."""
    return reg.resolve_names(metrics, lpips_net, real_dir)


def hash_files(paths: Sequence[Path], workers: int = 4) -> dict[Path, str | None]:
    def h(p: Path) -> str | None:
        try:
            return sha256_file(p)
        except FileNotFoundError:
            return None

    # hashlib releases the GIL on large buffers: threads are enough.
    with ThreadPoolExecutor(max_workers=workers) as ex:
        return dict(zip(paths, ex.map(h, paths)))


def progress_bar(enabled: bool) -> Any:
    """Rich bars on a terminal; off a terminal (a cluster job's log, where rich prints nothing until the end) plain
    lines, at most one every 10 s per rank (PlainProgress)."""
    if not enabled:
        return nullcontext(None)
    import sys

    if not sys.stderr.isatty():
        return PlainProgress()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]score[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=True)


class PlainProgress:
    """The part of rich's Progress the stage uses (add_task, advance), printed as plain lines that a log file can
    hold: `score: fp8-layerwise 12/40, this rank 52/120 images, 3.1 images/s, ETA 22 s`, at most one per
    `every_s` seconds (and one when the last image is done)."""

    def __init__(self, every_s: float = 10.0, stream: Any = None, clock: Any = None) -> None:
        from evalkit.plainlines import PlainLines

        self.out = PlainLines(every_s, stream, clock)
        self.tasks: list[list[Any]] = []  # [description, done, total]
        self.start: float | None = None

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: int) -> int:
        if self.start is None:
            self.start = self.out.last = self.out.clock()
        self.tasks.append([description, 0, int(total)])
        return len(self.tasks) - 1

    def advance(self, task: int, n: int) -> None:
        self.tasks[task][1] += n
        done, total = sum(t[1] for t in self.tasks), sum(t[2] for t in self.tasks)
        if not self.out.due(last=done >= total):
            return
        now = self.out.last
        import evalkit.dist as dist

        elapsed = max(now - (now if self.start is None else self.start), 1e-9)
        rate = done / elapsed
        eta = f", ETA {(total - done) / rate:.0f} s" if rate > 0 and done < total else ""
        w = dist.world()
        who = f" (rank {w.rank} of {w.world_size})" if w.distributed else ""
        desc, tdone, ttotal = self.tasks[task]
        self.out.write(f"score: {desc} {tdone}/{ttotal}, all backends {done}/{total} images, {rate:.1f} images/s"
                       f"{eta}{who}")


def skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}


def base_name(name: str) -> str:
    """The metric whose instance computes `name`: itself, or the one it is derived from."""
    return reg.get_spec(name).derived_from or name


def _create(opts: Options, key: str, make: Any) -> Any:
    if key not in opts.created:
        try:
            opts.created[key] = make()
        except (reg.MetricUnavailable, MissingWeightsError) as e:
            opts.created[key] = reg.MetricUnavailable(str(e))
        except Exception as e:  # e.g. a CLIP checkpoint that does not load: say so, score the rest
            opts.created[key] = reg.MetricUnavailable(f"could not load: {type(e).__name__}: {str(e)[:200]}")
    return opts.created[key]


def get_metric(opts: Options, name: str, device: str) -> Any:
    """The run's instance of `name` (a derived metric shares its base's), created on first need; a
    MetricUnavailable comes back instead of raising."""
    base = base_name(name)
    spec = reg.get_spec(base)
    return _create(opts, base, lambda: reg.create_metric(base, **opts.factory_options(spec.kind, device)))


def get_extractor(opts: Options, extractor: str, device: str) -> Any:
    """The run's one instance of a shared feature extractor (every set metric naming it uses this one)."""
    return _create(opts, f"extractor:{extractor}",
                   lambda: reg.create_extractor(extractor, **opts.factory_options("extractor", device)))


def unavailable(opts: Options, name: str) -> str | None:
    """Why `name` cannot be reported: its (or its extractor's) creation failed this run, or its code is missing.
    No model is loaded."""
    spec = reg.get_spec(name)
    for key in (base_name(name), f"extractor:{spec.extractor}" if spec.extractor else None):
        made = opts.created.get(key) if key else None
        if isinstance(made, reg.MetricUnavailable):
            return str(made)
    return reg.unavailable_reason(name)


def extractor_unavailable(opts: Options, extractor: str) -> str | None:
    made = opts.created.get(f"extractor:{extractor}")
    if isinstance(made, reg.MetricUnavailable):
        return str(made)
    users = [s.name for s in reg.list_metrics("set") if s.extractor == extractor]
    return reg.unavailable_reason(users[0]) if users else None


def feature_key(extractor: str, opts: Options | None = None) -> str:
    """Cache key of an extractor's features, from its class (no model load). An extractor whose weights the user
    supplies keys its features by them (content_key takes the options it needs); MissingWeightsError propagates."""
    cls = reg.extractor_class(extractor)
    return str(reg.call_with(cls.content_key, opts.factory_options("extractor") if opts else {}))


def set_extractors(names: Iterable[str]) -> list[str]:
    """The feature extractors the set metrics among `names` need, in order."""
    out: list[str] = []
    for n in names:
        ext = reg.get_spec(n).extractor
        if ext and ext not in out:
            out.append(ext)
    return out


def metric_options(name: str) -> dict[str, Any]:
    """The options a record states, from the metric class (not an instance: a cached rerun loads no network)."""
    cls = reg.factory_class(name)
    return {**dict(getattr(cls, "OPTIONS", {})), **dict(reg.get_spec(name).options)}


def ref_cache_budget() -> int:
    try:
        return int(float(os.environ.get("EVALKIT_REF_CACHE_GIB", "2")) * 2**30)
    except ValueError:
        raise EvalkitError(f"EVALKIT_REF_CACHE_GIB={os.environ['EVALKIT_REF_CACHE_GIB']!r}: expected a number of GiB")

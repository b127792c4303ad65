"""The metrics from Python (notebooks), with the names and arguments of the CLI's flags.

    compare_images(reference, candidate, metrics=None, device=None, ...)   # `evalkit compare-images`
    compute_fid(reference, candidate, device=None, ...) / compute_kid(...)
    score(run_dir, **options)                                              # `evalkit score`

`reference` and `candidate` are two folders (files paired by stem) or two equally long lists of HxWx3 uint8
arrays or PIL images (paired by position). Lists go through exactly the pipeline folders do: they are written
as lossless PNGs to a temporary folder, decoded by evalkit.score.decode's rules and scored by the stage's code.
`evalkit` re-exports these lazily; importing this module loads no torch.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Mapping, Sequence

from evalkit.errors import EvalkitError
from evalkit.options import api_doc, api_signature
from evalkit.score.options import ScoreOptions

__all__ = ["compare_images", "compute_fid", "compute_kid", "score"]


def compare_images(reference: Any, candidate: Any, metrics: str | Sequence[str] | None = None,
                   device: str | None = None, *, workers: int | None = None, batch_size: int = 8,
                   bootstrap_samples: int = 2000, weights_dir: str | None = None,
                   fid_sqrt: str = "auto") -> dict[str, Any]:
    """Score `candidate` images against `reference` images; returns {metric: record} (mean, 95% CI, n, ...
    for paired metrics; value, n, n_reference for set metrics; status "skipped" with a reason otherwise).

    `metrics`: comma list or list of names (default lpips_alex, ssim, psnr; see `evalkit.list_metrics()`).
    `device`: "auto" (default), "cpu" or "cuda". The other arguments are the CLI's flags of the same names.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ref = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    >>> cand = [a + 1 for a in ref]  # every pixel off by one
    >>> res = compare_images(ref, cand, metrics="psnr,ssim", device="cpu", workers=1)
    >>> round(res["psnr"]["mean"], 2), res["psnr"]["n"]  # 20 log10(255)
    (48.13, 2)
    >>> res["ssim"]["mean"] > 0.99
    True

    Raises:
        EvalkitError: a folder that does not exist or holds no images; files without a partner (paired metrics)
            or two files with one stem; lists of different lengths or an element that is not an HxWx3 uint8
            array or a PIL image; an unknown metric name (with a suggestion); a prompt or real-image metric
            (they need a run); `device="cuda"` without CUDA.
    """
    from evalkit.score.compare import compare_folders

    with ExitStack() as stack:
        a, b = _as_folders(reference, candidate, stack)
        res = compare_folders(a, b, metrics, device=device or "auto", workers=workers, weights_dir=weights_dir,
                              batch_size=batch_size, bootstrap_samples=bootstrap_samples, fid_method=fid_sqrt)
    return dict(res["metrics"])


def compute_fid(reference: Any, candidate: Any, device: str | None = None, *, workers: int | None = None,
                weights_dir: str | None = None, fid_sqrt: str = "auto") -> dict[str, Any]:
    """FID of `candidate` against `reference` (clean-fid "clean" resize, TF Inception, float64), with its sample
    sizes: {"value", "n", "n_reference", "sqrt_method", "indicative", ...}. Below 2048 images FID is strongly
    biased: the record then says `indicative: True` and why. Compare FIDs only at equal n.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> imgs = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    >>> r = compute_fid(imgs, imgs, device="cpu", workers=1)
    >>> abs(r["value"]) < 1e-6, r["n"], r["n_reference"], r["indicative"]
    (True, 4, 4, True)

    Raises:
        EvalkitError: as compare_images; NotComputable (an EvalkitError) with fewer than 2 images in a set;
            MetricUnavailable (an EvalkitError) when the Inception weights are not installed
            (`evalkit weights` says how).
    """
    return _set_metric("fid", reference, candidate, device, workers, weights_dir, fid_sqrt)


def compute_kid(reference: Any, candidate: Any, device: str | None = None, *, workers: int | None = None,
                weights_dir: str | None = None) -> dict[str, Any]:
    """KID (unbiased MMD, cubic kernel, 100 seeded subsets of min(1000, n - 1) images) of `candidate` against
    `reference`: {"value", "std", "subset_size", "n_subsets", "n", "n_reference"}.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> imgs = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    >>> compute_kid(imgs, imgs, device="cpu", workers=1)
    Traceback (most recent call last):
    ...
    evalkit.metrics.kinds.NotComputable: KID needs at least 10 images per set, got 3 (subsets of n - 1 images would barely differ)

    Raises:
        EvalkitError: as compare_images; NotComputable (an EvalkitError) below 10 images in a set;
            MetricUnavailable (an EvalkitError) when the Inception weights are not installed.
    """
    return _set_metric("kid", reference, candidate, device, workers, weights_dir, "auto")


def score(run_dir: str | os.PathLike[str], **options: Any) -> dict[str, Any]:
    """Score a run directory in place, as `evalkit score RUN_DIR` with the same flags; returns
    {backend: {metric: record}} and writes metrics/<backend>.json, metrics/per_image.csv and summary.json.

    >>> import tempfile, numpy as np
    >>> from PIL import Image
    >>> from evalkit.io import atomic_write_json
    >>> from evalkit.records import build_generation_record, build_manifest, image_entry_for_file
    >>> run = Path(tempfile.mkdtemp())
    >>> prompts = [{"index": i, "id": f"p{i}", "text": f"prompt {i}", "seed": i} for i in range(2)]
    >>> atomic_write_json(run / "manifest.json", build_manifest(prompts=prompts, backends=["bf16", "int8"],
    ...     run_id="doc", generation={"height": 32, "width": 32}))
    >>> for b, shift in (("bf16", 0), ("int8", 1)):
    ...     images = []
    ...     for p in prompts:
    ...         rel = f"images/{b}/{p['id']}.png"
    ...         (run / rel).parent.mkdir(parents=True, exist_ok=True)
    ...         ramp = np.add.outer(np.arange(32), np.arange(32)).astype(np.uint8)  # not a constant image
    ...         Image.fromarray(np.stack([ramp + 100 + shift] * 3, axis=-1)).save(run / rel)
    ...         images.append(image_entry_for_file(run, rel, prompt_id=p["id"], seed=p["seed"]))
    ...     atomic_write_json(run / "generation" / f"{b}.json",
    ...                       build_generation_record(backend=b, status="ok", images=images))
    >>> res = score(run, metrics="psnr", workers=1, device="cpu")
    >>> round(res["int8"]["psnr"]["mean"], 2), res["bf16"]["psnr"]["status"]
    (48.13, 'skipped')

    Raises:
        EvalkitError: not a run directory or a malformed record; an image that is not the file its generation
            record describes (missing, truncated, replaced, wrong size, extra; `verify=True` re-hashes every
            file); an unknown metric; `real_dir` that is not a folder; `device="cuda"` without CUDA.
    """
    from evalkit.score.stage import score_run

    if isinstance(options.get("metric_weights"), Mapping):  # {NAME: PATH}, as in docs/metrics.md
        options["metric_weights"] = [f"{k}={v}" for k, v in options["metric_weights"].items()]
    args = _SCORE_SIGNATURE.bind(run_dir, **options).arguments
    progress = bool(args.pop("progress", False))
    opts = ScoreOptions.from_api(args, "evalkit.score")
    return score_run(opts.run_dir, progress=progress, **opts.run_kwargs())


# The signature and the Options section are ScoreOptions' (evalkit/score/options.py): declared once.
_SCORE_SIGNATURE = api_signature(
    ScoreOptions, positional=("run_dir",), return_annotation="dict[str, Any]",
    extra=[inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=False, annotation="bool")])
score.__signature__ = _SCORE_SIGNATURE  # type: ignore[attr-defined]
score.__doc__ = f"{score.__doc__}\n    " + api_doc(ScoreOptions).replace("\n", "\n    ").rstrip() + "\n"


def _set_metric(name: str, reference: Any, candidate: Any, device: str | None, workers: int | None,
                weights_dir: str | None, fid_sqrt: str) -> dict[str, Any]:
    from evalkit.metrics import registry as reg
    from evalkit.metrics.kinds import NotComputable

    rec = compare_images(reference, candidate, metrics=name, device=device, workers=workers,
                         weights_dir=weights_dir, fid_sqrt=fid_sqrt)[name]
    if rec.get("status") != "ok":
        why = str(rec.get("reason", "not computed"))
        # A statistic that could not be computed on these sets states their sizes; a metric that could not run
        # here (weights or code missing) has none.
        raise NotComputable(why) if "n" in rec else reg.MetricUnavailable(why)
    return {k: v for k, v in rec.items() if k not in ("status", "higher_is_better")}


def _as_folders(reference: Any, candidate: Any, stack: ExitStack) -> tuple[Path, Path]:
    """Folders as they are; lists written as lossless PNGs (000000.png, ...) to temporary folders."""
    sides = []
    lists = [x for x in (reference, candidate) if not isinstance(x, (str, os.PathLike))]
    if len(lists) == 2 and len(reference) != len(candidate):
        raise EvalkitError(f"reference has {len(reference)} images and candidate {len(candidate)}: lists are paired "
                           f"by position and must be equally long")
    for side, x in (("reference", reference), ("candidate", candidate)):
        if isinstance(x, (str, os.PathLike)):
            sides.append(Path(x))
            continue
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"evalkit-{side}-")))
        for i, img in enumerate(x):
            _to_pil(img, f"{side}[{i}]").save(folder / f"{i:06d}.png")
        sides.append(folder)
    return sides[0], sides[1]


def _to_pil(img: Any, where: str) -> Any:
    import numpy as np
    from PIL import Image

    if isinstance(img, Image.Image):
        from evalkit.score.decode import Refused, pil_to_rgb8

        try:
            return Image.fromarray(pil_to_rgb8(img))  # the decoding rules, as for a file
        except Refused as e:
            raise EvalkitError(f"{where}: {e}") from None
    a = np.asarray(img)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise EvalkitError(f"{where}: expected an HxWx3 uint8 array or a PIL image, got {a.dtype} {a.shape}")
    return Image.fromarray(a)

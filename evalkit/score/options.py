"""`evalkit score`'s options, declared once (evalkit/options.py derives the flags, `evalkit run`'s scoring flags and
evalkit.score.api.score's signature and docstring from this dataclass). Light: no torch, no stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evalkit.options import StageOptions, option

# The flags `evalkit run` takes for its scoring step (the others are generate's, or make no sense there).
RUN_FLAGS = ("metrics", "lpips_net", "clip_model", "metric_weights", "real_dir", "bootstrap_samples", "workers", "metrics_batch_size",
             "fid_sqrt", "no_cache", "weights_dir")
# The flags `evalkit compare-images` shares with `evalkit score` (the others are a run's).
COMPARE_IMAGES_FLAGS = ("bootstrap_samples", "workers", "metrics_batch_size", "fid_sqrt", "weights_dir", "device")
_MANY = "many GPUs (or `torchrun --nproc-per-node N -m evalkit score RUN_DIR`)"


@dataclass
class ScoreOptions(StageOptions):
    """What `evalkit score RUN_DIR` (and `evalkit.score(run_dir, ...)`) is asked for."""

    run_dir: str = option(help="a run directory written by `evalkit generate`", positional=True, metavar="run_dir",
                          api_type="PathLike")
    metrics: str | None = option(
        None, api_type="str | Sequence[str] | None",
        help="comma list of metrics (see docs/metrics.md), or 'all', or a group ('color', 'preference'); default: "
             "lpips_alex, ssim, ms_ssim, psnr, delta_e2000, clip_score(_drop), pickscore(_drop), hps_v21(_drop), "
             "imagereward(_drop), fid, kid, cmmd. 'lpips' means lpips_<--lpips-net>")
    lpips_net: str | None = option(None, help="alex (default), vgg, or alex,vgg")
    clip_model: str | None = option(
        None, help="CLIP for clip_score: a local folder, a Hugging Face id in the local cache (default "
                   "openai/clip-vit-large-patch14), open_clip:ARCH:/path/to/ckpt, or open_clip:/path/to/folder")
    metric_weights: list[str] = option(
        [], repeat=True, metavar="NAME=PATH", api_type="Mapping[str, str] | Sequence[str]",
        help="weights a metric needs and evalkit cannot fetch (repeatable): pickscore=DIR (PickScore_v1, a "
             "transformers CLIP folder), hps_v21=FILE (HPS_v2.1_compressed.pt), imagereward=DIR (ImageReward.pt, "
             "med_config.json, bert-base-uncased tokenizer), cmmd=DIR (clip-vit-large-patch14-336). Without it the "
             "Hugging Face repo is looked up in the local cache, else the metric is skipped with the reason "
             "(docs/metrics.md)")
    real_dir: str | None = option(None, help="a folder of real images: adds fid_real / kid_real / cmmd_real",
                                  api_type="PathLike | None")
    bootstrap_samples: int = option(2000, help="bootstrap resamples for the 95% confidence intervals")
    workers: int | None = option(None, help="image-decoding processes (default: CPU count, at most 32)")
    metrics_batch_size: int = option(8, help="image pairs per device batch")
    fid_sqrt: str = option(
        "auto", choices=("auto", "eigh", "sqrtm"),
        help="trace-sqrt method for FID: auto (default: the exact low-rank path for sets under 2048 images, else "
             "eigh), eigh, or sqrtm (clean-fid's scipy path); all agree to ~1e-6")
    no_cache: bool = option(False, help="recompute everything (ignore and do not write metrics/cache)")
    weights_dir: str | None = option(None, help="folder holding metric weight files (also $EVALKIT_WEIGHTS_DIR)",
                                     api_type="PathLike | None")
    device: str = option("auto", choices=("auto", "cpu", "cuda"),
                         help="where to score: auto (default: cuda if available), cpu or cuda")
    verify: bool = option(
        False, help="re-hash every image against its generation record (default: files whose size and mtime match "
                    "the record are trusted)")
    quiet: bool = option(False, aliases=("-q",), api=False, help="no progress bar, no table")
    gpus: list[str] = option(
        [], group=_MANY, metavar="0,1,...", api=False,
        help="score with one rank per listed GPU on this machine (started through torchrun); results equal a "
             "one-process score")
    jobs: int | None = option(None, group=_MANY, metavar="N", api=False,
                              help="score with N ranks on this machine (CPU, or GPUs picked by local rank)")

    def run_kwargs(self) -> dict[str, Any]:
        """score_run's keyword arguments (the stage's own names) for these options."""
        return {"metrics": self.metrics, "device": self.device, "lpips_net": self.lpips_net,
                "clip_model": self.clip_model, "metric_weights": list(self.metric_weights), "real_dir": self.real_dir, "bootstrap_samples": self.bootstrap_samples,
                "workers": self.workers, "use_cache": not self.no_cache, "weights_dir": self.weights_dir,
                "batch_size": self.metrics_batch_size, "fid_method": self.fid_sqrt, "verify": self.verify}

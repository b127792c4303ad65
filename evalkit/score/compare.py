"""compare-images: score a folder of candidate images against a folder of reference images, with the score
stage's own plan, decoding pipeline and summaries (evalkit.score.stage / summary) on an in-memory run of two
"backends" and no cache. Files pair by stem (x.png with x.jpg); see docs/metrics.md for the decoding rules."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable

from evalkit.errors import EvalkitError
from evalkit.metrics import registry as reg
from evalkit.score.cache import ScoreCache
from evalkit.score.common import MAX_LISTED, Item, Options, expand_metric_names, progress_bar, resolve_device
from evalkit.score.images import RESIZE_POLICY, Decoder, list_images
from evalkit.score.stats import DEFAULT_RESAMPLES

REFERENCE, CANDIDATE = "reference", "candidate"


def files_by_stem(folder: Path) -> dict[str, Path]:
    """A folder's images keyed by file stem; two files with one stem (x.png and x.jpg) are refused, naming both."""
    out: dict[str, Path] = {}
    for p in list_images(folder):
        if p.stem in out:
            raise EvalkitError(f"{folder}: {out[p.stem].name} and {p.name} have the same stem; images are paired by "
                               f"stem, so keep only one of them")
        out[p.stem] = p
    return out


def compare_folders(dir_a: str | os.PathLike[str], dir_b: str | os.PathLike[str],
                    metrics: Iterable[str] | str | None = None, *, device: str = "auto",
                    workers: int | None = None, weights_dir: str | None = None, batch_size: int = 8,
                    bootstrap_samples: int = DEFAULT_RESAMPLES, fid_method: str = "auto",
                    progress: bool = False) -> dict[str, Any]:
    """Score DIR_B against DIR_A (the reference), pairing files by stem. One dict: metric -> mean, CI, n."""
    from evalkit.score.stage import compute_backends, find_broken, hash_items
    from evalkit.score.state import State
    from evalkit.score.summary import summarise_backend

    a, b = Path(dir_a), Path(dir_b)
    fa, fb, names, paired_names = _checked_inputs(a, b, metrics)
    dev = resolve_device(device)
    opts = Options(metrics=names, device=device, workers=workers, weights_dir=weights_dir, batch_size=batch_size,
                   bootstrap_samples=bootstrap_samples, fid_method=fid_method, use_cache=False, progress=progress)
    # Files are partners only when a paired metric asks for it: set metrics (FID, KID) compare two sets, so the
    # tripwires that judge an image against its partner (grid, unrelated) have no partner to judge against there.
    items = {REFERENCE: [Item(prompt_id=s, seed=0, prompt="", path=fa[s]) for s in sorted(fa)],
             CANDIDATE: [Item(prompt_id=s, seed=0, prompt="", path=fb[s], ref_path=fa.get(s) if paired_names else None)
                         for s in sorted(fb)]}
    hash_items(items)
    state = State(cache=ScoreCache(Path(os.devnull), enabled=False), opts=opts, device=dev, ref=REFERENCE,
                  items=items)
    t_start = time.perf_counter()
    with Decoder(workers) as dec, progress_bar(progress) as bar:
        state.decoder, state.bar = dec, bar
        compute_backends(state, [REFERENCE, CANDIDATE])
        # the image tripwires (evalkit.tripwires): a broken image is listed, never averaged
        find_broken(state, None, [REFERENCE, CANDIDATE], gens={}, backend_level=False)
    n_workers = dec.workers  # after the loop: a failed pool falls back to 1
    records, _rows = summarise_backend(state, CANDIDATE, ref_ok=True)
    for m, rec in records.items():
        if rec.get("reference") == REFERENCE:
            rec["reference"] = str(a)
    corrupt_t = state.cache.table("corrupt")
    corrupt = [str(it.path) for k in (REFERENCE, CANDIDATE) for it in items[k] if it.sha in corrupt_t]
    n_resized = max((r.get("n_resized", 0) for r in records.values() if r.get("status") == "ok"), default=0)
    return {"reference_dir": str(a), "candidate_dir": str(b), "n_pairs": len(set(fa) & set(fb)), "metrics": records,
            "n_resized": n_resized, "resize_policy": RESIZE_POLICY if n_resized else None,
            # Where the time went: `waiting_for_images_s` is the scoring loop idle, waiting for decoded and uploaded
            # pixels; when it is most of `wall_s`, more decoding workers (--workers) help and a faster GPU does not.
            "timing": {"wall_s": time.perf_counter() - t_start, "waiting_for_images_s": state.waited,
                       "decode_workers": n_workers},  # 1 if the pool failed and decoding fell back in-process
            "n_corrupt": len(corrupt), "corrupt": corrupt[:MAX_LISTED], "device": dev,
            "broken": _broken_list(state)}


def _checked_inputs(a: Path, b: Path, metrics: Iterable[str] | str | None
                    ) -> tuple[dict[str, Path], dict[str, Path], list[str], list[str]]:
    """(DIR_A's files by stem, DIR_B's, the metric names, the paired ones): a one-line EvalkitError, before any
    decoding, for a folder that is not one or holds no images, a metric that needs prompts or a real set, and
    files without a partner when a paired metric needs partners."""
    for d in (a, b):
        if not d.is_dir():
            raise EvalkitError(f"{d}: not a folder")
    fa, fb = files_by_stem(a), files_by_stem(b)
    for d, f in ((a, fa), (b, fb)):
        if not f:
            raise EvalkitError(f"{d}: no images (.png, .jpg, .webp, ...) found")
    names = expand_metric_names(reg.COMPARE_DEFAULT_METRICS if metrics is None else metrics)
    bad = [n for n in names if reg.get_spec(n).kind == "prompt" or reg.get_spec(n).reference == "real"]
    if bad:
        raise EvalkitError(f"compare-images cannot compute {', '.join(bad)} (no prompts / no real set here)")
    paired_names = [n for n in names if reg.get_spec(n).kind == "paired"]
    only_a, only_b = sorted(set(fa) - set(fb)), sorted(set(fb) - set(fa))
    if paired_names and (only_a or only_b):
        parts = []
        for d, only, f in ((a, only_a, fa), (b, only_b, fb)):
            if only:
                listed = ", ".join(f[s].name for s in only[:3])
                parts.append(f"{len(only)} only in {d}: {listed}{' …' if len(only) > 3 else ''}")
        raise EvalkitError("images are paired by file stem and some have no partner: " + "; ".join(parts))
    return fa, fb, names, paired_names


def _broken_list(state: Any) -> list[dict[str, Any]]:
    """One entry per broken image, candidate or reference: its file name, which folder, the reason (every tripwire
    it tripped), the first tripwire with its value and level."""
    from evalkit import tripwires

    out = []
    for which in (CANDIDATE, REFERENCE):
        entries = (state.broken.get(which) or ([], {}, {}, []))[0]
        for e in entries:
            out.append({"file": e.get("file"), "folder": which, "reason": tripwires.all_reasons(e),
                        "tripwire": e.get("tripwire"), "value": e.get("value"), "level": e.get("level"),
                        "others": [o.get("tripwire") for o in e.get("others") or []]})
    return out

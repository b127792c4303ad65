"""The score stage: read a run directory, score every backend against the reference images, write
`metrics/<backend>.json`, `metrics/per_image.csv`, `fid_mode.json` and `summary.json` (docs/run-directory.md).

Flow, per backend with generation status ok:
  1. hash every PNG (content keys for the cache; the record's sha256 is compared, not trusted);
  2. look up every (metric, reference sha, image sha) value in metrics/cache/; only misses are decoded;
  3. decode the misses in worker processes, chunk by chunk, three chunks in flight: k+2 decoding (pixels come
     back through shared memory), k+1 paired with its references and uploaded by a thread (page-locked memory,
     a side CUDA stream), k scored; paired metrics share that one upload; features of the shared extractors and
     prompt-metric scores are computed from the same decoded chunk;
  4. summarise per backend (evalkit.score.summary): mean, percentile-bootstrap 95% CI, n, per-prompt means;
     set statistics from features.
A rerun on an unchanged run therefore decodes nothing and runs no network (tests/test_metrics_stage.py).
Under torchrun / srun / accelerate (or `evalkit score --gpus 0,1`) the ranks share step 3 chunk by chunk and rank 0
does the rest (evalkit.score.distributed); a world of one is this flow unchanged.
Every fact about a metric (kind, direction, shared extractor, derivation) comes from the registry: no metric
name appears here. compare-images (evalkit.score.compare) runs the same plan and execution on two folders.

Choices (docs/metrics.md says the same):
  * A reference or candidate PNG listed in a generation record but missing on disk is an error naming the
    files: the run directory is inconsistent and any number would silently cover fewer prompts.
  * A PNG that does not decode is flagged, its pairs are skipped, and the count is in every record.
  * A size mismatch resizes the reference (PIL bicubic) to the candidate's size; `n_resized` says how often.
  * `model.random_weights`: every metric is skipped ("random weights: images carry no quality information").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from evalkit.errors import EvalkitError
from evalkit.metrics import registry as reg
from evalkit.score.cache import ScoreCache
from evalkit.score.common import (Item, Options, expand_metric_names, feature_key, get_extractor, get_metric,
                                    hash_files, progress_bar, prompt_table, ref_cache_budget, resolve_device,
                                    set_extractors, text_sha, unavailable)
from evalkit.metrics.tensors import Uploads
from evalkit.score.images import Decoder, list_images, match_reference
from evalkit.score.stats import DEFAULT_RESAMPLES
from evalkit.score.run_inputs import RANDOM_WEIGHTS_REASON, hash_items, prepare
from evalkit.score.state import Plan, State
from evalkit.rundir import RunDir, open_run


__all__ = ["RANDOM_WEIGHTS_REASON", "expand_metric_names", "hash_items", "score_run"]


def score_run(run_dir: str | os.PathLike[str], metrics: Iterable[str] | str | None = None, *,
              device: str = "auto", lpips_net: str | None = None, clip_model: str | None = None,
              real_dir: str | os.PathLike[str] | None = None, bootstrap_samples: int = DEFAULT_RESAMPLES,
              workers: int | None = None, use_cache: bool = True, weights_dir: str | None = None,
              batch_size: int = 8, fid_method: str = "auto", progress: bool = True,
              verify: bool = False, metric_weights: Mapping[str, str] | Sequence[str] | None = None) -> dict[str, Any]:
    """Score a run directory in place; returns {backend: metrics record}. See the module docstring.

    `metric_weights`: {NAME: PATH} (or ["NAME=PATH", ...]) for metrics whose weights the user supplies
    (evalkit.weights.user.USER_WEIGHTS); an unknown NAME is an EvalkitError.

    Holds the run directory's lock (evalkit.runlock) while it scores: a second writer waits or is refused.
    Under a distributed launcher every rank calls this and gets the same results; rank 0 alone takes the lock and
    writes (evalkit.score.distributed)."""
    from contextlib import ExitStack

    from evalkit.score import distributed as dsc
    from evalkit.runlock import acquire

    # Refuse a path that is not a run before creating a lock file in it (on every rank: each must see the run).
    rd, _ = dsc.everywhere(lambda: open_run(run_dir))
    # The options, resolved once: the stage below and the score-inputs key read the same values.
    from evalkit.weights.user import parse_metric_weights

    user_weights = parse_metric_weights(metric_weights)
    opts = Options(metrics=expand_metric_names(metrics, lpips_net, str(real_dir) if real_dir else None),
                   device=device, clip_model=clip_model, metric_weights=user_weights,
                   real_dir=str(real_dir) if real_dir else None,
                   bootstrap_samples=bootstrap_samples, workers=workers, use_cache=use_cache,
                   weights_dir=weights_dir, batch_size=batch_size, fid_method=fid_method, progress=progress)
    with ExitStack() as locked:
        dsc.on_main(lambda: bool(locked.enter_context(acquire(rd.root, "score"))))
        # these keys (not workers or progress, which change no number) make the score-inputs key: keep them stable
        options = {"metrics": opts.metrics, "device": device, "clip_model": clip_model,
                   "metric_weights": dict(sorted(user_weights.items())), "real_dir": opts.real_dir,
                   "bootstrap_samples": bootstrap_samples, "use_cache": use_cache, "weights_dir": weights_dir,
                   "batch_size": batch_size, "fid_method": fid_method}
        from evalkit.score.score_key import SCORE_INPUTS_FILE, score_inputs_key, unchanged_results

        def decide() -> tuple[str, dict[str, Any] | None]:
            key = score_inputs_key(rd, options)
            # --no-cache asks for every number to be computed again: no shortcut then either.
            return key, unchanged_results(rd, key, verify) if use_cache else None

        key, unchanged = dsc.on_main(decide)
        if unchanged is not None:
            if dsc.is_main():
                import sys

                print(f"score: nothing to do: the images, prompts and options are those of the last score "
                      f"(metrics/{SCORE_INPUTS_FILE}); delete that file to force a rescore", file=sys.stderr)
            return unchanged
        results = _score_run(rd, opts, verify)
        from evalkit.inputs_key import store_key

        dsc.on_main(lambda: store_key(rd.metrics_dir / SCORE_INPUTS_FILE, key, "generation records' images, "
                                      "prompts, score options, METRICS_VERSION, evalkit and scoring-package versions, "
                                      "weight caches (evalkit.score.stage)"))
        return results


def _score_run(rd: RunDir, opts: Options, verify: bool) -> dict[str, Any]:
    from evalkit.score import distributed as dsc
    from evalkit.score.summary import summarise_backend, write_outputs

    names, device, workers, use_cache, progress = opts.metrics, opts.device, opts.workers, opts.use_cache, opts.progress
    real_dir = opts.real_dir
    run = dsc.on_main(lambda: prepare(rd, names, real_dir, verify))
    ref, ok, results = run.ref, run.ok, dict(run.results)
    if run.random_weights:
        return dsc.on_main(lambda: (write_outputs(rd, results, [], ref, names, None), results)[1])
    dev = dsc.everywhere(lambda: dsc.rank_device(resolve_device(device)) if ok else "cpu")
    # Only rank 0 writes the cache; the others read it and hand what they computed to rank 0.
    cache = ScoreCache(rd.metrics_dir / "cache", enabled=use_cache, writable=dsc.is_main())
    state = State(cache=cache, opts=opts, device=dev, ref=ref, items=run.items)
    with Decoder(dsc.rank_workers(workers)) as decoder, progress_bar(progress) as bar:
        state.decoder, state.bar = decoder, bar
        dsc.say_share(dsc.compute_share(state, ok, plan_work, run_work))
        dsc.merge_into_main(cache)

        def summarise_and_write() -> dict[str, Any]:
            if opts.real_dir and any(reg.get_spec(n).reference == "real" for n in names):
                state.real_feats = {ext: _real_features(state, Path(opts.real_dir), ext)
                                    for ext in set_extractors(n for n in names if reg.get_spec(n).reference == "real")}
            cache.save()
            find_broken(state, rd, ok)
            rows: list[dict[str, Any]] = []
            for b in ok:
                results[b], brows = summarise_backend(state, b, ref in ok)
                rows += brows
            write_outputs(rd, results, rows, ref, names, state)
            cache.save()
            return results

        return dsc.on_main(summarise_and_write)


def find_broken(state: State, rd: RunDir | None, backends: Sequence[str],
                gens: Mapping[str, Any] | None = None, backend_level: bool = True) -> None:
    """Fill state.broken for `backends`: tripwires not cached yet are computed (decoding what the scoring loop did
    not), then joined with the generation records' (evalkit.score.broken)."""
    from evalkit.score.broken import broken_for_backend, fill_missing

    order = [state.ref] + [b for b in backends if b != state.ref] if state.ref in backends else list(backends)
    fill_missing(state, order)
    if gens is None and rd is not None:
        from evalkit.rundir import load_generation_records

        gens = load_generation_records(rd, list(backends))
    gens = gens or {}

    def file_of(it: Item) -> str:
        return rd.relative(it.path) if rd is not None else it.path.name

    for b in backends:
        state.broken[b] = broken_for_backend(state, b, gens.get(b), gens.get(state.ref), file_of, backend_level)


def _needs(state: State, b: str) -> tuple[dict[str, list[int]], dict[str, list[int]], dict[str, list[int]]]:
    """Uncached work: paired metric -> item indices, extractor -> items needing features, prompt metric -> items."""
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
    feats: dict[str, list[int]] = {}
    for ext in set_extractors(opts.metrics):
        users = [m for m in opts.metrics if reg.get_spec(m).extractor == ext]
        if all(unavailable(opts, m) for m in users):
            continue
        try:
            key = feature_key(ext, opts)
        except EvalkitError as e:  # its weights are missing (MissingWeightsError): its set metrics are skipped
            opts.created[f"extractor:{ext}"] = reg.MetricUnavailable(str(e))
            continue
        feats[ext] = [i for i, it in enumerate(items)
                      if it.sha not in corrupt_t and cache.get_features(key, it.sha) is None]
    prompt: dict[str, list[int]] = {}
    bases = []
    for m in opts.metrics:
        spec = reg.get_spec(m)
        if spec.kind == "prompt" and (spec.derived_from or m) not in bases:
            bases.append(spec.derived_from or m)
    for m in bases:
        if unavailable(opts, m):
            continue
        try:
            t = cache.table(prompt_table(opts, m))
        except (reg.MetricUnavailable, EvalkitError) as e:  # MissingWeightsError is an EvalkitError
            opts.created[m] = reg.MetricUnavailable(str(e))
            continue
        prompt[m] = [i for i, it in enumerate(items) if it.sha not in corrupt_t and f"{it.sha}:{text_sha(it.prompt)}" not in t]
    return paired, feats, prompt


def _plan_backend(state: State, b: str) -> Plan | None:
    paired, feats, prompt = _needs(state, b)
    # Results are keyed by content, and every backend is planned before any is scored: work an earlier backend (or
    # an earlier item) already plans is not planned again. Identical images, e.g. `X` and `X+offload`, cost nothing.
    items, claimed = state.items[b], state.claimed
    paired = {m: [i for i in idx if _claim(claimed, ("pair", m, items[i].pair_key))] for m, idx in paired.items()}
    feats = {e: [i for i in idx if _claim(claimed, ("feat", e, items[i].sha))] for e, idx in feats.items()}
    prompt = {m: [i for i in idx if _claim(claimed, ("prompt", m, items[i].sha, text_sha(items[i].prompt)))]
              for m, idx in prompt.items()}
    # Metrics are created here, on first real work; one that cannot be created is reported skipped.
    dev, opts = state.device, state.opts
    paired = {m: idx for m, idx in paired.items() if idx and not isinstance(get_metric(opts, m, dev), reg.MetricUnavailable)}
    feats = {e: idx for e, idx in feats.items() if idx and not isinstance(get_extractor(opts, e, dev), reg.MetricUnavailable)}
    prompt = {m: idx for m, idx in prompt.items() if idx and not isinstance(get_metric(opts, m, dev), reg.MetricUnavailable)}
    todo = sorted(set().union(*paired.values(), *feats.values(), *prompt.values()))
    if not todo:
        return None
    chunk = max(4, opts.batch_size * 2)
    return Plan(b=b, paired=paired, feats={e: set(v) for e, v in feats.items()},
                prompt={m: set(v) for m, v in prompt.items()}, need_pair={i for idx in paired.values() for i in idx},
                parts=[todo[s:s + chunk] for s in range(0, len(todo), chunk)])


def _claim(claimed: set[tuple[str, ...]], key: tuple[str, ...]) -> bool:
    if key in claimed:
        return False
    claimed.add(key)
    return True


def compute_backends(state: State, backends: Sequence[str]) -> None:
    """Decode and score every backend's uncached work (compare-images; the score stage goes through
    evalkit.score.distributed.compute_share, which shares the same work between ranks)."""
    run_work(state, [(plan, part) for plan in plan_work(state, backends) for part in plan.parts])


def plan_work(state: State, backends: Sequence[str]) -> list[Plan]:
    """Every backend's uncached work, in chunks; reads the cache, computes nothing."""
    return [p for p in (_plan_backend(state, b) for b in backends) if p is not None]


def run_work(state: State, work: Sequence[tuple[Plan, list[int]]],
             between_chunks: Callable[[], None] | None = None) -> None:
    """Decode and score these chunks as one stream, so that the pipeline does not drain between backends. Three
    chunks are in flight: k+2 decodes in the worker processes, k+1 is paired and uploaded by a thread, k is scored
    here (on the GPU, when there is one). The cache is saved as each backend finishes: a crash later keeps that
    backend's work. `between_chunks` runs before each chunk is scored (a distributed rank stops there when another
    rank has failed)."""
    if not work:
        return
    if state.bar is not None:
        totals: dict[int, int] = {}
        for plan, part in work:
            totals[id(plan)] = totals.get(id(plan), 0) + len(part)
        for plan, _part in work:
            if plan.task is None:
                plan.task = state.bar.add_task(plan.b, total=totals[id(plan)])
    budget = ref_cache_budget()
    with Uploads(state.device) as up:
        for k, cur, wait in up.pipeline(len(work), lambda k: _submit_chunk(state, *work[k]),
                                        lambda k, sub: _prepare_chunk(state, *work[k], sub, up, budget)):
            state.waited += wait
            if between_chunks is not None:
                between_chunks()
            plan = work[k][0]
            _score_chunk(state, plan, cur, up)
            if k + 1 == len(work) or work[k + 1][0] is not plan:
                state.cache.save()


def _submit_chunk(state: State, plan: Plan, part: list[int]) -> tuple[Any, dict[Path, Any]]:
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


def _prepare_chunk(state: State, plan: Plan, part: list[int], submitted: tuple[Any, dict[Path, Any]],
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


def _score_chunk(state: State, plan: Plan, cur: dict[str, Any], up: Uploads) -> None:
    items, cache = state.items[plan.b], state.cache
    part, decoded, good = cur["part"], cur["decoded"], cur["good"]
    for d in cur["got"]:
        if d.array is None and d.sha256:
            cache.put("corrupt", d.sha256, d.error)
    from evalkit.score.broken import compute_for

    for i in good:  # the broken-output tripwires, on pixels decoded anyway (evalkit.score.broken)
        rp = items[i].ref_path
        ref = decoded[rp].array if rp is not None and rp in decoded else None
        compute_for(state, plan.b, i, decoded[items[i].path].array, ref)
    for group in cur["groups"]:
        _paired_group(state, plan.b, plan.paired, group, up)
    for ext, need in plan.feats.items():
        f_idx = [i for i in good if i in need]
        if f_idx:
            extractor = get_extractor(state.opts, ext, state.device)
            fs = extractor.features([decoded[items[i].path].array for i in f_idx])
            for i, f in zip(f_idx, fs):
                cache.put_features(extractor.feature_key, items[i].sha, f)
    for m, need in plan.prompt.items():
        p_idx = [i for i in good if i in need]
        if p_idx:
            metric = get_metric(state.opts, m, state.device)
            table = prompt_table(state.opts, m)
            scores, flags = metric.score([decoded[items[i].path].array for i in p_idx], [items[i].prompt for i in p_idx])
            for i, v, t in zip(p_idx, scores, flags):
                cache.put(table, f"{items[i].sha}:{text_sha(items[i].prompt)}", {"v": float(v), "t": bool(t)})
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


def _refuse_if_too_large(name: str, metric: Any, h: int, w: int, n: int, device: str) -> None:
    """A one-line EvalkitError, before any work, when scoring a batch of these pairs with `metric` would need more
    memory than `device` has free: it would otherwise be killed by the kernel (or run out of GPU memory) and lose
    the run. Metrics that work in bands whatever the size (PSNR, SSIM, ΔE) declare no per-pixel cost; LPIPS and
    MS-SSIM do (WORKING_BYTES_PER_PIXEL, measured by benchmarks/metric_memory.py). What is scored so far is kept."""
    per_pixel = getattr(metric, "WORKING_BYTES_PER_PIXEL", None)
    if not per_pixel:
        return
    from evalkit.device import available_memory_bytes

    batch = min(n, getattr(metric, "batch_size", 1) or 1)
    need, have = per_pixel * h * w * batch, available_memory_bytes(device)
    if have is not None and need > have:
        raise EvalkitError(
            f"{name}: scoring {batch} pair(s) of {w}x{h} px at once needs about {need / 2**30:.1f} GiB "
            f"({per_pixel} bytes a pixel), more than the {have / 2**30:.1f} GiB free on {device}; leave {name} out "
            f"(--metrics), lower --metrics-batch-size, or score on a machine with more memory")


def _paired_group(state: State, b: str, paired: dict[str, list[int]], group: dict[str, Any], up: Uploads) -> None:
    items, cache = state.items[b], state.cache
    (h, w), g, resized = group["size"], group["idx"], group["resized"]
    ref_t, img_t = up.ready(group["ref"]), up.ready(group["img"])
    for m, need in paired.items():
        need_set = set(need)
        sel = [k for k, i in enumerate(g) if i in need_set]
        if not sel:
            continue
        metric = get_metric(state.opts, m, state.device)
        table = f"pair-{m}-{reg.cache_key(m)}"
        why = metric.min_size_reason(h, w)
        if why:
            for k in sel:
                cache.put(table, items[g[k]].pair_key, {"v": None, "skip": why, "r": resized[k]})
            continue
        _refuse_if_too_large(m, metric, h, w, len(sel), str(state.device))
        sel_t = None if len(sel) == len(g) else __import__("torch").tensor(sel, device=ref_t.device)
        a = ref_t if sel_t is None else ref_t.index_select(0, sel_t)
        c = img_t if sel_t is None else img_t.index_select(0, sel_t)
        vals = metric.compute(a, c)
        for k, v in zip(sel, vals):
            v = float(v)
            cache.put(table, items[g[k]].pair_key,
                      {"v": v if np.isfinite(v) else None, "skip": None if np.isfinite(v) else "non-finite value",
                       "r": resized[k]})


def _real_features(state: State, folder: Path, ext: str) -> Any:
    """Features of --real-dir's images for one extractor: (features [N, D], n, n_corrupt) or MetricUnavailable."""
    from evalkit.score.common import extractor_unavailable

    why = extractor_unavailable(state.opts, ext)
    if why:
        return reg.MetricUnavailable(why)
    key = feature_key(ext, state.opts)
    files = list_images(folder)
    hashes = hash_files(files)
    feats: dict[str, np.ndarray] = {}
    todo, n_corrupt = [], 0
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
    extractor = get_extractor(state.opts, ext, state.device) if todo else None
    if isinstance(extractor, reg.MetricUnavailable):
        return extractor
    for s in range(0, len(todo), 32):
        ds = state.decoder.decode(todo[s:s + 32])
        good = [d for d in ds if d.array is not None]
        for d in ds:
            if d.array is None:
                n_corrupt += 1
                if d.sha256:
                    state.cache.put("corrupt", d.sha256, d.error)
        if good:
            fs = extractor.features([d.array for d in good])
            for d, f in zip(good, fs):
                state.cache.put_features(extractor.feature_key, d.sha256, f)
                feats[d.sha256] = f
    arr = np.stack(list(feats.values())) if feats else np.zeros((0, 0))
    return arr, len(feats), n_corrupt

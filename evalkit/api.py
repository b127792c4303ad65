"""evalkit from Python: the CLI's stages as functions, with the CLI flags' names as keyword arguments.

    import evalkit
    run = evalkit.generate("prompts/styles.txt", backends="bf16,torchao-int8wo", model="tiny")
    evalkit.score(run)
    evalkit.report(run)
    result = evalkit.check(run, "thresholds.toml")

    evalkit.compare_images("out/bf16", "out/int8", metrics="lpips,ssim,psnr")
    evalkit.compute_fid("out/bf16", "out/int8")

`import evalkit` stays light: every function here imports its stage when it is called, never at import.
Errors are evalkit.errors.EvalkitError (one line naming the file, flag or backend at fault), as on the CLI.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from evalkit.check.options import CheckOptions, CompareOptions
from evalkit.generate.options import BackendsOptions, GenerateOptions
from evalkit.options import api_doc, api_signature
from evalkit.report.options import ReportOptions
from evalkit.score import api as score_api  # light: its options, no stage

if TYPE_CHECKING:
    from evalkit.check.results import Report
    from evalkit.metrics.registry import MetricSpec

PathLike = str | os.PathLike[str]

__all__ = ["generate", "merge", "score", "report", "check", "compare", "list_backends", "list_models", "list_metrics",
           "compare_images", "compute_fid", "compute_kid"]


def generate(prompts: PathLike | Sequence[str], backends: str | Sequence[str] = "default", **options: Any) -> Path:
    """Generate images for each backend and measure memory and latency (`evalkit generate`); returns the run dir.

    `prompts` is a prompts file or a list of prompt texts (written to evalkit's cache as a prompts file, so the
    run records where its prompts came from); a .csv/.tsv/.jsonl/.json prompt set reads `prompt_column`
    (default: prompt, prompts, text or caption). Rerunning with the same arguments resumes the same run directory.
    `quiet=True` hides the progress display. `gpus=[...]` (or `jobs=N` on CPU) runs one rank per GPU (per job)
    through torchrun, as `evalkit generate --gpus` does; `schedule` is auto|prompts|backends (docs/distributed.md).
    `checkpoints=["mine=DIR"]` adds prequantized checkpoints as backends, as `--backend NAME=PATH` does.
    Raises EvalkitError on bad input (a value of the wrong type names its parameter), and when ranks end with
    missing prompts (see `merge`); TypeError on an unknown parameter.

    >>> import tempfile, evalkit
    >>> run = evalkit.generate(["A red cube on a blue table"], backends="bf16", model="tiny",
    ...                        height=32, width=32, steps=2, out=tempfile.mkdtemp(), quiet=True)
    >>> [p.suffix for p in (run / "images" / "bf16").iterdir()]
    ['.png']
    >>> evalkit.api.read_summary(run)["backends"]["bf16"]["status"]
    'ok'
    """
    args = _GENERATE_SIGNATURE.bind(prompts, backends, **options).arguments
    quiet = bool(args.pop("quiet", False))
    args["prompts"] = str(_prompts_file(args["prompts"]))
    opts = GenerateOptions.from_api(args, "evalkit.generate", command=["evalkit.generate(...)"])
    from evalkit.errors import EvalkitError
    from evalkit.generate.launch import generate_argv, launch_ranks, launched_run_dir, local_ranks_wanted

    n = local_ranks_wanted(opts)
    if n > 1:
        rc = launch_ranks(generate_argv(opts), opts, n)
        root = launched_run_dir(opts)
        if rc != 0 or root is None:
            raise EvalkitError(f"generate on {n} ranks ended with exit code {rc}" + (
                f"; `evalkit merge {root}` names what is missing, and rerunning resumes" if root else ""))
        return root
    console = None
    if quiet:
        import io

        from rich.console import Console

        console = Console(file=io.StringIO())
    from evalkit.generate.stage import run_generate

    return Path(run_generate(opts, console=console))


# The signature and the Options section are GenerateOptions' (evalkit/generate/options.py): declared once.
def _declared(fn: Any, cls: type, **signature: Any) -> inspect.Signature:
    """`fn`'s signature and the Options section of its docstring, both from the options dataclass `cls`; returns
    the signature, which `fn` binds its arguments with."""
    sig = api_signature(cls, **signature)
    fn.__signature__ = sig
    fn.__doc__ = f"{fn.__doc__}\n    " + api_doc(cls).replace("\n", "\n    ").rstrip() + "\n"
    return sig


_GENERATE_SIGNATURE = _declared(
    generate, GenerateOptions, positional=("prompts", "backends"), return_annotation="Path",
    extra=[inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation="bool")])


def merge(run_dir: PathLike) -> dict[str, Any]:
    """Merge a sharded generate's shard files into the run directory (`evalkit merge`); returns merge.json's
    content. Raises EvalkitError (exit code 1) naming the missing or twice-claimed prompts, if any.

    >>> import tempfile, evalkit
    >>> run = evalkit.generate(["A red cube on a blue table"], backends="bf16", model="tiny",
    ...                        height=32, width=32, steps=2, out=tempfile.mkdtemp(), quiet=True)
    >>> merged = evalkit.merge(run)   # rank 0 merged already: merging again changes nothing
    >>> merged["backends"]["bf16"]["status"], [u["tag"] for u in merged["backends"]["bf16"]["units"]]
    ('complete', ['w1-r0'])
    """
    import io

    from rich.console import Console

    from evalkit.generate.ranks import MergeIncomplete, merge_and_summarize
    from evalkit.records import read_merge
    from evalkit.rundir import open_run
    from evalkit.runlock import acquire

    rd, _ = open_run(run_dir)
    with acquire(rd.root, stage="merge"):
        problems = merge_and_summarize(rd, Console(file=io.StringIO()))
    if problems:
        raise MergeIncomplete("; ".join(problems))
    return read_merge(rd.merge_manifest)


def score(run_dir: PathLike, **options: Any) -> dict[str, Any]:
    """Score every backend of a run against the reference backend (`evalkit score`); returns {backend: metrics}.

    Options are `evalkit score`'s flags (evalkit/score/options.py; the signature lists them), e.g. metrics=,
    device=, verify= (hash every image instead of trusting unchanged size and mtime), progress= (a progress bar).
    See evalkit.score.api.score.

    >>> import tempfile, evalkit
    >>> from evalkit.report.synthetic import make_synthetic_run
    >>> run = make_synthetic_run(tempfile.mkdtemp() + "/run", backends=["bf16", "torchao-int8wo"], with_metrics=False)
    >>> results = evalkit.score(run, metrics="ssim,psnr")
    >>> sorted(results["torchao-int8wo"])
    ['psnr', 'ssim']
    """
    from evalkit.score import api as metrics_api

    return metrics_api.score(run_dir, **options)


score.__signature__ = inspect.signature(score_api.score)  # type: ignore[attr-defined]


def report(run_dir: PathLike, **options: Any) -> Path:
    """Write the self-contained HTML report (`evalkit report`); returns the path of index.html.

    >>> import tempfile, evalkit
    >>> from evalkit.report.synthetic import make_synthetic_run
    >>> run = make_synthetic_run(tempfile.mkdtemp() + "/run", backends=["bf16", "torchao-int8wo"])
    >>> evalkit.report(run, no_figures=True, quiet=True).name
    'index.html'
    """
    from evalkit.report.build import report_with

    args = _REPORT_SIGNATURE.bind(run_dir, **options).arguments
    return Path(report_with(ReportOptions.from_api(args, "evalkit.report")))


def check(run_dir: PathLike, thresholds: PathLike, **options: Any) -> Report:
    """Gate a run against a thresholds TOML (`evalkit check`); returns the result (`.exit_code`: 0 pass, 1 fail).

    A thresholds file that cannot be judged raises EvalkitError (the CLI's exit 2), never a failed result. The
    command line's JUnit and Markdown files are renderings of the result: evalkit.check.junit.render_junit and
    evalkit.check.markdown.render_markdown.

    >>> import tempfile, evalkit
    >>> from pathlib import Path
    >>> from evalkit.report.synthetic import make_synthetic_run
    >>> tmp = Path(tempfile.mkdtemp())
    >>> run = make_synthetic_run(tmp / "run", backends=["bf16", "torchao-int8wo"])
    >>> _ = (tmp / "gate.toml").write_text("[default]\\nlpips_alex_max = 0.5\\n")
    >>> result = evalkit.check(run, tmp / "gate.toml")
    >>> result.exit_code, result.verdict.name
    (0, 'PASS')
    """
    from evalkit.check.gate import judge_check

    args = _CHECK_SIGNATURE.bind(run_dir, thresholds, **options).arguments
    return judge_check(CheckOptions.from_api(args, "evalkit.check"))


def compare(base_run: PathLike, candidate_run: PathLike, **options: Any) -> Report:
    """Compare a candidate run with a base run (`evalkit compare`): paired bootstrap per backend and metric, memory
    and latency against tolerances; returns the result (`.exit_code`: 1 a significant regression with
    fail_on_regression). Runs that cannot be compared raise EvalkitError (the CLI's exit 2).

    >>> import tempfile, evalkit
    >>> from evalkit.report.synthetic import make_synthetic_run
    >>> tmp = tempfile.mkdtemp()
    >>> base = make_synthetic_run(tmp + "/base", backends=["bf16", "torchao-int8wo"])
    >>> cand = make_synthetic_run(tmp + "/cand", backends=["bf16", "torchao-int8wo"])
    >>> evalkit.compare(base, cand, n_bootstrap=200).exit_code
    0
    """
    from evalkit.check.compare import judge_compare

    args = _COMPARE_SIGNATURE.bind(base_run, candidate_run, **options).arguments
    return judge_compare(CompareOptions.from_api(args, "evalkit.compare"))


# Their signatures and Options sections are the options dataclasses' (evalkit/report/options.py,
# evalkit/check/options.py): declared once.
_REPORT_SIGNATURE = _declared(report, ReportOptions, positional=("run_dir",), return_annotation="Path")
_CHECK_SIGNATURE = _declared(check, CheckOptions, positional=("run_dir", "thresholds"), return_annotation="Report")
_COMPARE_SIGNATURE = _declared(compare, CompareOptions, positional=("base_run", "candidate_run"),
                               return_annotation="Report")


def list_backends(device: str = "auto", model: str | None = None, **options: Any) -> list[dict[str, Any]]:
    """Every backend and modifier, and whether it can run for `model`'s family (default: the default family) on
    `device` here, or on a CUDA GPU of compute `capability` that need not be here (`evalkit backends --json`).

    >>> import evalkit
    >>> rows = {r["name"]: r for r in evalkit.list_backends(device="cpu")}
    >>> rows["bf16"]["runs_here"], rows["torchao-int8wo"]["library"]
    (True, 'torchao')
    >>> {r["name"]: r["runs_here"] for r in evalkit.list_backends(capability="9.0")}["torchao-nvfp4"]
    False
    """
    from evalkit.generate.listing import backend_listing

    args = _BACKENDS_SIGNATURE.bind(device, model, **options).arguments
    return backend_listing(BackendsOptions.from_api(args, "evalkit.list_backends"))["backends"]


_BACKENDS_SIGNATURE = _declared(list_backends, BackendsOptions, positional=("device", "model"))


def list_models() -> list[dict[str, Any]]:
    """Every model family with its variants, what each form (tiny, random, real) needs and whether it is here
    (`evalkit models --json`).

    >>> import evalkit
    >>> flux = next(f for f in evalkit.list_models() if f["family"] == "flux1")
    >>> flux["tiny"]["spec"], [v["name"] for v in flux["variants"]][0]
    ('tiny:flux1', 'flux1-dev')
    """
    from evalkit.families.cli import model_rows

    return model_rows()


def list_metrics(kind: str | None = None) -> list[MetricSpec]:
    """The registered metrics (evalkit.metrics.registry.MetricSpec: name, kind, higher_is_better, label, ...).

    >>> import evalkit
    >>> specs = {m.name: m for m in evalkit.list_metrics()}
    >>> specs["lpips_alex"].kind, specs["lpips_alex"].higher_is_better, specs["fid"].kind
    ('paired', False, 'set')
    """
    from evalkit.metrics.registry import list_metrics as registry_list

    return registry_list(kind)  # type: ignore[arg-type]


def compare_images(reference: Any, candidate: Any, metrics: Any = None, device: str | None = None,
                   **options: Any) -> dict[str, Any]:
    """Score `candidate` images against `reference` (`evalkit compare-images`): two folders paired by file stem (x.png with x.jpg),
    or two lists of HxWx3 uint8 arrays / PIL images. See evalkit.score.api.compare_images.

    >>> import numpy as np, evalkit
    >>> ref = [np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)]
    >>> evalkit.compare_images(ref, ref, metrics="psnr")["psnr"]["n"]  # a constant image would be broken (tripwires)
    1
    """
    from evalkit.score import api as metrics_api

    return metrics_api.compare_images(reference, candidate, metrics=metrics, device=device, **options)


def compute_fid(reference: Any, candidate: Any, **options: Any) -> dict[str, Any]:
    """FID of `candidate` against `reference` (folders or image lists), with its sample sizes (`n`,
    `n_reference`). See evalkit.score.api.compute_fid.

    >>> import numpy as np, evalkit
    >>> rng = np.random.default_rng(0)
    >>> a = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    >>> b = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    >>> fid = evalkit.compute_fid(a, b)
    >>> fid["n"], fid["n_reference"], fid["indicative"]  # FID on fewer than 2048 images is indicative only
    (4, 4, True)
    """
    from evalkit.score import api as metrics_api

    return metrics_api.compute_fid(reference, candidate, **options)


def compute_kid(reference: Any, candidate: Any, **options: Any) -> dict[str, Any]:
    """KID of `candidate` against `reference` (folders or image lists), with its sample sizes and subset size.
    See evalkit.score.api.compute_kid.

    >>> import numpy as np, evalkit
    >>> rng = np.random.default_rng(0)
    >>> a = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(10)]
    >>> kid = evalkit.compute_kid(a, a[::-1])
    >>> kid["n"], kid["subset_size"]  # subsets are always smaller than the set
    (10, 9)
    """
    from evalkit.score import api as metrics_api

    return metrics_api.compute_kid(reference, candidate, **options)


def read_summary(run_dir: PathLike) -> dict[str, Any]:
    """summary.json of a run, shape-checked (evalkit.records.Summary)."""
    from evalkit.records import read_summary as read
    from evalkit.rundir import RunDir

    return dict(read(RunDir(Path(run_dir)).summary))


# ------------------------------------------------------------------------------------------- helpers

def _prompts_file(prompts: PathLike | Sequence[str]) -> Path:
    """A prompts file for `prompts`: itself if it is a path, else the texts written once to evalkit's cache
    (named by their content, so the same list resumes the same auto-named run)."""
    if isinstance(prompts, (str, os.PathLike)):
        return Path(prompts)
    texts = list(prompts)
    from evalkit.errors import EvalkitError

    if not texts or not all(isinstance(t, str) for t in texts):
        raise EvalkitError("prompts: give a prompts file or a non-empty list of prompt strings")
    bad = next((i for i, t in enumerate(texts) if "\n" in t or "\r" in t or not t.strip()), None)
    if bad is not None:
        raise EvalkitError(f"prompts[{bad}]: a prompt must be one non-empty line of text")
    body = "".join(t.strip() + "\n" for t in texts)
    from evalkit.io import atomic_write_text
    from evalkit.paths import cache_dir

    path = cache_dir() / "prompts" / f"prompts-{hashlib.sha256(body.encode('utf-8')).hexdigest()[:12]}.txt"
    if not path.exists():
        atomic_write_text(path, body)
    return path

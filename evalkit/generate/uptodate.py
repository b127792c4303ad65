"""Is there anything for this generate command to do? Answered without importing torch (issue #16.4).

An unchanged rerun of `evalkit run ...` should take about a second: it re-reads the manifest and the generation
records and checks, by stat fingerprint (evalkit.integrity), that no image changed. Anything this module cannot
decide cheaply (a CUDA device asked for, a model directory that moved, a backend to retry) answers "not sure",
and the stage then runs as before: the fast path can only skip work that the full path would also skip.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evalkit.version import __version__
from evalkit.device import device_without_torch
from evalkit.errors import EvalkitError
from evalkit.generate.options import GenerateOptions, run_id_prefix
from evalkit.io import sha256_file
from evalkit.records import read_generation_record, read_manifest


# Options that say how the work is spread, not what it produces: a rerun with another --jobs/--gpus/--schedule (or
# under a launcher) is still unchanged.
EXECUTION_ONLY = ("command", "jobs", "gpus", "schedule")


def _normal(obj: Any) -> Any:
    """What `obj` reads back as from a JSON file (tuples become lists), so it compares with a stored value."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def run_dir_candidates(opts: GenerateOptions) -> list[Path]:
    """The run directories this command may reopen: --out, else the auto-named ones for its model and prompts
    (under either name a prompt set's runs have had, evalkit.generate.prepare.run_root)."""
    if opts.out:
        return [Path(opts.out)]
    parent = Path(opts.reports_dir)
    if not parent.is_dir():
        return []
    prefixes = {run_id_prefix(opts.model, opts.prompts_file), run_id_prefix(opts.model, opts.prompts_file, True)}
    # the settings hash is the rest of the name: 8 hex digits (a longer tail is another prompts file's name)
    return sorted(p for prefix in prefixes for p in parent.glob(prefix + "*")
                  if p.is_dir() and len(p.name) == len(prefix) + 8)


def _comparable(options: dict[str, Any]) -> Any:
    """A manifest's options as this evalkit reads them, without those that only say how the work is spread."""
    return _normal({k: v for k, v in options.items() if k not in EXECUTION_ONLY})


def unchanged_run(opts: GenerateOptions) -> Path | None:
    """The run directory this command would reopen, when every backend it asks for is already generated (or
    recorded as skipped for the same reason) and no image changed since; None when there is work, or doubt."""
    try:
        device = device_without_torch(opts.device)
        if device is None:
            return None
        prompts_sha = sha256_file(opts.prompts_file)
        options = _comparable(opts.to_manifest())
        for root in run_dir_candidates(opts):
            if _is_done(root, opts, options, prompts_sha, device):
                return root
    except (EvalkitError, OSError, KeyError, TypeError, ValueError):
        return None  # whatever is odd, the full stage looks at it and says so properly
    return None


def _is_done(root: Path, opts: GenerateOptions, options: Any, prompts_sha: str, device: str) -> bool:
    from evalkit.quantizers.registry import parse_backend_list
    from evalkit.generate.plan import finished_record, plan_work
    from evalkit.generate.prepare import all_specs, load_config, package_versions
    from evalkit.rundir import RunDir

    rd = RunDir(root)
    if not rd.manifest.is_file() or not (root / "summary.json").is_file():
        return False
    from evalkit.plugins import load_plugin_files

    load_plugin_files(opts.plugins)
    manifest = read_manifest(rd.manifest)
    config = manifest.get("config") or {}
    if (manifest.get("evalkit_version") != __version__ or manifest.get("prompts_sha256") != prompts_sha
            or config.get("device") != device
            or _comparable(GenerateOptions.from_manifest(config.get("options"), "manifest.json: config.options")
                           .to_manifest()) != options):
        return False
    backend_options, compile_config = load_config(opts.config_file)
    if _normal(backend_options) != _normal(config.get("backend_options")) or \
            _normal(compile_config) != _normal(config.get("compile")):
        return False
    from evalkit.quantizers import checkpoint

    # `--backend NAME=PATH`: the same checkpoints, unchanged since the run recorded them (content keys), then their
    # backends as the run registered them
    if _normal(checkpoint.identity(checkpoint.read_arguments(opts.checkpoints))) != \
            _normal((config.get("identity") or {}).get("checkpoints")):
        return False
    checkpoint.register_run_checkpoints(manifest)
    model_path = (manifest.get("model") or {}).get("path")
    if not model_path or not Path(model_path).exists():
        return False
    if _normal(manifest.get("versions")) != _normal(package_versions()):
        return False  # a library upgrade changes what a backend produces: the stage decides what to redo
    names = list(manifest.get("backends", []))
    from evalkit.generate.merge import has_shards

    if any(has_shards(rd, n) for n in names):
        return False  # shard files await a merge (a rank died, or the merge was interrupted)
    if any(s.name not in names for s in parse_backend_list(opts.backends, opts.include_reference)):
        return False
    requested = tuple(opts.components) if opts.components else None
    plan = plan_work(rd, manifest, all_specs(names), requested, opts.attempt_known_failures)
    if plan.todo or plan.repairs:
        return False
    for spec, status, reason in plan.unrun:  # skipped backends: the same record, or the stage rewrites it
        path = rd.generation_record(spec.name)
        try:
            rec = read_generation_record(path) if path.is_file() else None
        except EvalkitError:  # mangled: the stage rewrites it
            return False
        if rec is None or rec.get("status") != status or rec.get("reason") != reason:
            return False
    return all(finished_record(rd, n) is not None or rd.generation_record(n).is_file() for n in names)

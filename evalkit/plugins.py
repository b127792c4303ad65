"""Plugins: your own quantization method, model family or metric, registered with the records evalkit uses itself.

Two ways in (docs/plugins.md):
- an installed package declares entry points in the groups `evalkit.backends` (libraries and their backends),
  `evalkit.families` and `evalkit.metrics`; each entry point names a module (or a callable) that registers on import;
- `--plugin path/to/module.py` (repeatable) on `evalkit run`/`generate`/`score`, for a file that is not installed.

A plugin module registers with `evalkit.quantizers.registry.register_library`, `evalkit.families.registry.
register_family` or `evalkit.metrics.registry.register_metric`. The run's manifest records each plugin file with its
SHA-256 (part of the run's identity: a changed plugin is another study), and every process of the run (backend
workers, ranks, the score stage) loads the same files before it reads a backend, family or metric name
(evalkit.rundir.load_run_plugins).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Iterable

from evalkit.errors import EvalkitError

GROUPS = ("evalkit.backends", "evalkit.families", "evalkit.metrics")

_loaded_files: dict[str, str] = {}  # resolved path -> sha256
_loaded_groups: set[str] = set()


def load_entry_points(group: str) -> list[str]:
    """Import every installed entry point of `group` once (a module registers on import; a callable is called).
    Returns the entry points' names. A broken plugin is one line naming it, never a traceback."""
    if group in _loaded_groups:
        return []
    _loaded_groups.add(group)
    from importlib.metadata import entry_points

    names = []
    for ep in entry_points(group=group):
        try:
            obj = ep.load()
        except Exception as e:  # noqa: BLE001 - a third party's import error, reported with its name
            raise EvalkitError(f"plugin {ep.name!r} ({ep.value}, entry point group {group}): cannot be loaded: "
                               f"{type(e).__name__}: {e}") from None
        if callable(obj) and not isinstance(obj, type):
            obj()
        names.append(ep.name)
    return names


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_plugin_file(path: str | Path, expected_sha256: str | None = None) -> dict[str, str]:
    """Import a plugin module from a file (once per process). Returns its manifest entry {path, sha256}. With
    `expected_sha256` (a worker loading the run's plugins), a file that changed since the run recorded it is refused."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise EvalkitError(f"--plugin {path}: file not found")
    if p.suffix != ".py":
        raise EvalkitError(f"--plugin {path}: expected a Python file (.py)")
    resolved = str(p.resolve())
    digest = file_sha256(p)
    if expected_sha256 is not None and digest != expected_sha256:
        raise EvalkitError(f"plugin {resolved} changed since this run recorded it (sha256 {expected_sha256[:12]}…, now "
                           f"{digest[:12]}…): its images would come from other code; start a new run")
    if resolved in _loaded_files:
        return {"path": resolved, "sha256": _loaded_files[resolved]}
    name = "evalkit_plugin_" + hashlib.sha256(resolved.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has a loader
        raise EvalkitError(f"--plugin {path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except EvalkitError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's code: name the file and the error, in one line
        sys.modules.pop(name, None)
        raise EvalkitError(f"--plugin {path}: importing it failed: {type(e).__name__}: {e}") from None
    _loaded_files[resolved] = digest
    return {"path": resolved, "sha256": digest}


def load_plugin_files(paths: Iterable[str | Path]) -> list[dict[str, str]]:
    return [load_plugin_file(p) for p in paths]

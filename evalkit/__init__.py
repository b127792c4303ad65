"""evalkit: measure what quantizing a diffusion model costs in image quality, and what it buys in memory and speed.

Stages share one contract, the run directory (docs/run-directory.md):
generate -> score -> report -> check/compare.

From Python (evalkit/api.py): evalkit.generate, score, report, check, compare, list_backends, list_metrics,
compare_images, compute_fid, compute_kid. They are loaded on first use, so `import evalkit` imports no torch.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from typing import TYPE_CHECKING, Any

from evalkit.version import __version__

_API = ("generate", "merge", "score", "report", "check", "compare", "list_backends", "list_models", "list_metrics",
        "compare_images", "compute_fid", "compute_kid")
# API names that are also stage packages (evalkit/generate/, evalkit/score/, evalkit/report/, evalkit/check/).
_STAGES = ("generate", "score", "report", "check")
__all__ = ["__version__", *_API]

if TYPE_CHECKING:  # type checkers and IDEs see the real functions
    from evalkit.api import (check, compare, compare_images, compute_fid, compute_kid, generate, list_backends,  # noqa: F401
                             list_metrics, list_models, merge, report, score)


class _CallableStage(types.ModuleType):
    """A stage package that is also its API function.

    Python binds `evalkit.generate` to the package as soon as anything imports `evalkit.generate.stage`, so a plain
    function of that name would be replaced. Making the package callable keeps both working:
    `evalkit.generate(prompts, ...)` calls evalkit.api.generate, and `import evalkit.generate.stage` is unchanged.
    """

    def _api_function(self) -> Any:
        from evalkit import api

        return getattr(api, self.__name__.rpartition(".")[2])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._api_function()(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self._api_function())


class _EvalkitModule(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # The import system binds each imported subpackage here: make the stage packages callable as they arrive.
        if name in _STAGES and type(value) is types.ModuleType:
            value.__class__ = _CallableStage
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _EvalkitModule


def __getattr__(name: str) -> Any:
    # PEP 562: the API module (and through it each stage) is imported only when a name is first used.
    if name in _STAGES:
        return importlib.import_module(f"{__name__}.{name}")  # a light package; binding it makes it callable
    if name in _API:
        from evalkit import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'evalkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))

"""The pipeline's tokenizers: loaded once per worker process tree, and outside the load clock.

A tokenizer holds no weights and is the same object for every backend, yet transformers parses its tokenizer.json
in Python on every load (0.2-0.4 s each for CLIP's and T5's real vocabularies on a 2-core CPU; more for an LLM's).
Each backend's process would pay that inside its load time, once per backend. Instead the generate stage's forkserver
loads them once where it preloads the family's modules (machines without a GPU: evalkit.generate.worker.run.
preload_modules), and every worker takes them before its load clock starts, from the forkserver's copy or by loading
them then. So `load_time_s` is the components' weights and quantization in both worker modes, and the pipeline gets
the very objects `from_pretrained` would have built (diffusers loads a tokenizer as `cls.from_pretrained(folder)`,
with no arguments: the same call as here).

Runs inside the worker and its forkserver only (imports transformers).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

# Set by the generate stage, for its forkserver only, to {"path": pipeline directory, "names": [component, ...]}
# (docs/environment.md); the forkserver's last preload module reads it.
PRELOAD_ENV = "EVALKIT_PRELOAD_TOKENIZERS"

# (resolved pipeline directory, component) -> tokenizer; in a forked worker, what its forkserver loaded
_LOADED: dict[tuple[str, str], Any] = {}


def tokenizer_classes(model_path: str | os.PathLike[str], names: Iterable[str]) -> dict[str, str]:
    """{component: transformers class} for each of `names` that model_index.json declares as a transformers
    tokenizer. A processor (FLUX.2-dev's PixtralProcessor) or a component the directory lacks is left to
    `from_pretrained` and the family (ModelFamily.supplied_components)."""
    index = json.loads((Path(model_path) / "model_index.json").read_text(encoding="utf-8"))
    out: dict[str, str] = {}
    for name in names:
        entry = index.get(name)
        if (isinstance(entry, list) and len(entry) == 2 and entry[0] == "transformers" and isinstance(entry[1], str)
                and entry[1].endswith(("Tokenizer", "TokenizerFast")) and (Path(model_path) / name).is_dir()):
            out[name] = entry[1]
    return out


def load_tokenizers(model_path: str | os.PathLike[str], names: Iterable[str]) -> dict[str, Any]:
    """The tokenizers among `names` (tokenizer_classes), each loaded once per process and reused after."""
    import transformers

    root = os.path.realpath(model_path)
    out: dict[str, Any] = {}
    for name, cls in tokenizer_classes(root, names).items():
        key = (root, name)
        if key not in _LOADED:
            found = getattr(transformers, cls, None)
            if found is None:  # a class this transformers lacks: from_pretrained says so, in its own words
                continue
            _LOADED[key] = found.from_pretrained(os.path.join(root, name))
        out[name] = _LOADED[key]
    return out


def preload_request(model_path: str, names: Iterable[str]) -> str:
    """The value of PRELOAD_ENV that makes a forkserver load these tokenizers."""
    return json.dumps({"path": str(model_path), "names": list(names)})


def preload_from_environment() -> bool:
    """In the forkserver: load what PRELOAD_ENV asks for. True when it loaded; a failure is left to each worker,
    which loads the tokenizers itself and records any error against its backend."""
    request = os.environ.get(PRELOAD_ENV)
    if not request:
        return False
    try:
        asked = json.loads(request)
        return bool(load_tokenizers(asked["path"], asked["names"]))
    except Exception:  # noqa: BLE001 - see the docstring: the worker reports it, with its backend's name
        return False

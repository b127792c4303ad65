"""The public API: its docstring examples run (on the tiny model), and `import evalkit` / `evalkit --help`
import no torch."""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_api_docstring_examples_run() -> None:
    import evalkit.api

    result = doctest.testmod(evalkit.api, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0
    assert result.attempted > 10


def test_every_api_function_has_an_example() -> None:
    import evalkit
    import evalkit.api

    finder = doctest.DocTestFinder()
    with_examples = {t.name.rsplit(".", 1)[-1] for t in finder.find(evalkit.api) if t.examples}
    assert set(evalkit._API) <= with_examples


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
                         cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    return set(out.split())


HEAVY = {"torch", "diffusers", "transformers", "numpy", "PIL"}


def test_import_evalkit_imports_no_torch() -> None:
    loaded = _modules_after("import evalkit\nevalkit.__version__")
    assert not HEAVY & loaded, HEAVY & loaded
    assert "evalkit.api" not in loaded  # the API module itself waits for first use


def test_api_names_resolve_lazily_and_stay_light() -> None:
    loaded = _modules_after("import evalkit\nassert callable(evalkit.generate) and callable(evalkit.compute_fid)\n"
                            "assert 'generate' in dir(evalkit)")
    assert "evalkit.api" in loaded
    assert not HEAVY & loaded, HEAVY & loaded


def test_unknown_attribute_is_an_attribute_error() -> None:
    import evalkit

    with pytest.raises(AttributeError, match="no attribute 'generat'"):
        evalkit.generat  # noqa: B018


def test_evalkit_help_imports_no_torch() -> None:
    loaded = _modules_after("import sys\nsys.argv = ['evalkit', '--help']\nfrom evalkit.cli import main\n"
                            "try:\n    main()\nexcept SystemExit:\n    pass")
    assert "evalkit.cli" in loaded
    assert not {"torch", "diffusers", "transformers"} & loaded, {"torch", "diffusers", "transformers"} & loaded


def test_list_metrics_and_backends_on_cpu_import_no_torch() -> None:
    loaded = _modules_after("import evalkit\nassert evalkit.list_metrics()\n"
                            "assert any(r['name'] == 'bf16' for r in evalkit.list_backends(device='cpu'))")
    assert "torch" not in loaded


def test_prompt_list_is_checked() -> None:
    import evalkit
    from evalkit.errors import EvalkitError

    with pytest.raises(EvalkitError, match=r"prompts\[1\]: a prompt must be one non-empty line"):
        evalkit.generate(["a cat", "two\nlines"], model="tiny")
    with pytest.raises(EvalkitError, match="non-empty list"):
        evalkit.generate([], model="tiny")


def test_stage_names_stay_callable_after_their_packages_are_imported() -> None:
    """Every API name that is also a package (found on disk, so a new stage package cannot slip past) stays callable
    once a module inside it is imported."""
    import importlib
    import inspect

    import evalkit
    import evalkit.generate.cli as gen_cli

    root = Path(evalkit.__file__).parent
    packages = [n for n in evalkit.__all__ if (root / n / "__init__.py").is_file()]
    assert {"generate", "score", "report", "check"} <= set(packages)
    for name in packages:
        inner = next(p.stem for p in sorted((root / name).glob("*.py")) if p.stem not in ("__init__", "__main__"))
        importlib.import_module(f"evalkit.{name}.{inner}")
        assert callable(getattr(evalkit, name)), name
    assert gen_cli.__name__ == "evalkit.generate.cli"  # `import a.b.c as x` still resolves the package
    assert list(inspect.signature(evalkit.generate).parameters)[:3] == ["prompts", "backends", "model"]
    assert list(inspect.signature(evalkit.check).parameters)[:2] == ["run_dir", "thresholds"]
    from evalkit.errors import EvalkitError

    with pytest.raises(EvalkitError, match="non-empty list"):
        evalkit.generate([], model="tiny")

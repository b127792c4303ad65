"""One record per backend library (evalkit/quantizers/base.py): no other code spells a library's names, and a new library
is one Library record plus one Backend."""

from __future__ import annotations

import ast
import json
from collections import Counter
from pathlib import Path
from types import MappingProxyType

import pytest

import evalkit.quantizers.registry as backends
import evalkit.quantizers.base as libraries
from evalkit.quantizers.registry import BACKEND_LIST, BACKENDS, Backend
from evalkit.quantizers.base import LIBRARIES, LIBRARY_LIST, Library

EVALKIT = Path(__file__).resolve().parents[1] / "evalkit"

# String constants equal to a library's key, pip name or import name that are not facts about that library, with how
# many times each file may hold them (so a new use still fails). Each says why.
ALLOWED: dict[tuple[str, str], tuple[int, str]] = {
    ("generate/worker.py", "torch"): (2, "core modules every forkserver preloads; sys.modules lookup of torch"),
    ("generate/worker.py", "diffusers"): (1, "core module every forkserver preloads"),
    ("generate/gguf_quant.py", "torch"): (2, "name of the torch quantizing engine (vs gguf's numpy one)"),
    ("generate/gguf.py", "gguf"): (1, "cache sub-folder holding GGUF files"),
    ("generate/gguf.py", "diffusers"): (2, "the tensor key-naming scheme written into GGUF files"),
    ("metrics/stage.py", "torch"): (1, "lazy __import__ of torch, not a backend library fact"),
    ("report/synthetic.py", "torch"): (1, "the demo manifest's package-version table, not a backend library fact"),
    ("report/synthetic.py", "diffusers"): (1, "the demo manifest's package-version table, not a backend library fact"),
}


def _through_the_record(node: ast.Constant, parents: dict[ast.AST, ast.AST]) -> bool:
    """`LIBRARIES["x"]`, `get_library("x")` and `{"x": x.__version__}` read or report the record's own facts."""
    parent = parents.get(node)
    if isinstance(parent, ast.Subscript) and parent.slice is node:
        target = parent.value
        return (target.id if isinstance(target, ast.Name) else getattr(target, "attr", None)) == "LIBRARIES"
    if isinstance(parent, ast.Call) and node in parent.args:
        func = parent.func
        return (func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)) == "get_library"
    if isinstance(parent, ast.Dict) and node in parent.keys:
        value = parent.values[parent.keys.index(node)]
        return isinstance(value, ast.Attribute) and value.attr == "__version__"
    return False


def library_name_literals(root: Path = EVALKIT) -> Counter[tuple[str, str]]:
    """(file, string) counts of string constants equal to a library name, outside libraries.py, docstrings and the
    record lookups."""
    names = {s for lib in LIBRARY_LIST for s in (lib.key, lib.pip_name, lib.import_name)}
    found: Counter[tuple[str, str]] = Counter()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel == "libraries.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                if isinstance(parents.get(node), ast.Expr):  # a docstring
                    continue
                if not _through_the_record(node, parents):
                    found[(rel, node.value)] += 1
    return found


def test_no_library_name_is_spelled_outside_its_record() -> None:
    found = library_name_literals()
    extra = {k: n for k, n in found.items() if n > ALLOWED.get(k, (0, ""))[0]}
    assert not extra, ("library names written outside evalkit/quantizers/base.py (read them from the Library record): "
                       f"{extra}")


def test_the_scan_finds_a_name_written_in_code(tmp_path: Path) -> None:
    """The check above can fail: a pip name in a table, as backends.py once had, is found; record reads are not."""
    (tmp_path / "mod.py").write_text('"""torchao"""\nPIP = {"optimum.quanto": "optimum-quanto"}\n'
                                     'ok = LIBRARIES["torchao"].pip_name\nv = {"gguf": gguf.__version__}\n')
    assert library_name_literals(tmp_path) == Counter({("mod.py", "optimum.quanto"): 1, ("mod.py", "optimum-quanto"): 1})


def test_every_backend_names_a_registered_library_with_its_facts() -> None:
    for b in BACKEND_LIST:
        assert LIBRARIES[b.library.key] is b.library, b.name
        assert b.library.reference == b.reference, b.name
        if not b.reference:
            assert b.library.layer_marker, b.name
    # Records keep the keys older runs already use.
    assert {b.library.key for b in BACKEND_LIST} == {"torch", "bitsandbytes", "torchao", "optimum-quanto", "gguf",
                                                      "diffusers"}
    assert sorted(LIBRARY_LIST, key=lambda lib: lib.order) == list(LIBRARY_LIST)
    with pytest.raises(TypeError):
        Backend("x", "torchao", "a library given by name, not by record")  # type: ignore[arg-type]


def test_versioned_packages_come_from_the_records() -> None:
    from evalkit.generate.stage import package_versions, versioned_packages

    names = versioned_packages()
    for lib in LIBRARY_LIST:
        assert set(lib.versioned) <= set(names)
    assert len(names) == len(set(names)) and "transformers" in names
    assert set(names) <= set(package_versions())


def test_forkserver_preloads_each_librarys_modules_only_where_safe() -> None:
    from evalkit.generate.worker.run import preload_modules

    cpu, gpu = preload_modules(gpu=False), preload_modules(gpu=True)
    for lib in LIBRARY_LIST:
        for mod in lib.preload_modules:
            assert mod in cpu
            assert (mod in gpu) == lib.preload_on_gpu_machine
    assert "optimum.quanto" not in gpu  # it initializes CUDA at import (probed on an H100)


# ---------------------------------------------------------------------------------------------------------------
# A new library: one Library record and one Backend, registered by monkeypatching the registries.

TOY = Library("toylib", "toylib-pip", "json", "Toy library", len(LIBRARY_LIST), "#56B4E9",
              preload_modules=("json",), layer_marker="float8_e4m3fn", versioned=("toylib-pip",))
TOY_MISSING = Library("ghostlib", "ghostlib-pip", "ghostlib_not_installed", "Ghost", len(LIBRARY_LIST) + 1, "#F0E442",
                      layer_marker="x", versioned=("ghostlib-pip",))


@pytest.fixture()
def toy_registered(monkeypatch: pytest.MonkeyPatch) -> tuple[Backend, Backend]:
    toy = Backend("toy-fp8", TOY, "toy library: float8 storage through the layerwise-casting transform",
                  components=("transformer",), supported_components=("transformer",), post_load="layerwise_fp8")
    ghost = Backend("ghost-int8", TOY_MISSING, "a library that is not installed", post_load="layerwise_fp8",
                    components=("transformer",), supported_components=("transformer",))
    monkeypatch.setattr(libraries, "LIBRARY_LIST", LIBRARY_LIST + (TOY, TOY_MISSING))
    monkeypatch.setattr(libraries, "LIBRARIES", MappingProxyType({**LIBRARIES, TOY.key: TOY, TOY_MISSING.key: TOY_MISSING}))
    monkeypatch.setattr(backends, "BACKEND_LIST", BACKEND_LIST + (toy, ghost))
    monkeypatch.setattr(backends, "BACKENDS", MappingProxyType({**BACKENDS, toy.name: toy, ghost.name: ghost}))
    return toy, ghost


def test_a_toy_library_is_listed_by_evalkit_backends(toy_registered, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from evalkit.generate.cli import backends_main

    assert backends_main(argparse.Namespace(device="cpu", json=True)) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["backends"]}
    assert rows["toy-fp8"]["library"] == "toylib" and rows["toy-fp8"]["runs_here"] is True
    assert rows["ghost-int8"]["runs_here"] is False
    assert rows["ghost-int8"]["reason"] == "needs the ghostlib-pip package (pip install ghostlib-pip)"
    assert libraries.library_order("toylib") == TOY.order and libraries.get_library("toylib").colour == "#56B4E9"


def test_a_toy_library_backend_runs_on_the_tiny_model(toy_registered, tmp_path: Path, tiny_model_path: Path) -> None:
    from evalkit.generate.stage import GenerateOptions, prepare_run
    from evalkit.generate.worker.run import run_worker
    from evalkit.io import read_json

    prompts = tmp_path / "one.txt"
    prompts.write_text("A red cube on a blue table\n", encoding="utf-8")
    rd, manifest, specs = prepare_run(GenerateOptions(prompts_file=str(prompts), model="tiny", backends="toy-fp8",
                                                      out=str(tmp_path / "run"), height=32, width=32, warmup=0))
    assert [s.name for s in specs] == ["bf16", "toy-fp8"]
    assert "toylib-pip" in manifest["versions"] and manifest["versions"]["toylib-pip"] is None
    assert run_worker(str(rd.root), "toy-fp8") == 0
    rec = read_json(rd.generation_record("toy-fp8"))
    assert rec["status"] == "ok" and rec["recipe"]["library"] == "toylib" and len(rec["images"]) == 1
    types = rec["quantization"]["layer_types"]["transformer"]
    assert any(TOY.layer_marker in k for k in types), types

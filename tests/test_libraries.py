"""One module per quantization library and one per model family: nothing outside a library's module spells its
names, nothing outside a family's module names its classes, and a new library is one module with its records."""

from __future__ import annotations

import ast
import json
from collections import Counter
from pathlib import Path

import pytest

from evalkit.families.registry import families
from evalkit.quantizers import registry
from evalkit.quantizers.base import Backend, Library, Quantizer
from evalkit.quantizers.registry import BACKENDS, LIBRARIES, backend_list, library_list, quantizer_for

EVALKIT = Path(__file__).resolve().parents[1] / "evalkit"

# String constants equal to a library's key, pip name or import name that are not facts about that library, with how
# many times each file may hold them (so a new use still fails). Each says why.
ALLOWED: dict[tuple[str, str], tuple[int, str]] = {
    ("generate/worker/run.py", "torch"): (2, "core modules every forkserver preloads; sys.modules lookup of torch"),
    ("generate/worker/run.py", "diffusers"): (1, "core module every forkserver preloads"),
    ("quantizers/gguf/quant.py", "torch"): (2, "name of the torch quantizing engine (vs gguf's numpy one)"),
    ("quantizers/gguf/convert.py", "gguf"): (1, "cache sub-folder holding GGUF files"),
    ("quantizers/gguf/convert.py", "diffusers"): (2, "the tensor key-naming scheme written into GGUF files"),
    ("score/stage.py", "torch"): (1, "lazy __import__ of torch, not a backend library fact"),
    ("report/synthetic.py", "torch"): (1, "the demo manifest's package-version table, not a backend library fact"),
    ("report/synthetic.py", "diffusers"): (1, "the demo manifest's package-version table, not a backend library fact"),
    # A family says which library's quantization config classes apply to each of its components.
    **{(f"families/{f}.py", lib): (99, "Component.config_library: whose config classes quantize a component")
       for f in ("flux1", "base") for lib in ("diffusers", "transformers")},
    ("families/base.py", "diffusers"): (99, "Component.config_library values"),
    **{("quantizers/registry.py", m): (1, "BUILTIN_LIBRARIES: the built-in library modules' names")
       for m in ("bitsandbytes", "torchao", "gguf", "modelopt", "sdnq", "bfl", "nunchaku")},
}


def _own_files(lib: Library) -> set[str]:
    """The files of a library's own module (a folder's every file) relative to evalkit/."""
    # through the library's quantizer: a library may have no built-in backend (prequantized checkpoints)
    mod = type(registry.quantizer_for_library(lib.key)).__module__
    parts = mod.split(".")[1:]
    folder = EVALKIT.joinpath(*parts)
    if folder.is_dir():
        return {p.relative_to(EVALKIT).as_posix() for p in folder.rglob("*.py")}
    return {"/".join(parts) + ".py"}


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


def library_name_literals(root: Path = EVALKIT, libraries: list[Library] | None = None,
                          own: dict[str, set[str]] | None = None) -> Counter[tuple[str, str]]:
    """(file, string) counts of string constants equal to a library name, outside that library's own module,
    docstrings and the record lookups."""
    libraries = libraries if libraries is not None else library_list()
    own = own if own is not None else {lib.key: _own_files(lib) for lib in libraries}
    names: dict[str, set[str]] = {}
    for lib in libraries:
        for s in (lib.key, lib.pip_name, lib.import_name):
            names.setdefault(s, set()).add(lib.key)
    found: Counter[tuple[str, str]] = Counter()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                if any(rel in own.get(k, set()) for k in names[node.value]):
                    continue  # the library's own module
                if isinstance(parents.get(node), ast.Expr):  # a docstring
                    continue
                if not _through_the_record(node, parents):
                    found[(rel, node.value)] += 1
    return found


def test_no_library_name_is_spelled_outside_its_module() -> None:
    found = library_name_literals()
    extra = {k: n for k, n in found.items() if n > ALLOWED.get(k, (0, ""))[0]}
    assert not extra, ("library names written outside their own module under evalkit/quantizers/ (read them from "
                       f"the Library record): {extra}")


def test_the_scan_finds_a_name_written_in_code(tmp_path: Path) -> None:
    """The check above can fail: a pip name in a table is found; the library's own module and record reads are not."""
    quanto = LIBRARIES["optimum-quanto"]
    (tmp_path / "mod.py").write_text('"""torchao"""\nPIP = {"optimum.quanto": "optimum-quanto"}\n'
                                     'ok = LIBRARIES["torchao"].pip_name\nv = {"gguf": gguf.__version__}\n')
    (tmp_path / "quanto.py").write_text('PIP = "optimum-quanto"\n')
    found = library_name_literals(tmp_path, [quanto], {quanto.key: {"quanto.py"}})
    assert found == Counter({("mod.py", "optimum.quanto"): 1, ("mod.py", "optimum-quanto"): 1})


def family_class_names(module_path: Path) -> set[str]:
    """Names a family module owns: the diffusers/transformers classes it imports, and the pipeline classes it
    declares (string constants ending in Pipeline)."""
    tree = ast.parse(module_path.read_text(encoding="utf-8"))
    owned: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("diffusers",
                                                                                              "transformers"):
            owned |= {a.name for a in node.names if a.name[0].isupper() and not a.name.endswith("Config")
                      or a.name.endswith(("TextConfig", "T5Config"))}
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith("Pipeline"):
            owned.add(node.value)
    # Scheduler and generic classes every family uses are not a family's own.
    return owned - {"FlowMatchEulerDiscreteScheduler", "AutoencoderKL", "PipelineQuantizationConfig"}


def family_modules() -> dict[str, Path]:
    """family key -> the built-in module that defines it (BUILTIN_FAMILIES names the modules: `sd3` holds `sd3.5`)."""
    import importlib

    from evalkit.families.registry import BUILTIN_FAMILIES

    return {importlib.import_module(f"evalkit.families.{name}").FAMILY.key: EVALKIT / "families" / f"{name}.py"
            for name in BUILTIN_FAMILIES}


def family_names_outside(root: Path = EVALKIT) -> dict[str, list[str]]:
    """family module -> [file:name] uses of its class names elsewhere in evalkit (code, not docstrings/comments).
    A class two families both build from (T5EncoderModel: FLUX.1 and SD3.5) is each family module's own."""
    out: dict[str, list[str]] = {}
    modules = family_modules()
    own_by_path = {m: family_class_names(m) for m in modules.values() if m.exists()}
    for fam in families():
        module = modules.get(fam.key, EVALKIT / "families" / f"{fam.key.replace('-', '_').replace('.', '_')}.py")
        if not module.exists():
            continue
        owned = family_class_names(module)
        for path in sorted(root.rglob("*.py")):
            if path == module:
                continue
            if root == EVALKIT:
                owned_here = owned - own_by_path.get(path, set())
            else:
                owned_here = owned
            tree = ast.parse(path.read_text(encoding="utf-8"))
            parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
            for node in ast.walk(tree):
                name = None
                if isinstance(node, ast.Name) or isinstance(node, ast.Attribute):
                    name = node.id if isinstance(node, ast.Name) else node.attr
                elif isinstance(node, ast.alias):
                    name = node.name
                elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                        not isinstance(parents.get(node), ast.Expr):
                    name = node.value
                if name in owned_here:
                    out.setdefault(fam.key, []).append(f"{path.relative_to(root)}:{name}")
    return out


def test_no_family_class_is_named_outside_its_module() -> None:
    found = family_names_outside()
    assert not found, f"model-family classes named outside their family module (read them from the record): {found}"


def test_the_family_scan_finds_a_class_named_in_code(tmp_path: Path) -> None:
    (tmp_path / "loader.py").write_text('"""FluxPipeline in a docstring is fine."""\n'
                                        "from diffusers import FluxPipeline\nx = 'FluxTransformer2DModel'\n")
    found = family_names_outside(tmp_path)
    assert sorted(found["flux1"]) == ["loader.py:FluxPipeline", "loader.py:FluxTransformer2DModel"]


def test_every_backend_names_a_registered_library_with_its_facts() -> None:
    for b in backend_list():
        assert LIBRARIES[b.library.key] is b.library, b.name
        assert b.library.reference == b.reference, b.name
        assert quantizer_for(b).library is b.library, b.name
        if not b.reference:
            assert b.library.layer_marker, b.name
    # Records keep the keys older runs already use.
    assert {b.library.key for b in BACKENDS.values()} >= {"torch", "bitsandbytes", "torchao", "optimum-quanto",
                                                           "gguf", "diffusers"}
    assert [lib.order for lib in library_list()] == sorted(lib.order for lib in library_list())
    with pytest.raises(TypeError):
        Backend("x", "torchao", "a library given by name, not by record")  # type: ignore[arg-type]


def test_registration_refuses_what_would_collide() -> None:
    lib = Library("dup", "dup", "json", "Dup", 90, "#123456")

    class Q(Quantizer):
        library = lib

    with pytest.raises(ValueError, match="listed twice"):
        registry.register_library(LIBRARIES["torchao"], quantizer_for(BACKENDS["torchao-int8wo"]), [])
    with pytest.raises(ValueError, match="already a backend"):
        registry.register_library(lib, Q(), [Backend("bnb-nf4", lib, "taken name")])
    with pytest.raises(ValueError, match="no '\\+'"):
        registry.register_library(lib, Q(), [Backend("a+b", lib, "a modifier separator in a name")])
    assert "dup" not in LIBRARIES


def test_versioned_packages_come_from_the_records() -> None:
    from evalkit.generate.stage import package_versions, versioned_packages

    names = versioned_packages()
    for lib in library_list():
        assert set(lib.versioned) <= set(names)
    assert len(names) == len(set(names)) and "transformers" in names
    assert set(names) <= set(package_versions())


def test_forkserver_preloads_each_librarys_modules_only_where_safe() -> None:
    from evalkit.generate.worker.run import preload_modules

    cpu, gpu = preload_modules(gpu=False), preload_modules(gpu=True)
    for lib in library_list():
        for mod in lib.preload_modules:
            assert mod in cpu
            assert (mod in gpu) == lib.preload_on_gpu_machine
    assert "optimum.quanto" not in gpu  # it initializes CUDA at import (probed on an H100)


# ---------------------------------------------------------------------------------------------------------------
# A new library: one module with its records, registered with register_library (tests/toy_library.py).


@pytest.fixture()
def toy_registered():
    import toy_library

    toy_library.register()
    yield BACKENDS["toy-int6"], BACKENDS["ghost-int8"]
    toy_library.unregister()


def test_a_toy_library_is_listed_by_evalkit_backends(toy_registered, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from evalkit.generate.cli import backends_main

    assert backends_main(argparse.Namespace(device="cpu", json=True, model=None, capability=None)) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["backends"]}
    assert rows["toy-int6"]["library"] == "toylib" and rows["toy-int6"]["runs_here"] is True
    assert rows["ghost-int8"]["runs_here"] is False
    assert rows["ghost-int8"]["reason"] == "needs the ghostlib-pip package (pip install ghostlib-pip)"
    assert registry.library_order("toylib") == LIBRARIES["toylib"].order
    assert registry.get_library("toylib").colour == "#56B4E9"


def test_a_toy_library_backend_runs_on_the_tiny_model(toy_registered, tmp_path: Path, tiny_model_path: Path) -> None:
    from evalkit.generate.ranks import write_unit
    from evalkit.generate.stage import GenerateOptions, prepare_run
    from evalkit.generate.worker.run import run_worker
    from evalkit.io import read_json

    prompts = tmp_path / "one.txt"
    prompts.write_text("A red cube on a blue table\n", encoding="utf-8")
    rd, manifest, specs = prepare_run(GenerateOptions(prompts_file=str(prompts), model="tiny", backends="toy-int6",
                                                      out=str(tmp_path / "run"), height=32, width=32, warmup=0))
    assert [s.name for s in specs] == ["bf16", "toy-int6"]
    assert "toylib-pip" in manifest["versions"] and manifest["versions"]["toylib-pip"] is None
    write_unit(rd, "toy-int6", "w1-r0", 0, 1, [p["id"] for p in manifest["prompts"]])
    assert run_worker(str(rd.root), "toy-int6", "w1-r0") == 0
    rec = read_json(rd.shard_record("toy-int6", "w1-r0"))
    assert rec["status"] == "ok" and rec["recipe"]["library"] == "toylib" and len(rec["images"]) == 1
    types = rec["quantization"]["layer_types"]["transformer"]
    assert any("ToyInt6Linear" in k for k in types), types
    assert rec["quantization"]["quantized_linear_count"]["transformer"] > 0

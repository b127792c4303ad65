"""The package's shape, checked statically (AST, nothing imported):

* no import cycle between evalkit's modules. A function-level import counts too: it only hides the cycle until the
  day someone moves it to the top. Imports under `if TYPE_CHECKING:` count as well: a type two modules share
  belongs in a module both import (as score's State and Plan live in evalkit/score/state.py);
* no module imports the package root (`from evalkit import __version__` would import every stage lazily);
* a private name (`_x`) is not imported from another module: what modules share is public API.

KNOWN_* below list the exceptions still allowed (none now); the test fails on any new one, so the lists only
shrink.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "evalkit"

# Each a strongly connected set of modules, as sorted names; none is left.
KNOWN_CYCLES: set[tuple[str, ...]] = set()
# (importing module, imported module, private name); none is left.
KNOWN_PRIVATE: set[tuple[str, str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The evalkit module `name` is, or is inside of (an attribute imported from it)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(name: str) -> list[tuple[str, str | None]]:
    """(imported evalkit module, name imported from it or None) for every import in module `name`."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in MODULES:
                    out.append((full, None))
                elif (target := _resolve(base)) is not None:
                    out.append((target, alias.name))
        elif isinstance(node, ast.Import):
            out += [(m, None) for a in node.names if (m := _resolve(a.name)) and a.name.startswith("evalkit")]
    return out


def import_graph() -> dict[str, set[str]]:
    return {name: {m for m, _ in _imports(name)} - {name} for name in MODULES}


def cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """The strongly connected sets of more than one module (Tarjan), each as sorted names."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[tuple[str, ...]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.add(tuple(sorted(comp)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {("a", "b", "c")}
    assert cycles({"a": {"b"}, "b": set()}) == set()


def test_no_new_import_cycle_in_evalkit() -> None:
    new = cycles(import_graph()) - KNOWN_CYCLES
    assert not new, f"import cycles: {sorted(new)}"


def test_no_module_imports_the_package_root() -> None:
    offenders = [(name, what) for name in MODULES if name != "evalkit"
                 for target, what in _imports(name) if target == "evalkit"]
    assert not offenders, offenders


def test_no_private_name_crosses_modules() -> None:
    crossing = {(name, target, what) for name in MODULES for target, what in _imports(name)
                if what and what.startswith("_") and not what.startswith("__") and target != name}
    new = crossing - KNOWN_PRIVATE
    assert not new, f"private names imported from another module: {sorted(new)}"

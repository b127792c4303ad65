"""Shape of the evalkit/report package: no import cycle between its modules (a function-level import counts too:
it only hides the cycle until the day someone moves it to the top), and the synthetic run writer in small pieces."""

from __future__ import annotations

import ast
from pathlib import Path

REPORT = Path(__file__).resolve().parents[1] / "evalkit" / "report"
PACKAGE = "evalkit.report"


def _imports(path: Path) -> set[str]:
    """Modules of evalkit.report that `path` imports anywhere in its body, as module names under the package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else f"{PACKAGE}.{node.module}"
            if base == PACKAGE:  # `from evalkit.report import build` names a module
                out.update(f"{PACKAGE}.{a.name}" for a in node.names if (REPORT / f"{a.name}.py").exists())
            elif base.startswith(PACKAGE + "."):
                out.add(base)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith(PACKAGE + "."))
    return {m for m in out if (REPORT / f"{m.removeprefix(PACKAGE + '.')}.py").exists()}


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(REPORT.glob("*.py")):
        name = PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}"
        graph[name] = _imports(path) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_report_modules_import_each_other_without_a_cycle() -> None:
    graph = import_graph()
    assert f"{PACKAGE}.build" in graph and graph[f"{PACKAGE}.build"], "the scan found no import at all"
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def _function_lengths(path: Path) -> dict[str, int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)  # type: ignore[operator]
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_synthetic_run_writer_is_split_at_its_seams() -> None:
    """make_synthetic_run was one 130-line function (manifest, records, memory, images, metrics): each is now a
    piece that can be read and changed alone."""
    lengths = _function_lengths(REPORT / "synthetic.py")
    assert max(lengths.values()) <= 60, {k: v for k, v in lengths.items() if v > 60}


def test_report_modules_stay_readable() -> None:
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in REPORT.glob("*.py")}
    assert max(sizes.values()) <= 500, {k: v for k, v in sizes.items() if v > 500}

"""Refuse, with one clear line, to start worker processes that would run the user's script again.

Python's multiprocessing starts a forkserver or spawn child by re-importing the main module (as `__mp_main__`), so
that functions and classes defined there can be unpickled. A script that calls evalkit at its top level, outside
`if __name__ == "__main__":`, therefore calls it again in every worker: there the second `evalkit.generate` found
the run directory locked by the first and the worker died with nothing in its own log (issue #24). This check runs
in the parent, before a worker starts: it finds the line of the main module's top level that led to this call and
refuses when that line is not under the guard. Interactive sessions, `python -c`, `python -m pkg` (a package's
`__main__` is never re-imported) and calls from inside the guard pass.
"""

from __future__ import annotations

import ast
import sys
from typing import Any

from evalkit.errors import EvalkitError


def main_module_file() -> str | None:
    """The file a spawn or forkserver child would re-import as `__mp_main__`, or None."""
    try:
        from multiprocessing import spawn

        data = spawn.get_preparation_data("evalkit-main-guard")
    except Exception:  # noqa: BLE001 - an odd interpreter state: multiprocessing itself will say what is wrong
        return None
    if data.get("init_main_from_path"):
        return str(data["init_main_from_path"])
    name = data.get("init_main_from_name")
    if not name or name == "__main__" or name.endswith(".__main__"):
        return None  # multiprocessing skips these too
    return getattr(sys.modules.get("__main__"), "__file__", None)


def calling_line(main: Any) -> int | None:
    """The line of the main module's top level that is running now (the call that led here), or None."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is getattr(main, "__dict__", None):
            return frame.f_lineno
        frame = frame.f_back
    return None


def _is_main_test(test: ast.expr) -> bool:
    """`__name__ == "__main__"`, either way round."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return (any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
            and any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides))


def guarded(source: str, line: int) -> bool:
    """Whether `line` of `source` is inside the body of an `if __name__ == "__main__":` (the else branch is not)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.If) and _is_main_test(node.test):
            if any(s.lineno <= line <= (s.end_lineno or s.lineno) for s in node.body):
                return True
    return False


def main_guard_problem(what: str) -> str | None:
    """Why starting `what` would make each new process run the caller's top-level line again, or None."""
    path = main_module_file()
    main = sys.modules.get("__main__")
    if path is None or main is None:
        return None
    line = calling_line(main)
    if line is None:
        return None  # called from a function the script's top level is not running (a thread, a callback)
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        if guarded(source, line):
            return None
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return None  # cannot tell: never refuse on a guess
    return (f"{path}:{line} calls evalkit at the script's top level, outside `if __name__ == \"__main__\":`; "
            f"evalkit's {what} start by re-importing the main module (Python's multiprocessing), which would run "
            "that line again in each of them. Put the calls under the guard (README, \"From Python\")")


def check_main_guard(what: str) -> None:
    """Raise EvalkitError (one line) when starting `what` would run the caller's top-level line again."""
    problem = main_guard_problem(what)
    if problem:
        raise EvalkitError(problem)

"""No hidden configuration: every EVALKIT_* name in evalkit/, install.sh and tools/ is in docs/environment.md's
table, and the table lists no name the code does not have (a stale row misleads as much as a missing one)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAME = re.compile(r"\bEVALKIT_[A-Z0-9_]+\b")


def names_in_code() -> dict[str, str]:
    """Every EVALKIT_* name in evalkit/, install.sh and tools/, with one file that has it."""
    files = [*sorted((REPO / "evalkit").rglob("*.py")), REPO / "install.sh", *sorted((REPO / "tools").rglob("*"))]
    found: dict[str, str] = {}
    for path in files:
        if path.is_file() and path.suffix in (".py", ".sh", ""):
            for name in NAME.findall(path.read_text(encoding="utf-8", errors="replace")):
                found.setdefault(name, str(path.relative_to(REPO)))
    return found


def names_in_table() -> dict[str, list[str]]:
    """The table's rows: name -> [meaning, default, who sets it]."""
    rows = {}
    for line in (REPO / "docs" / "environment.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*`(EVALKIT_[A-Z0-9_]+)`\s*\|(.*)\|\s*$", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in re.split(r"(?<!\\)\|", m.group(2))]
    return rows


def test_every_environment_variable_is_in_the_table() -> None:
    code, table = names_in_code(), names_in_table()
    missing = {name: where for name, where in code.items() if name not in table}
    assert not missing, f"EVALKIT_* names not in docs/environment.md's table: {missing}"
    stale = sorted(set(table) - set(code))
    assert not stale, f"docs/environment.md lists names no code has: {stale}"


def test_every_row_says_meaning_default_and_who() -> None:
    for name, cells in names_in_table().items():
        assert len(cells) == 3 and all(cells), (name, cells)
        assert cells[2].split()[0] in ("user", "evalkit", "retired", "nobody"), (name, cells[2])


def test_no_test_hook_in_production_code() -> None:
    hooks = {n: w for n, w in names_in_code().items() if "TEST" in n or "SIMULATE" in n}
    assert not hooks, f"test hooks in production code: {hooks}"

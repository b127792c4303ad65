"""The record types hold statically, not only when a record is validated at run time: mypy's TypedDict checks find
no field written that its record type does not declare, no required field left out, no value of another type and
no misspelt key read with [] anywhere in evalkit/ (evalkit.records, evalkit.record_types). At run time a reader
accepts keys it does not know (a newer evalkit of the same schema wrote them), so this is the check that keeps a
writer from adding an undeclared field (as the worker's `numerics` once was).

mypy's other findings (optional imports, numpy and torch stubs) are not gated here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy", reason="mypy is a dev dependency (./install.sh --dev)")

REPO = Path(__file__).resolve().parents[1]
GATED = ("typeddict-item", "typeddict-unknown-key", "literal-required")


def _typeddict_errors(args: list[str], cache: Path) -> list[str]:
    r = subprocess.run([sys.executable, "-m", "mypy", *args, "--ignore-missing-imports", "--follow-imports=silent",
                        "--no-error-summary", "--show-error-codes", "--cache-dir", str(cache)],
                       cwd=REPO, env={"MYPYPATH": str(REPO), "PATH": ""}, capture_output=True, text=True, timeout=900)
    assert r.returncode in (0, 1), r.stderr[-2000:] or r.stdout[-2000:]  # 2: mypy itself failed
    return [ln for ln in r.stdout.splitlines() if re.search(r"\[(%s)\]$" % "|".join(GATED), ln)]


def test_the_gate_sees_an_undeclared_field_and_a_misspelt_key(tmp_path: Path) -> None:
    src = tmp_path / "writer.py"
    src.write_text("from evalkit.records import GenerationRecord, LatencyRecord\n"
                   "def f(rec: GenerationRecord, lat: LatencyRecord) -> float:\n"
                   "    rec['numbers'] = 1\n"
                   "    return lat['median_sec']\n", encoding="utf-8")
    found = _typeddict_errors([str(src)], tmp_path / "cache")
    assert [ln.split(":")[1] for ln in found] == ["3", "4"], found


def test_evalkit_has_no_typeddict_error(tmp_path: Path) -> None:
    found = _typeddict_errors(["-p", "evalkit"], tmp_path / "cache")
    assert not found, "\n".join(found)

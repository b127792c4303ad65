"""docs/run-directory.md is tested against the record types: its field-by-field section is what
tools/record_docs.py writes from evalkit/records.py and evalkit/record_types.py, so a field added, removed or
re-typed in code without the document following fails here."""

from __future__ import annotations

import importlib.util
import re
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("record_docs", REPO / "tools" / "record_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_document_s_record_section_is_what_the_types_say() -> None:
    tool = _tool()
    text = tool.DOC.read_text(encoding="utf-8")
    assert tool.BEGIN in text and tool.END in text
    assert tool.updated(text) == text, "run `python tools/record_docs.py` (docs/run-directory.md is out of date)"


def test_every_field_of_every_record_type_has_a_row() -> None:
    tool = _tool()
    types = tool.record_types()
    assert len(types) > 20, [t.__name__ for t in types]
    section = tool.render()
    rows = set(re.findall(r"^\| `([A-Za-z_0-9]+)` \|", section, re.M))
    missing = sorted(f"{t.__name__}.{k}" for t in types for k in typing.get_type_hints(t) if k not in rows)
    assert not missing, missing
    for t in types:
        assert f"#### `{t.__name__}`" in section


def test_a_new_field_makes_the_document_out_of_date(monkeypatch) -> None:
    """The check can fail: a field added to a record type changes the rendered section."""
    tool = _tool()
    from evalkit import record_types

    text = tool.DOC.read_text(encoding="utf-8")
    monkeypatch.setitem(record_types.Placement.__annotations__, "new_field", int)
    assert tool.updated(text) != text

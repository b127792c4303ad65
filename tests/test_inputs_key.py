"""A stage's stored input key (metrics/inputs.json, report-inputs.json) is an InputsKey record: an unchanged rerun
trusts it only when it is one, and reruns (never crashes) on anything else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalkit.inputs_key import store_key, stored_key_matches
from evalkit.record_types import InputsKey
from evalkit.shapes import validate


def test_a_stored_key_is_an_inputs_key_record_and_matches_only_its_key(tmp_path: Path) -> None:
    out = tmp_path / "index.html"
    out.write_text("page")
    store_key(tmp_path / "k.json", "abc", "the inputs")
    validate(json.loads((tmp_path / "k.json").read_text()), InputsKey, "inputs key")
    assert stored_key_matches(tmp_path / "k.json", "abc", [out])
    assert not stored_key_matches(tmp_path / "k.json", "abd", [out])
    out.unlink()
    assert not stored_key_matches(tmp_path / "k.json", "abc", [out])  # an output removed: rerun


@pytest.mark.parametrize("text", ['{"key": 5, "covers": "x"}', '{"key": "abc"}', '["abc"]', "{", ""])
def test_a_key_file_of_another_shape_means_a_rerun(tmp_path: Path, text: str) -> None:
    (tmp_path / "k.json").write_text(text)
    assert stored_key_matches(tmp_path / "k.json", "abc", []) is False

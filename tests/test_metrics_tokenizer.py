"""#12.5: the scorer does not depend on the generator; the CLIP tokenizer lives in a neutral module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

METRICS = Path(__file__).resolve().parents[1] / "evalkit" / "metrics"


def test_no_metrics_module_imports_another_stage() -> None:
    offenders = []
    for py in METRICS.rglob("*.py"):
        for node in ast.walk(ast.parse(py.read_text())):
            mods = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            offenders += [f"{py.name}: {m}" for m in mods
                          if m.split(".")[:2] in (["evalkit", "generate"], ["evalkit", "report"], ["evalkit", "check"])]
    assert offenders == []


def test_neutral_clip_tokenizer_keeps_eos_at_77() -> None:
    pytest.importorskip("transformers")
    from evalkit.clip_tokenizer import build_clip_tokenizer, clip_bpe_path

    try:
        clip_bpe_path()
    except Exception as e:  # open-clip-torch not installed here
        pytest.skip(str(e))
    tok = build_clip_tokenizer()
    assert len(tok) == 49408
    ids = tok("a photo of a cat")["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|startoftext|>") and ids[-1] == tok.convert_tokens_to_ids("<|endoftext|>")

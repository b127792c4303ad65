"""The manifest's token counts come from the `tokenizers` files when the model has them (no transformers import at
start-up); they must be transformers' counts exactly, truncation included."""

from __future__ import annotations

import os
from pathlib import Path

from evalkit.generate.stage import token_counts
from evalkit.prompts import Prompt


def test_token_counts_equal_transformers(tiny_model_path: Path) -> None:
    from transformers import AutoTokenizer

    path = str(tiny_model_path)
    assert all(os.path.isfile(os.path.join(path, sub, "tokenizer.json")) for sub in ("tokenizer", "tokenizer_2")), \
        "the tiny model has no tokenizer.json: this test would not exercise the fast path"
    texts = ["a red cube", "Ünïcödé café — naïve 東京 🐈 prompt", " leading and  double  spaces ",
             " ".join(["a long prompt about a very detailed baroque cathedral interior"] * 20)]
    prompts = [Prompt(index=i, id=f"p{i:02d}", text=t, seed=1, line=i + 1) for i, t in enumerate(texts)]
    from evalkit.families.registry import default_family

    got = token_counts(path, prompts, 64, default_family())
    clip = AutoTokenizer.from_pretrained(os.path.join(path, "tokenizer"))
    t5 = AutoTokenizer.from_pretrained(os.path.join(path, "tokenizer_2"))
    for g, t in zip(got, texts):
        assert g["clip"] == len(clip(t, truncation=False).input_ids)
        assert g["t5"] == len(t5(t, truncation=False).input_ids)
    assert got[-1]["clip_truncated"] and got[-1]["t5_truncated"] and not got[0]["clip_truncated"]

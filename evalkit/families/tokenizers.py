"""Tokenizers the tiny and random builds use, made offline. Real tokenizer files cannot be had here (no hub); for
random or tiny weights only the token count matters, and the manifest says which tokenizer a build used.

- CLIP: the real byte-level BPE, rebuilt from the merges file open-clip-torch ships (evalkit/clip_tokenizer.py).
- T5: a word-level unigram in T5's SentencePiece format over the same vocabulary's words; T5 pipelines pad to
  max_sequence_length, so its counts change only which prompts read as truncated.
"""

from __future__ import annotations

from typing import Any

from evalkit.clip_tokenizer import build_clip_tokenizer, clip_bpe_path

__all__ = ["build_clip_tokenizer", "build_t5_tokenizer", "vocabulary_words"]


def vocabulary_words(limit: int = 30000) -> list[str]:
    """Whole ASCII words of CLIP's BPE vocabulary, most frequent first: a realistic word list for local tokenizers."""
    import gzip

    words: list[str] = []
    seen: set[str] = set()
    for line in gzip.open(clip_bpe_path()).read().decode("utf-8").split("\n")[1:]:
        parts = line.split()
        if len(parts) == 2 and parts[1].endswith("</w>"):
            w = parts[0] + parts[1][:-4]
            if w.isalpha() and w.isascii() and w not in seen:
                seen.add(w)
                words.append(w)
        if len(words) >= limit:
            break
    return words


def build_t5_tokenizer(model_max_length: int = 512) -> Any:
    """A word-level unigram tokenizer in T5's format (see the module docstring)."""
    import math

    from transformers import T5Tokenizer

    chars = [chr(c) for c in range(33, 127)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -10.0) for c in chars] + [("\u2581" + c, -9.0) for c in chars]
    pieces += [("\u2581" + w, -3.0 - math.log1p(i)) for i, w in enumerate(vocabulary_words())]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)

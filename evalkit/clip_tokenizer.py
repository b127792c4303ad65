"""CLIP's byte-level BPE tokenizer, rebuilt offline from the merges file that open-clip-torch ships.

Neutral home (issue #12.5): the generator (tiny pipelines) and the scorer (CLIP score with a checkpoint that
carries no tokenizer files) both need it, and no stage may import another stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError

CLIP_MAX_TOKENS = 77  # CLIP's text encoder has 77 positions


def clip_bpe_path() -> Path:
    """The real CLIP BPE merges file, shipped in the open-clip-torch wheel (found without importing open_clip,
    which needs torchvision)."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise EvalkitError("open-clip-torch is not installed; it ships the CLIP BPE vocabulary "
                           "(pip install --no-deps open-clip-torch)")
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        raise EvalkitError(f"{path}: CLIP BPE vocabulary missing from the open-clip-torch install")
    return path


def build_clip_tokenizer() -> Any:
    """CLIP's real byte-level BPE tokenizer (49408 tokens), rebuilt from open_clip's merges file."""
    import gzip

    from transformers import CLIPTokenizer

    from evalkit._bpe import bytes_to_unicode

    lines = gzip.open(clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab.extend("".join(m) for m in merges)
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=CLIP_MAX_TOKENS)

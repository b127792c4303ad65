"""Prompt files: one prompt a line, '#' comments and blank lines ignored, UTF-8.

Each prompt gets a stable id and seed derived from its text (and the run's base seed),
so the same prompt maps to the same image path and seed in every run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from evalkit.errors import EvalkitError


@dataclass(frozen=True)
class Prompt:
    index: int
    text: str
    id: str
    seed: int
    line: int  # 1-based line in the prompts file, for error messages


def prompt_seed(text: str, base_seed: int) -> int:
    """Seed for one prompt: a hash of the base seed and the text, in [0, 2^31)."""
    digest = hashlib.sha256(f"{base_seed}:{text}".encode("utf-8")).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def prompt_id(index: int, text: str) -> str:
    """`p<index>-<slug>-<sha8>`: readable, unique, and safe as a file name whatever the text."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:24].strip("-") or "prompt"
    sha8 = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return f"p{index:02d}-{slug}-{sha8}"


def parse_prompts(text: str, base_seed: int = 0, source: str = "<prompts>") -> list[Prompt]:
    prompts: list[Prompt] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "\x00" in line:
            raise EvalkitError(f"{source}:{lineno}: contains a NUL byte; is this a text file?")
        i = len(prompts)
        prompts.append(Prompt(index=i, text=line, id=prompt_id(i, line), seed=prompt_seed(line, base_seed), line=lineno))
    if not prompts:
        raise EvalkitError(f"{source}: no prompts (the file is empty or holds only comments and blank lines)")
    return prompts


def load_prompts(path: str | Path, base_seed: int = 0) -> list[Prompt]:
    """Read a prompts file, with one-line errors that name the file (and line) at fault."""
    path = Path(path)
    if not path.exists():
        raise EvalkitError(f"{path}: prompts file not found")
    if path.is_dir():
        raise EvalkitError(f"{path}: is a directory; expected a prompts text file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise EvalkitError(f"{path}:{line}: not UTF-8 text (invalid byte 0x{data[e.start]:02x} at offset {e.start})") from None
    return parse_prompts(text, base_seed=base_seed, source=str(path))

"""Where check and compare write their JUnit and Markdown, and the rule that keeps them off other files.

- Nothing is written, deleted or truncated before the inputs are validated and judged; then each output is written
  atomically (evalkit.io: temp file, fsync, rename), so a reader sees the old file or the whole new one.
- A path is written only where nothing is, or where an evalkit output is. An evalkit output is recognised by
  `MARKER` in its first or last 4 KiB: every JUnit and Markdown file evalkit writes carries it in a comment (XML
  and HTML comments: invisible in a rendered PR comment and to JUnit parsers), first in the JUnit, last in the
  Markdown (whose first line stays the verdict). Files evalkit wrote before the marker existed
  are recognised by their first lines (`<testsuites name="evalkit check">`, `## <icon> evalkit check: ...`), and an
  empty file holds nothing to lose (as `mktemp` makes). Anything else at an output path (a user's file, a
  directory, a symbolic link) is refused with exit 2 before any input is read: `claim` runs first.
- When the inputs cannot be judged (exit 2), the outputs become an ERROR rendering, so a CI job that uploads them
  whatever the exit code never shows the previous run's PASS. Only into existing folders: a mistyped run path does
  not grow a `check/` folder.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from evalkit.errors import EvalkitError

MARKER = "evalkit-output:"
_HEAD_BYTES = 4096
# What evalkit wrote before the marker: the JUnit root element, or the Markdown's first heading.
_LEGACY = re.compile(r"""<testsuites name="evalkit (check|compare)"|\A## \S+ evalkit (check|compare): """)


def marker_comment(kind: str, what: str) -> str:
    """The comment put in every output: what wrote it, so a later run knows it may replace it."""
    return f"<!-- {MARKER} evalkit {kind} {what}; evalkit replaces this file when it runs again -->"


@dataclass(frozen=True)
class Outputs:
    """The output paths of one invocation (None: skipped with '-')."""

    junit: Path | None
    markdown: Path | None

    def paths(self) -> list[Path]:
        return [p for p in (self.junit, self.markdown) if p is not None]


def plan(junit: str | None, markdown: str | None, default_dir: Path, names: tuple[str, str]) -> Outputs:
    """The paths from --junit/--markdown (`-` skips one; unset: `default_dir/names[i]`)."""
    def one(arg: str | None, name: str) -> Path | None:
        return None if arg == "-" else Path(arg) if arg else default_dir / name

    out = Outputs(one(junit, names[0]), one(markdown, names[1]))
    if out.junit is not None and out.markdown is not None and _same(out.junit, out.markdown):
        raise EvalkitError(f"--junit and --markdown both name {out.junit}; give each its own path")
    return out


def _same(a: Path, b: Path) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)


def why_not_ours(path: Path) -> str | None:
    """None when `path` may be written (nothing there, or an evalkit output); else why it may not."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot inspect it ({e.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link (give the path of the file itself)"
    if stat.S_ISDIR(st.st_mode):
        return "it is a directory"
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if st.st_size == 0:
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES).decode("utf-8", errors="replace")
            # The Markdown keeps its verdict heading first (a PR comment's preview line) and the marker last.
            f.seek(max(st.st_size - _HEAD_BYTES, 0))
            tail = f.read(_HEAD_BYTES).decode("utf-8", errors="replace")
    except OSError as e:
        return f"cannot read it ({e.strerror})"
    if MARKER in head or MARKER in tail or _LEGACY.search(head.lstrip("\ufeff")):
        return None
    return f"it holds a file evalkit did not write (no '{MARKER}' marker in its first lines)"


def claim(outputs: Outputs) -> None:
    """Refuse (exit 2), before any input is read, an output path holding something evalkit did not write."""
    for path in outputs.paths():
        why = why_not_ours(path)
        if why is not None:
            raise EvalkitError(f"{path}: refusing to overwrite: {why}; choose another --junit/--markdown path, "
                               f"'-' to skip it, or move the file away")


def write(outputs: Outputs, junit: bytes | None, markdown: str | None, *, make_dirs: bool = True) -> list[Path]:
    """Write the rendered outputs atomically; returns the paths written. Each path is checked again right before
    it is replaced (a file may have appeared there while the inputs were read). With `make_dirs` false, a path whose
    folder does not exist is left out rather than created."""
    from evalkit.io import atomic_write_bytes

    written = []
    for path, data in ((outputs.junit, junit), (outputs.markdown, None if markdown is None else markdown.encode())):
        if path is None or data is None:
            continue
        if not path.parent.is_dir():
            if not make_dirs:
                continue
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise EvalkitError(f"{path.parent}: cannot create output directory ({e.strerror})") from None
        why = why_not_ours(path)
        if why is not None:
            raise EvalkitError(f"{path}: refusing to overwrite: {why}")
        atomic_write_bytes(path, data)
        written.append(path)
    return written

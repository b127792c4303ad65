"""Prompt files and prompt sets, UTF-8, with errors that name the file and line at fault.

Formats, chosen by the file's extension:
  .txt (and anything else)  one prompt a line; '#' comments and blank lines ignored
  .csv / .tsv               a header row, then one prompt a row, in the prompt column (DrawBench's CSV,
                            PartiPrompts' TSV). A .tsv has no quoting: tabs separate, quotes are text.
  .jsonl                    one JSON object a line (the prompt in a field) or one JSON string a line
  .json                     a list of such objects or strings, or an object holding one such list
                            (COCO captions: {"annotations": [{"caption": ...}, ...]})
The prompt column or field is `column`, else the first of prompt / prompts / text / caption (any case).
An optional category column (`category_column`, else "category" in any case) is carried into the manifest.

Lines are split on "\n" (and "\r\n", "\r") only. str.splitlines would also split on U+2028, U+2029, U+0085, \x0b
and \x0c, which may sit inside a prompt: that would cut one prompt in two and shift every later line number.

Each prompt gets a stable id and seed derived from its text (and the run's base seed), so the same prompt maps
to the same image path and seed in every run. Empty prompts (in a column) and duplicate prompts are errors:
a duplicate has the same seed, so it would give an identical image that counts twice in every mean.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError, suggest

DEFAULT_PROMPT_COLUMNS = ("prompt", "prompts", "text", "caption")
DEFAULT_CATEGORY_COLUMNS = ("category",)
TABULAR = {".csv": ",", ".tsv": "\t"}


@dataclass(frozen=True)
class Prompt:
    index: int
    text: str
    id: str
    seed: int
    line: int  # 1-based line in the prompts file (where the row or record starts), for error messages
    category: str | None = None  # from a prompt set's category column


def prompt_seed(text: str, base_seed: int) -> int:
    """Seed for one prompt: a hash of the base seed and the text, in [0, 2^31)."""
    digest = hashlib.sha256(f"{base_seed}:{text}".encode("utf-8")).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def prompt_id(index: int, text: str) -> str:
    """`p<index>-<slug>-<sha8>`: readable, unique, and safe as a file name whatever the text."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:24].strip("-") or "prompt"
    sha8 = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return f"p{index:02d}-{slug}-{sha8}"


def split_lines(text: str) -> list[str]:
    """Lines as a text editor numbers them: split on \\n, \\r\\n and \\r, never on Unicode separators."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def parse_prompts(text: str, base_seed: int = 0, source: str = "<prompts>") -> list[Prompt]:
    """Prompts of a .txt prompts file: one a line, '#' comments and blank lines ignored."""
    rows = []
    for lineno, raw in enumerate(split_lines(text), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            if "\x00" in line:
                raise EvalkitError(f"{source}:{lineno}: contains a NUL byte; is this a text file?")
            rows.append((lineno, line, None))
    return _build(rows, base_seed, source, what="prompt")


def load_prompts(path: str | Path, base_seed: int = 0, column: str | None = None,
                 category_column: str | None = None) -> list[Prompt]:
    """Read a prompts file in any supported format (see the module docstring), with one-line errors naming the
    file and line at fault. `column` picks the prompt column/field (`--prompt-column`); `category_column` the
    category column (default: a "category" column when there is one)."""
    path = Path(path)
    text = _read_text(path)
    source = str(path)
    suffix = path.suffix.lower()
    if suffix in TABULAR:
        rows = _tabular_rows(text, TABULAR[suffix], source, column, category_column)
    elif suffix == ".jsonl":
        rows = _jsonl_rows(text, source, column, category_column)
    elif suffix == ".json":
        rows = _json_rows(text, source, column, category_column)
    else:
        if column or category_column:
            flag = "--prompt-column" if column else "category_column"
            raise EvalkitError(f"{path}: {flag} applies to .csv, .tsv, .jsonl and .json prompt sets; a {suffix or 'plain'} "
                               "file holds one prompt a line")
        return parse_prompts(text, base_seed=base_seed, source=source)
    return _build(rows, base_seed, source, what=f"prompt in {rows_label(column)}")


def rows_label(column: str | None) -> str:
    return f"column {column!r}" if column else "the prompt column"


# ------------------------------------------------------------------------------------------- reading

def _read_text(path: Path) -> str:
    if not path.exists():
        raise EvalkitError(f"{path}: prompts file not found")
    if path.is_dir():
        raise EvalkitError(f"{path}: is a directory; expected a prompts file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise EvalkitError(f"{path}:{line}: not UTF-8 text (invalid byte 0x{data[e.start]:02x} at offset {e.start})") from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise EvalkitError(f"{path}:{line}: contains a NUL byte; is this a text file?")
    return text


def _build(rows: list[tuple[int, str, str | None]], base_seed: int, source: str, what: str) -> list[Prompt]:
    """Prompts from (line, text, category) rows: empty and duplicate prompts are errors naming both lines."""
    prompts: list[Prompt] = []
    first_line: dict[str, int] = {}
    for lineno, raw, category in rows:
        text = raw.strip()
        if not text:
            raise EvalkitError(f"{source}:{lineno}: empty {what}")
        if text in first_line:
            short = text if len(text) <= 60 else text[:57] + "..."
            raise EvalkitError(f"{source}:{lineno}: duplicate prompt, the same text as line {first_line[text]} "
                               f"({short!r}); remove one (same text, same seed: an identical image counted twice)")
        first_line[text] = lineno
        i = len(prompts)
        prompts.append(Prompt(index=i, text=text, id=prompt_id(i, text), seed=prompt_seed(text, base_seed),
                              line=lineno, category=(category.strip() or None) if category is not None else None))
    if not prompts:
        raise EvalkitError(f"{source}: no prompts (the file is empty or holds only comments, blank lines or a header)")
    return prompts


def _pick(names: list[str], wanted: str | None, defaults: tuple[str, ...], source: str, what: str,
          required: bool) -> str | None:
    """The column/field to read: `wanted` exactly (else an error listing what there is), or the first default
    present in any case."""
    if wanted is not None:
        if wanted in names:
            return wanted
        raise EvalkitError(f"{source}: no {what} {wanted!r} (there is: {', '.join(map(repr, names)) or 'nothing'})."
                           + suggest(wanted, names))
    lower = {n.strip().lower(): n for n in reversed(names)}
    for d in defaults:
        if d in lower:
            return lower[d]
    if required:
        raise EvalkitError(f"{source}: no {what} named {', '.join(defaults)} (there is: "
                           f"{', '.join(map(repr, names)) or 'nothing'}); choose one with --prompt-column")
    return None


def _tabular_rows(text: str, delimiter: str, source: str, column: str | None,
                  category_column: str | None) -> list[tuple[int, str, str | None]]:
    # io.StringIO(newline="") hands csv the line ends untouched and splits only on \r and \n, never on U+2028.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise EvalkitError(f"{source}: empty file; expected a header row naming the prompt column")
        col = _pick(header, column, DEFAULT_PROMPT_COLUMNS, source, "column", required=True)
        cat = _pick(header, category_column, DEFAULT_CATEGORY_COLUMNS, source, "category column", required=False)
        p_at, c_at = header.index(col), (header.index(cat) if cat is not None else None)
        rows: list[tuple[int, str, str | None]] = []
        start = reader.line_num + 1
        for record in reader:
            lineno, start = start, reader.line_num + 1  # a quoted field may span lines: report where the row starts
            if not record or all(not f.strip() for f in record):
                continue  # a blank line
            if len(record) <= p_at:
                raise EvalkitError(f"{source}:{lineno}: this row has {len(record)} field{'s' if len(record) != 1 else ''}; "
                                   f"the prompt column {col!r} is field {p_at + 1} of the header's {len(header)}")
            category = record[c_at] if c_at is not None and c_at < len(record) else None
            rows.append((lineno, record[p_at], category))
    except csv.Error as e:
        raise EvalkitError(f"{source}:{reader.line_num}: not valid {'TSV' if delimiter == chr(9) else 'CSV'} ({e})") from None
    return rows


def _record_row(obj: Any, lineno: int, source: str, column: str | None, category_column: str | None,
                names: list[str]) -> tuple[int, str, str | None]:
    """(line, prompt, category) from one JSON record: a string, or an object with the prompt field."""
    if isinstance(obj, str):
        if column is not None:
            raise EvalkitError(f"{source}:{lineno}: a plain string where an object with field {column!r} was expected")
        return lineno, obj, None
    if not isinstance(obj, dict):
        raise EvalkitError(f"{source}:{lineno}: expected a JSON object or string, got {type(obj).__name__}")
    field = _pick(list(obj), column, DEFAULT_PROMPT_COLUMNS, f"{source}:{lineno}", "field", required=True)
    value = obj[field]
    if not isinstance(value, str):
        raise EvalkitError(f"{source}:{lineno}: field {field!r} should be a string, got {type(value).__name__}")
    names.append(field)
    cat_field = _pick(list(obj), category_column, DEFAULT_CATEGORY_COLUMNS, f"{source}:{lineno}", "category field",
                      required=False)
    cat = obj.get(cat_field) if cat_field else None
    return lineno, value, cat if isinstance(cat, str) else (None if cat is None else str(cat))


def _jsonl_rows(text: str, source: str, column: str | None,
                category_column: str | None) -> list[tuple[int, str, str | None]]:
    rows, names = [], []
    for lineno, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalkitError(f"{source}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise EvalkitError(f"{source}:{lineno}: invalid JSON (nested too deeply to be a prompt record)") from None
        rows.append(_record_row(obj, lineno, source, column, category_column, names))
    return rows


def _json_rows(text: str, source: str, column: str | None,
               category_column: str | None) -> list[tuple[int, str, str | None]]:
    """Records of a .json prompt set with the line each starts on (json.loads alone would lose the lines)."""
    dec = json.JSONDecoder()
    line_of = _LineIndex(text)
    try:
        pos = _skip_ws(text, 0)
        if pos < len(text) and text[pos] == "[":
            items, _end = _array_items(dec, text, pos)
        elif pos < len(text) and text[pos] == "{":
            items = _records_list_in_object(dec, text, pos, source, line_of)
        else:
            raise EvalkitError(f"{source}:{line_of(pos)}: expected a JSON list of prompts, or an object holding one")
    except json.JSONDecodeError as e:
        raise EvalkitError(f"{source}:{e.lineno}: invalid JSON ({e.msg})") from None
    except RecursionError:
        raise EvalkitError(f"{source}: invalid JSON (nested too deeply to be a prompt set)") from None
    except IndexError:  # the text ended inside an object: a cut file
        raise EvalkitError(f"{source}:{line_of(len(text))}: invalid JSON (the file ends inside an object: truncated?)") from None
    names: list[str] = []
    return [_record_row(obj, line_of(at), source, column, category_column, names) for at, obj in items]


def _records_list_in_object(dec: json.JSONDecoder, text: str, pos: int, source: str,
                            line_of: "_LineIndex") -> list[tuple[int, Any]]:
    """The list of records inside a top-level object: the one list of objects or strings that carries prompts
    (COCO holds "images" and "annotations"; the captions are in "annotations")."""
    lists: dict[str, list[tuple[int, Any]]] = {}
    pos = _skip_ws(text, pos + 1)
    while pos < len(text) and text[pos] != "}":
        key, pos = dec.raw_decode(text, pos)
        pos = _skip_ws(text, pos)
        if text[pos] != ":":
            raise json.JSONDecodeError("Expecting ':' delimiter", text, pos)
        pos = _skip_ws(text, pos + 1)
        if text[pos] == "[":
            lists[str(key)], pos = _array_items(dec, text, pos)
        else:
            _value, pos = dec.raw_decode(text, pos)
        pos = _skip_ws(text, pos)
        if text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
    candidates = {k: v for k, v in lists.items() if v and all(
        isinstance(o, str) or (isinstance(o, dict) and any(n.lower() in DEFAULT_PROMPT_COLUMNS for n in o))
        for _at, o in v)}
    if len(candidates) == 1:
        return next(iter(candidates.values()))
    if not candidates:
        raise EvalkitError(f"{source}: no list of prompts found (lists: {', '.join(lists) or 'none'}); expected a "
                           f"list of strings or of objects with a {'/'.join(DEFAULT_PROMPT_COLUMNS)} field")
    raise EvalkitError(f"{source}: several lists could hold the prompts ({', '.join(candidates)}); keep one")


def _array_items(dec: json.JSONDecoder, text: str, pos: int) -> tuple[list[tuple[int, Any]], int]:
    """(offset, value) of each item of the JSON array starting at `pos`, and the offset just past the array."""
    items = []
    pos = _skip_ws(text, pos + 1)
    while pos < len(text) and text[pos] != "]":
        obj, end = dec.raw_decode(text, pos)
        items.append((pos, obj))
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
        elif pos < len(text) and text[pos] != "]":
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
    if pos >= len(text):
        raise json.JSONDecodeError("Unterminated array", text, pos)
    return items, pos + 1


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\n\r":
        pos += 1
    return pos


class _LineIndex:
    """1-based line of a character offset, counting \\n only (JSON's own line breaks)."""

    def __init__(self, text: str) -> None:
        self._starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def __call__(self, offset: int) -> int:
        import bisect

        return bisect.bisect_right(self._starts, offset)

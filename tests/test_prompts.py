"""Prompt files: Unicode separators inside a line, and prompt sets as TSV/CSV/JSONL/JSON with categories, with
the same bad-input guarantees (file:line, empty and duplicate prompts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evalkit.errors import EvalkitError
from evalkit.prompts import load_prompts, parse_prompts, prompt_id, prompt_seed
from evalkit.records import prompt_entry

DATA = Path(__file__).parent / "data" / "prompts"
SEPARATORS = ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]


@pytest.mark.parametrize("sep", SEPARATORS, ids=lambda s: f"U+{ord(s):04X}")
def test_unicode_separator_inside_a_line_neither_splits_nor_shifts_lines(tmp_path: Path, sep: str) -> None:
    f = tmp_path / "p.txt"
    f.write_text(f"# header\nfirst{sep}half and second half\nsecond prompt\n\n", encoding="utf-8")
    prompts = load_prompts(f)
    assert [p.text for p in prompts] == [f"first{sep}half and second half", "second prompt"]
    assert [p.line for p in prompts] == [2, 3]
    f.write_text(f"a{sep}b\nok\nok\n", encoding="utf-8")
    with pytest.raises(EvalkitError, match=rf"^{f}:3: duplicate prompt, the same text as line 2 "):
        load_prompts(f)


def test_crlf_and_cr_line_ends_number_lines_as_an_editor(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_bytes(b"one\r\ntwo\rthree\n")
    assert [(p.text, p.line) for p in load_prompts(f)] == [("one", 1), ("two", 2), ("three", 3)]


def test_txt_ids_and_seeds_unchanged() -> None:
    prompts = parse_prompts("# c\nA cat\n\nA dog\n", base_seed=3)
    assert [(p.index, p.id, p.seed, p.line, p.category) for p in prompts] == [
        (0, prompt_id(0, "A cat"), prompt_seed("A cat", 3), 2, None),
        (1, prompt_id(1, "A dog"), prompt_seed("A dog", 3), 4, None)]


def test_parti_like_tsv_with_categories() -> None:
    prompts = load_prompts(DATA / "parti-like.tsv")
    assert [(p.text, p.category, p.line) for p in prompts] == [
        ("bond", "Abstract", 2),
        ('A "hello world" sign on a brick wall', "World Knowledge", 3),  # no quoting in TSV: quotes are text
        ("A red cube on top of a blue sphere", "Artifacts", 4),
        ("A photo of a koala bear wearing sunglasses, in the style of a 1970s magazine", "Animals", 6),
    ]
    assert prompts[3].id == prompt_id(3, prompts[3].text) and prompts[3].seed == prompt_seed(prompts[3].text, 0)


def test_drawbench_like_csv_quoted_fields_and_row_lines() -> None:
    prompts = load_prompts(DATA / "drawbench-like.csv")
    assert [p.line for p in prompts] == [2, 3, 4, 6]  # the third row spans lines 4-5
    assert prompts[1].text == 'A storefront with "Hello World" written on it, at night'
    assert prompts[2].text == "A painting of a fox,\nwith a line break inside the quoted field"
    assert [p.category for p in prompts] == ["Colors", "Text", "Positional", "Positional"]


def test_coco_like_json_finds_the_captions_with_their_lines() -> None:
    prompts = load_prompts(DATA / "coco-like.json")
    assert [p.text for p in prompts] == ["A living room with a couch, a television and a wooden table.",
                                         "A room with chairs, a table, and a woman in it.",
                                         "A big brown bear sitting in the grass."]
    assert [p.line for p in prompts] == [8, 9, 10]
    assert all(p.category is None for p in prompts)


def test_jsonl_objects_and_strings() -> None:
    prompts = load_prompts(DATA / "prompts.jsonl")
    assert [(p.text, p.category, p.line) for p in prompts] == [
        ("A lighthouse on a cliff at dusk", "Scenes", 1), ("Two cups of coffee on a marble counter", "Objects", 3),
        ("A plain string is a prompt too", None, 4)]


def test_category_reaches_the_manifest_entry() -> None:
    p = load_prompts(DATA / "parti-like.tsv")[1]
    assert prompt_entry(p)["category"] == "World Knowledge"
    assert "category" not in prompt_entry(parse_prompts("x\n")[0])


def test_explicit_column(tmp_path: Path) -> None:
    f = tmp_path / "set.csv"
    f.write_text("id,caption_en,caption_de\n1,A dog,Ein Hund\n2,A cat,Eine Katze\n", encoding="utf-8")
    with pytest.raises(EvalkitError, match=r"no column named prompt, prompts, text, caption .*'caption_en'.*--prompt-column"):
        load_prompts(f)
    assert [p.text for p in load_prompts(f, column="caption_de")] == ["Ein Hund", "Eine Katze"]
    with pytest.raises(EvalkitError, match=r"no column 'caption_fr' .*Did you mean: caption_en"):
        load_prompts(f, column="caption_fr")
    txt = tmp_path / "p.txt"
    txt.write_text("x\n")
    with pytest.raises(EvalkitError, match="--prompt-column applies to .csv, .tsv, .jsonl and .json"):
        load_prompts(txt, column="prompt")


@pytest.mark.parametrize("name, body, message", [
    ("empty.csv", "prompt,category\nA dog,x\n  ,y\n", r"empty.csv:3: empty prompt in the prompt column$"),
    ("dup.tsv", "Prompt\tCategory\nA dog\tx\nA cat\ty\nA dog\tz\n",
     r"dup.tsv:4: duplicate prompt, the same text as line 2 \('A dog'\)"),
    ("short.csv", "id,prompt\n1,A dog\n2\n", r"short.csv:3: this row has 1 field; the prompt column 'prompt' is field 2"),
    ("bad.jsonl", '{"prompt": "a"}\n{"prompt": "b"\n', r"bad.jsonl:2: invalid JSON"),
    ("nofield.jsonl", '{"prompt": "a"}\n{"title": "b"}\n', r"nofield.jsonl:2: no field named prompt"),
    ("notstr.json", '[\n {"prompt": "a"},\n {"prompt": 3}\n]\n', r"notstr.json:3: field 'prompt' should be a string, got int"),
    ("dup.json", '[\n "a",\n\n "a"\n]\n', r"dup.json:4: duplicate prompt, the same text as line 2"),
    ("bad.json", '[\n "a",\n "b"\n', r"bad.json:\d+: invalid JSON"),
    ("header.csv", "prompt\n", r"header.csv: no prompts"),
    ("nul.txt", "ok\nbad\x00line\n", r"nul.txt:2: contains a NUL byte"),
])
def test_bad_prompt_sets_name_file_and_line(tmp_path: Path, name: str, body: str, message: str) -> None:
    f = tmp_path / name
    f.write_text(body, encoding="utf-8")
    with pytest.raises(EvalkitError) as e:
        load_prompts(f)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(str(tmp_path))
    import re

    assert re.search(message, str(e.value)), str(e.value)


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "latin1.csv"
    f.write_bytes("prompt\nok\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(EvalkitError, match=r"latin1.csv:3: not UTF-8 text"):
        load_prompts(f)

"""The Summary section as a paper reviewer reads it (issue #24), on a run shaped like the tiny model's CPU run:
the model's random weights said up front, GPU memory's absence said once, one unit and one format per column,
a noise floor with its significant digits, no "Fastest" or bold value the numbers cannot back or the digits
cannot show, and sentences that do not run into each other."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from evalkit.io import atomic_write_json
from evalkit.report import build_report
from evalkit.report.data import load_report_data
from evalkit.report.numbers import SecondsColumn, decimals_for, separating_decimals
from evalkit.report.summary import highlights, quality_column
from evalkit.rundir import write_summary
from report_fixtures import TINY_NOTE, synthetic_run, tiny_like_run


@pytest.fixture(scope="module")
def tiny_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tiny_like_run(tmp_path_factory.mktemp("summary"))
    build_report(root, quiet=True, figures=False)
    return root


def _copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / root.name
    shutil.copytree(root, dst)
    return dst


def _page(root: Path) -> str:
    return (root / "index.html").read_text(encoding="utf-8")


class _Tables(HTMLParser):
    """Rows of cell texts of every <table id=...>, and the text of every <p class="note"> and banner."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[dict[str, Any]]]] = {}
        self.notes: list[str] = []
        self._table: str | None = None
        self._cell: dict[str, Any] | None = None
        self._note: list[str] | None = None
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "table" and a.get("id"):
            self._table = a["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = {"text": "", "class": a.get("class") or "", "colspan": int(a.get("colspan") or 1)}
        elif tag == "p" and "note" in (a.get("class") or "").split() or tag == "div" and "banner" in (a.get("class") or ""):
            self._note = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1
        elif tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None and self._table:
            self._cell["text"] = " ".join(self._cell["text"].split())
            self.tables[self._table][-1].append(self._cell)
            self._cell = None
        elif tag in ("p", "div") and self._note is not None:
            self.notes.append(" ".join("".join(self._note).split()))
            self._note = None

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._cell is not None:
            self._cell["text"] += data
        if self._note is not None:
            self._note.append(data)


def _parse(page: str) -> _Tables:
    p = _Tables()
    p.feed(page)
    return p


def _column(table: list[list[dict[str, Any]]], header: str) -> list[str]:
    """The body cells under the header cell that starts with `header` (a one-row header)."""
    head = [c["text"] for c in table[0]]
    i = next(k for k, h in enumerate(head) if h.startswith(header))
    return [row[i]["text"] for row in table[1:] if len(row) > i]


# ---------------------------------------------------------------- the model

def test_tiny_models_random_weights_are_said_before_any_number(tiny_like: Path) -> None:
    page = _page(tiny_like)
    notice = page.index('id="model-notice"')
    assert notice < page.index('<section id="summary">')
    banner = next(n for n in _parse(page).notes if n.startswith("Test model with random weights"))
    assert "images are noise" in banner
    # What the manifest says, shown as it says it: the flags alone would read as a normal model.
    assert "random_weights=false" in banner and "quality_meaningful=true" in banner and TINY_NOTE in banner


def test_other_models_get_their_own_notice_or_none(tmp_path: Path) -> None:
    synthetic = synthetic_run(tmp_path, "synth")
    assert "Synthetic demo data: not a measurement." in _page_of(synthetic)
    hub = synthetic_run(tmp_path, "hub")
    manifest = json.loads((hub / "manifest.json").read_text())
    manifest["model"] = {"spec": "black-forest-labs/FLUX.1-dev", "kind": "hub", "path": "/hf", "random_weights": False,
                         "quality_meaningful": True, "note": ""}
    manifest["config"] = {}
    atomic_write_json(hub / "manifest.json", manifest)
    assert 'id="model-notice"' not in _page_of(hub)
    random = synthetic_run(tmp_path, "random", random_weights=True, device="cuda")
    page = _page_of(random)
    assert 'id="model-notice"' not in page and 'id="random-weights-banner"' in page  # its own, stronger banner


def _page_of(root: Path) -> str:
    return build_report(root, quiet=True, figures=False).read_text(encoding="utf-8")


# ---------------------------------------------------------------- text

def test_sentences_of_the_notes_do_not_run_together(tiny_like: Path) -> None:
    """"…for the same prompt and seed.FID: …": a template line ended in a tag that ate the space."""
    notes = _parse(_page(tiny_like)).notes
    assert any("same prompt and seed. FID:" in n for n in notes)
    joined = [m.group(0) for n in notes for m in re.finditer(r"\b[a-z]{2,}\.[A-Z][a-z]", n)]
    assert joined == []


# ---------------------------------------------------------------- memory and speed table

def test_cpu_run_says_no_gpu_memory_once_not_per_row(tiny_like: Path) -> None:
    page = _page(tiny_like)
    reason = "device is cpu: no CUDA allocator; see cpu_peak_rss_gib (host RAM)"
    assert page.count(reason) == 1 and "n/a (CPU" not in page
    table = _parse(page).tables["perf-table"]
    head = [c["text"] for c in table[0]]
    assert not any("GPU GiB" in h for h in head) and len(table[1:]) == 5
    assert all(len(row) == len(head) for row in table[1:])  # no row spans a column that is not there


def test_a_backend_without_gpu_numbers_in_a_gpu_run_keeps_its_own_reason(tmp_path: Path) -> None:
    root = synthetic_run(tmp_path, device="cuda")
    path = root / "generation" / "quanto-int8.json"
    rec = json.loads(path.read_text())
    rec["memory"].update({k: None for k in rec["memory"] if k.endswith("_gib") and k != "cpu_peak_rss_gib"},
                         device="cpu", cuda_reason="offloaded to CPU by the recipe")
    path.write_text(json.dumps(rec))
    write_summary(root)
    page = _page_of(root)
    assert page.count("n/a (CPU: offloaded to CPU by the recipe)") == 1
    assert "GPU GiB" in page


def test_each_time_column_has_one_unit_and_one_format(tiny_like: Path) -> None:
    """Load times 690 ms … 1.04 s printed as "988.2 ms" beside "1.04 s"; now the unit is the column's."""
    page = _page(tiny_like)
    table = _parse(page).tables["perf-table"]
    assert 'Load time<br><span class="unit">s</span>' in page
    loads = _column(table, "Load time")
    assert loads == ["0.815", "0.690", "0.876", "1.040", "0.988"]  # bf16 first, then the library order
    lat = [re.match(r"\d+\.\d+", c).group(0) for c in _column(table, "Latency median")]
    assert {len(v.split(".")[1]) for v in lat} == {3} and not any("ms" in c for c in _column(table, "Latency"))
    weights = _column(table, "Weights")
    assert {len(v.split(".")[1]) for v in weights} == {4}, weights  # 0.0150, never 0.015 beside 0.0186


def test_seconds_column_picks_one_unit() -> None:
    assert SecondsColumn([0.988, 1.04]).unit == "s" and SecondsColumn([0.69, 0.99]).unit == "ms"
    col = SecondsColumn([0.9882, 1.0401, 0.6903])
    assert [col(v) for v in (0.9882, 1.0401, 0.6903)] == ["0.988", "1.040", "0.690"]
    ms = SecondsColumn([0.1067, 0.0885, 0.112])
    assert [ms.with_unit(v) for v in (0.1067, 0.0885)] == ["106.7 ms", "88.5 ms"]


# ---------------------------------------------------------------- quality table

def _calibrate(root: Path, lpips_floor: float, display: str) -> None:
    atomic_write_json(root / "calibration.json", {
        "schema": "evalkit.calibration/1", "run_id": root.name, "reference_backend": "bf16", "device": "cpu",
        "created_utc": "2026-12-05T00:00:00Z", "n_prompts": 3, "model": "tiny", "perturbations": {},
        "metrics": {"lpips_alex": {"higher_is_better": False, "identity": 0.0, "scale": "linear",
                                   "floor": {"status": "ok", "value": lpips_floor, "identical": False, "from": "batch2",
                                             "display": display}}}})


def test_noise_floor_keeps_its_significant_digits(tiny_like: Path, tmp_path: Path) -> None:
    """calibrate's display rounds 0.0000666 to "0.0001" (1 digit) beside LPIPS values printed with three."""
    root = _copy(tiny_like, tmp_path)
    _calibrate(root, 6.66e-05, "0.0001")
    page = _page_of(root)
    tables = _parse(page)
    floor_row = tables.tables["quality-table"][-1]
    assert floor_row[0]["text"] == "noise floor"
    lpips = floor_row[1]["text"]
    assert lpips.startswith("0.0000666") and "0.0001 " not in lpips + " "
    values = [r[1]["text"].split(" ")[0] for r in tables.tables["quality-table"][2:-1]]
    assert {len(v.split(".")[1]) for v in values + [lpips.split(" ")[0]]} == {7}, values  # one column format
    tex = (root / "tables" / "quality.tex").read_text()
    assert "0.0000666" in next(line for line in tex.splitlines() if "noise floor" in line)


def test_bold_value_shows_the_digits_that_make_it_best(tiny_like: Path) -> None:
    """SSIM 0.99975 [0.99975, 0.99975] is clear of 0.99974 [0.99973, 0.99974]; at four decimals both read
    0.9997 [0.9997, 0.9997/0.9998] and the bold rested on digits no one could see."""
    table = _parse(_page(tiny_like)).tables["quality-table"]
    head = [c["text"] for c in table[0]]
    bold_seen = 0
    for col in range(1, len(head)):
        rows = [r for r in table[1:] if len(r) > col and "[" in r[col]["text"] and "partial" not in r[0]["text"]]
        bold = [r for r in rows if "best" in r[col]["class"].split()]
        for b in bold:
            bold_seen += 1
            lo, hi = map(float, re.search(r"\[([^,]+), ([^\]]+)\]", b[col]["text"]).groups())
            higher = "higher is better" in head[col]
            for r in rows:
                if r is b:
                    continue
                olo, ohi = map(float, re.search(r"\[([^,]+), ([^\]]+)\]", r[col]["text"]).groups())
                assert (lo > ohi) if higher else (hi < olo), (head[col], b[0]["text"], r[0]["text"])
    assert bold_seen >= 1  # SSIM's gguf-q8_0 is bold, with the digits that show why
    data = load_report_data(tiny_like)
    ssim = next(m for m in data.metrics if m.key == "ssim")
    assert quality_column(data, ssim).best == "gguf-q8_0" and quality_column(data, ssim).decimals == 5


def test_a_lead_no_printable_digit_shows_is_not_bold(tiny_like: Path, tmp_path: Path) -> None:
    root = _copy(tiny_like, tmp_path)
    for name, (lo, hi) in {"gguf-q8_0": (0.9997500000011, 0.9997500000012),
                           "torchao-int8wo": (0.9997500000001, 0.9997500000002),
                           "quanto-int8": (0.9997500000003, 0.9997500000004)}.items():
        path = root / "metrics" / f"{name}.json"
        rec = json.loads(path.read_text())
        rec["metrics"]["ssim"].update(mean=(lo + hi) / 2, ci_low=lo, ci_high=hi)
        path.write_text(json.dumps(rec))
    write_summary(root)
    data = load_report_data(root)
    ssim = next(m for m in data.metrics if m.key == "ssim")
    assert quality_column(data, ssim).best is None  # disjoint CIs, but only past the 8th decimal
    assert separating_decimals((0.99974673, 0.99975117), [(0.99973442, 0.99973824)], True, 4) == 5
    assert decimals_for([9.32e-05, 0.000126], 3, at_least=4) == 7


# ---------------------------------------------------------------- cards

def _card(data: Any, title: str) -> dict[str, str]:
    return next(h for h in highlights(data) if h["title"] == title)


def test_fastest_card_only_when_its_spread_is_clear_of_every_other(tiny_like: Path, tmp_path: Path) -> None:
    """gguf-q8_0's median is lowest, but bf16's noisy p10–p90 (88.5 ms–2.58 s) overlaps it: no winner."""
    card = _card(load_report_data(tiny_like), "Fastest")
    assert card["backend"] == "No clear winner" and "gguf-q8_0" in card["detail"] and "bf16" in card["detail"]
    assert "No clear winner" in _page(tiny_like)
    root = _copy(tiny_like, tmp_path)
    path = root / "generation" / "bf16.json"
    rec = json.loads(path.read_text())
    rec["latency"].update(p10_s=1.70, p90_s=1.90)  # a quiet bf16: gguf-q8_0 is then clear of everyone
    path.write_text(json.dumps(rec))
    write_summary(root)
    card = _card(load_report_data(root), "Fastest")
    assert card["backend"] == "gguf-q8_0" and card["value"] == "112.0 ms"


def test_closest_card_follows_the_same_rule_as_the_bold(tiny_like: Path) -> None:
    data = load_report_data(tiny_like)
    card = _card(data, "Closest to bf16")
    lpips = next(m for m in data.metrics if m.key == "lpips_alex")
    assert quality_column(data, lpips).best is None  # the LPIPS CIs overlap
    assert card["backend"] == "No clear winner" and "LPIPS" in card["value"]

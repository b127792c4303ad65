"""The report stage: what the page says for each kind of run, escaping, relative links, figures and tables."""

from __future__ import annotations

import html.parser
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit.errors import EvalkitError
from evalkit.report import build_report
from evalkit.report.data import pareto_front
from evalkit.report.tables import latex_escape, standalone_document
from report_fixtures import XSS_PROMPTS, synthetic_run

REPO = Path(__file__).resolve().parents[1]


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.scripts: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for key in ("src", "href", "data-full", "data-ref"):
            if a.get(key):
                self.urls.append((tag, key, a[key] or ""))
        if tag == "script":
            self.scripts.append(a)
        for key in a:
            assert not key.startswith("on"), f"inline event handler on <{tag}>: {key}"


def _parse(page: str) -> _Links:
    p = _Links()
    p.feed(page)
    return p


@pytest.fixture(scope="module")
def cpu_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = synthetic_run(tmp_path_factory.mktemp("cpu"), failed={"gguf-q4_1": "RuntimeError: <boom> & friends"})
    return build_report(root, quiet=True)


def test_cpu_run_writes_page_figures_and_tables(cpu_report: Path) -> None:
    root = cpu_report.parent
    page = cpu_report.read_text(encoding="utf-8")
    for key in ("memory", "latency", "quality_vs_memory_lpips_alex", "quality_vs_latency_psnr"):
        for ext in ("pdf", "svg", "png"):
            assert (root / "figures" / f"{key}.{ext}").stat().st_size > 1000, (key, ext)
    assert (root / "figures" / "memory.pdf").read_bytes().startswith(b"%PDF")
    for name in ("summary.csv", "performance.tex", "quality.tex", "per_prompt.csv"):
        assert (root / "tables" / name).exists(), name
    # CPU run: CUDA fields are null; the page says why, once, and never passes CPU RSS off as GPU memory.
    assert re.search(r"No GPU memory measured \(CPU run\):</strong>\s*device is cpu\.", page)
    assert "n/a (CPU" not in page
    assert "CPU peak RSS" in page
    # CPU run: quality-vs-memory plots use the weight footprint (stable), not RSS differences (allocator noise).
    assert "Weight footprint (GiB)" in page
    # Failed backend and skipped metric, each with its reason (escaped).
    assert "RuntimeError: &lt;boom&gt; &amp; friends" in page
    assert "no CLIP weights found" in page
    # Summary table carries CIs and n.
    assert re.search(r"\[\d+\.\d+, \d+\.\d+\] · n=3", page)
    assert 'id="blind-data"' in page and json.loads(_blind_json(page))["rounds"]


def _blind_json(page: str) -> str:
    return page.split('id="blind-data">', 1)[1].split("</script>", 1)[0]


def test_links_are_relative_and_inside_the_run(cpu_report: Path) -> None:
    """Every URL is relative and resolves to a file inside the run folder: the folder can be moved or zipped."""
    root = cpu_report.parent
    links = _parse(cpu_report.read_text(encoding="utf-8"))
    files = [u for _, _, u in links.urls if not u.startswith("#")]
    assert files
    from urllib.parse import unquote

    for url in files:
        assert not re.match(r"^[a-z]+:", url) and not url.startswith("/"), url
        target = (root / unquote(url)).resolve()
        assert root.resolve() in target.parents and target.exists(), url
    for attrs in links.scripts:
        assert "src" not in attrs, "scripts must be inline"


def test_hostile_prompts_and_names_are_escaped(tmp_path: Path) -> None:
    root = synthetic_run(tmp_path, prompts=XSS_PROMPTS, failed={"quanto-int8": '<script>alert("err")</script>'})
    page = build_report(root, quiet=True, figures=False).read_text(encoding="utf-8")
    assert "<script>alert" not in page and "</script><script>" not in page
    assert "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    # Inside the JSON block the prompt cannot close the script tag, and it still decodes to the exact text.
    data = json.loads(_blind_json(page))
    assert {r["prompt"] for r in data["rounds"]} == set(XSS_PROMPTS)
    assert "</script>" not in _blind_json(page)
    # Only our own script tags exist: one JSON block and one inline script, pinned by the CSP hash.
    assert len(re.findall(r"<script\b", page)) == 2
    assert "script-src 'sha256-" in page
    _parse(page)  # asserts no on* attribute anywhere
    # File names never come from prompt text.
    for p in (root / "thumbs").rglob("*"):
        assert re.fullmatch(r"[A-Za-z0-9._+-]+", p.name), p


def test_hostile_backend_name_gets_a_safe_file_name(tmp_path: Path) -> None:
    root = synthetic_run(tmp_path, backends=["bf16", "evil<b>\"name'+x"])
    page = build_report(root, quiet=True, figures=False).read_text(encoding="utf-8")
    assert "evil<b>" not in page and "evil&lt;b&gt;&#34;name&#39;+x" in page
    names = [p.name for p in (root / "thumbs").iterdir() if p.is_dir()]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names), names


def test_random_weights_run_says_images_carry_no_quality(tmp_path: Path) -> None:
    root = synthetic_run(tmp_path, random_weights=True, device="cuda")
    page = build_report(root, quiet=True).read_text(encoding="utf-8")
    assert "these images carry no quality information" in page
    head = page.split('id="summary"', 1)[0]
    assert "random-weights-banner" in head  # at the top, before any number
    assert 'id="images"' not in page and 'id="blind"' not in page and 'id="quality-table"' not in page
    assert not list((root / "figures").glob("quality_vs_*"))
    assert "31.40" in page  # memory still shown (bf16 weights, GiB)


def test_unscored_run_still_builds_and_says_so(tmp_path: Path) -> None:
    root = synthetic_run(tmp_path, with_metrics=False)
    page = build_report(root, quiet=True, figures=False).read_text(encoding="utf-8")
    assert "No quality metrics yet" in page and "evalkit score" in page
    assert 'class="tile' in page  # images still shown


def test_cuda_run_labels_allocated_and_reserved(tmp_path: Path) -> None:
    root = synthetic_run(tmp_path, device="cuda")
    page = build_report(root, quiet=True, figures=False).read_text(encoding="utf-8")
    assert "n/a (CPU" not in page
    assert "torch.cuda.memory_allocated" in page and "torch.cuda.memory_reserved" in page
    assert "Peak GPU memory, reserved" in page  # the x-axis of the quality-vs-memory plots is named


def test_missing_reference_and_pending_backend(tmp_path: Path) -> None:
    root = synthetic_run(tmp_path)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["backends"].append("gguf-q8_0")  # listed, never generated
    (root / "manifest.json").write_text(json.dumps(manifest))
    page = build_report(root, quiet=True, figures=False).read_text(encoding="utf-8")
    assert "not generated yet" in page


def test_record_path_outside_the_run_is_not_linked(tmp_path: Path) -> None:
    root = synthetic_run(tmp_path)
    rec_path = root / "generation" / "bnb-nf4.json"
    rec = json.loads(rec_path.read_text())
    for img in rec["images"]:
        img["path"] = "../../../../etc/passwd"
    rec_path.write_text(json.dumps(rec))
    shutil.rmtree(root / "images" / "bnb-nf4")
    with pytest.raises(EvalkitError, match=r"passwd: bad record entry: path is outside images/bnb-nf4/"):
        build_report(root, quiet=True, figures=False)  # a name that leaves its folder is refused (evalkit.integrity)
    assert not (root / "index.html").exists()


def test_a_run_copied_without_its_images_still_reports(tmp_path: Path) -> None:
    """Missing image files are not refused: the page says so where each would be, and the numbers stand."""
    root = synthetic_run(tmp_path)
    shutil.rmtree(root / "images" / "bnb-nf4")
    page = build_report(root, quiet=True, figures=False).read_text(encoding="utf-8")
    assert "image file missing" in page


def test_rerun_reuses_thumbnails(tmp_path: Path) -> None:
    root = synthetic_run(tmp_path)
    build_report(root, quiet=True, figures=False)
    thumbs = {p: p.stat().st_mtime_ns for p in (root / "thumbs").rglob("*.webp")}
    build_report(root, quiet=True, figures=False)
    assert thumbs and all(p.stat().st_mtime_ns == t for p, t in thumbs.items())


def test_pareto_front() -> None:
    pts = [("a", 10.0, 0.30), ("b", 15.0, 0.10), ("c", 16.0, 0.20), ("d", 30.0, 0.0), ("e", 15.0, 0.12)]
    assert pareto_front(pts, higher_is_better=False) == ["a", "b", "d"]
    assert pareto_front([(n, x, -y) for n, x, y in pts], higher_is_better=True) == ["a", "b", "d"]


def test_latex_escape() -> None:
    assert latex_escape("bnb-nf4+compile_x & 50% #1 $a$ {b} ~^\\") == (
        r"bnb-nf4+compile\_x \& 50\% \#1 \$a\$ \{b\} \textasciitilde{}\textasciicircum{}\textbackslash{}")
    assert latex_escape("<i>é😀") == r"\textless{}i\textgreater{}é?"


def test_tex_tables_are_booktabs(cpu_report: Path) -> None:
    for name in ("performance.tex", "quality.tex"):
        tex = (cpu_report.parent / "tables" / name).read_text()
        assert tex.index("\\toprule") < tex.index("\\midrule") < tex.index("\\bottomrule")
        assert "\\hline" not in tex


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed (apt-get install texlive-latex-base texlive-latex-recommended)")
def test_tex_tables_compile_with_pdflatex(tmp_path: Path) -> None:
    root = synthetic_run(tmp_path, prompts=XSS_PROMPTS, backends=["bf16", "bnb-nf4", "gguf-q4_1", "odd_name&50%#"])
    build_report(root, quiet=True, figures=False)
    tables = sorted((root / "tables").glob("*.tex"))
    doc = root / "tables" / "check.tex"
    doc.write_text(standalone_document(tables))
    r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=doc.parent,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:]
    assert (doc.parent / "check.pdf").stat().st_size > 1000


def test_cli_module_is_light() -> None:
    code = ("import sys, argparse; from evalkit.report.cli import add_report_arguments; "
            "add_report_arguments(argparse.ArgumentParser()); "
            "print(sorted(m for m in ('torch', 'numpy', 'matplotlib', 'PIL', 'jinja2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_run_options_do_not_clash() -> None:
    import argparse

    from evalkit.report.cli import add_report_arguments

    p = argparse.ArgumentParser()
    add_report_arguments(p, for_run=True)
    opts = [s for a in p._actions for s in a.option_strings if s not in ("-h", "--help")]
    assert opts and all(s.startswith(("--report-", "--no-report")) for s in opts), opts
    assert not any(not a.option_strings for a in p._actions), "no positional under `evalkit run`"


def test_cli_report_command(tmp_path: Path) -> None:
    root = synthetic_run(tmp_path)
    r = subprocess.run([sys.executable, "-m", "evalkit", "report", str(root), "--no-figures", "--thumb-size", "96"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert (root / "index.html").exists()
    from PIL import Image

    with Image.open(next((root / "thumbs").rglob("*.webp"))) as im:
        assert max(im.size) <= 96
    r = subprocess.run([sys.executable, "-m", "evalkit", "report", str(tmp_path / "nope")], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "run directory not found" in r.stderr and "Traceback" not in r.stderr

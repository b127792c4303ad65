"""The report in headless Chromium: no console error, no request outside file://, every image loads,
the blind test clicks through to a score. Writes screenshots to test-artifacts/ (look at them)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit.report import build_report
from evalkit.report.browser import LOAD_ALL_IMAGES_JS, find_chromium
from report_fixtures import ARTIFACTS, FIFTEEN_BACKENDS, XSS_PROMPTS, synthetic_run

pytestmark = [
    pytest.mark.skipif(find_chromium() is None, reason="chromium not installed (apt-get install -y chromium; .ci/run does)"),
    pytest.mark.skipif(importlib.util.find_spec("websocket") is None, reason="websocket-client not installed (dev extra)"),
]

REPO = Path(__file__).resolve().parents[1]


def _scored_tiny_run(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The shared real tiny run (copied: it is read-only), scored here; a synthetic run when the stages are not there."""
    try:
        src = request.getfixturevalue("tiny_run")
    except pytest.FixtureLookupError:
        return synthetic_run(tmp_path, prompts=XSS_PROMPTS)
    root = tmp_path / "tiny"
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("index.html", "thumbs", "figures", "tables"))
    r = subprocess.run([sys.executable, "-m", "evalkit", "score", str(root)], capture_output=True, text=True, cwd=REPO, timeout=600)
    # A score failure must not hide the report's own checks: the report builds without metrics too.
    if r.returncode != 0:
        print("score failed; rendering the unscored run:\n" + r.stderr[-2000:])
    return root


def _check_page(b, index: Path) -> dict:
    load_s = b.goto(index.as_uri())
    imgs = b.eval(LOAD_ALL_IMAGES_JS, await_promise=True)
    assert imgs["total"] > 0 and imgs["bad"] == [], imgs
    outside = [u for u in b.requests() if not u.startswith(("file:", "data:"))]
    assert outside == [], f"requests outside file://: {outside}"
    assert b.failed_requests() == []
    assert b.console_errors() == []
    dialogs = [e for e in b.events if e["method"] == "Page.javascriptDialogOpening"]
    assert dialogs == [], f"a script ran: {dialogs}"
    return {"load_s": load_s, "images": imgs["total"]}


@pytest.mark.slow  # builds and scores the shared tiny run when it is not cached yet
def test_report_in_chromium(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from evalkit.report.browser import Browser

    root = _scored_tiny_run(request, tmp_path)
    index = build_report(root, quiet=True)
    with Browser() as b:
        _check_page(b, index)
        ARTIFACTS.mkdir(exist_ok=True)
        b.screenshot(ARTIFACTS / "report.png")
        b.screenshot(ARTIFACTS / "report-full.png", full_page=True)

        # Lightbox: a click opens the full-resolution PNG, R flips to the reference.
        b.eval("document.querySelector('a.thumb:not([data-ref=\"\"])') && document.querySelectorAll('a.thumb')[1].click()")
        assert b.eval("!document.getElementById('lightbox').hidden")
        assert b.eval("document.getElementById('lb-img').getAttribute('src').endsWith('.png')")
        b.eval("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'}))")
        assert b.eval("document.getElementById('lightbox').hidden")

        # Blind test: start, pick A every round, reach the score and a per-backend row.
        n = b.eval("JSON.parse(document.getElementById('blind-data').textContent).rounds.length")
        assert n > 0
        b.eval("location.hash = 'blind-seed=7'; document.getElementById('blind-seed').value = '7'; document.getElementById('blind-start').click()")
        assert b.eval("!document.getElementById('blind-play').hidden")
        b.screenshot(ARTIFACTS / "report-blind.png")
        for _ in range(n):
            b.eval("document.getElementById('blind-a').click()")
        assert b.eval("!document.getElementById('blind-result').hidden")
        score = b.eval("document.getElementById('blind-score').textContent")
        assert f"of {n} times" in score, score
        rows = b.eval("document.querySelectorAll('#blind-table tbody tr').length")
        assert rows >= 1
        b.screenshot(ARTIFACTS / "report-blind-result.png")
        assert b.console_errors() == []


def test_hostile_prompts_do_not_execute(tmp_path: Path) -> None:
    """The XSS prompts render as text in a real browser: nothing runs, nothing is fetched (src=x would be a request)."""
    from evalkit.report.browser import Browser

    root = synthetic_run(tmp_path, prompts=XSS_PROMPTS)
    index = build_report(root, quiet=True, figures=False)
    with Browser() as b:
        _check_page(b, index)
        text = b.eval("document.getElementById('images').innerText")
        assert "<script>alert(1)</script>" in text and '"><img src=x onerror=alert(1)>' in text
        assert b.eval("document.querySelectorAll('img[src=\"x\"]').length") == 0


def _wide_run(tmp_path: Path) -> Path:
    """15 backends and every default metric with its CI: the widest tables a real run gives."""
    import json

    from evalkit.rundir import write_summary

    root = synthetic_run(tmp_path, backends=[b[0] for b in FIFTEEN_BACKENDS], skipped_metrics={})
    for path in (root / "metrics").glob("*.json"):
        rec = json.loads(path.read_text())
        ms = rec["metrics"]
        if "ssim" in ms:
            ms["ms_ssim"] = dict(ms["ssim"])
            ms["lpips_vgg"] = dict(ms["lpips_alex"])
            ms["clip_score_drop"] = {**ms["lpips_alex"], "higher_is_better": False}
            ms["kid"] = {"status": "ok", "value": 0.0123, "std": 0.0021, "n": 3, "n_reference": 3, "higher_is_better": False}
        ms["clip_score"] = {"status": "ok", "mean": 31.25, "ci_low": 30.5, "ci_high": 32.0, "n": 3, "higher_is_better": True}
        path.write_text(json.dumps(rec))
    write_summary(root)
    return root


OVERFLOW_JS = """
Array.from(document.querySelectorAll('.table-wrap')).filter(w => w.offsetParent !== null).map(w => ({
  id: (w.querySelector('table') || {}).id || '', over: w.scrollWidth - w.clientWidth,
  right: Math.round(w.getBoundingClientRect().right), vw: document.documentElement.clientWidth}))
"""


@pytest.mark.parametrize("width", [1280, 1440, 1600, 1920, 2560])
def test_no_table_cut_off_at_common_widths(tmp_path: Path, width: int) -> None:
    """Issue #16.7: the summary tables fit the window (no horizontal scrolling inside them) from 1280 to 2560 px."""
    from evalkit.report.browser import Browser

    root = _wide_run(tmp_path)
    index = build_report(root, quiet=True, figures=False)
    with Browser(width=width, height=1000) as b:
        b.goto(index.as_uri())
        wraps = b.eval(OVERFLOW_JS)
        ARTIFACTS.mkdir(exist_ok=True)
        b.screenshot(ARTIFACTS / f"report-width-{width}.png")
    shown = {w["id"] for w in wraps}
    assert {"perf-table", "quality-table"} <= shown, wraps
    for w in wraps:
        if w["id"] in ("perf-table", "quality-table"):
            assert w["over"] <= 1 and w["right"] <= w["vw"], (width, w)


SEVENTEEN = [b[0] for b in FIFTEEN_BACKENDS] + ["bnb-nf4+compile", "quanto-int8+offload"]  # issue #24's run

PER_PROMPT_JS = """
(() => {
  const out = [];
  for (const btn of document.querySelectorAll('#pp-switch button')) {
    btn.click();
    const w = document.querySelector(`.table-wrap.pp[data-pp="${btn.dataset.pp}"]`);
    w.scrollIntoView();
    const r = w.getBoundingClientRect(), head = w.querySelectorAll('thead th');
    const first = w.querySelector('tbody th');
    w.scrollLeft = w.scrollWidth;
    const last = head[head.length - 1].getBoundingClientRect(), after = w.getBoundingClientRect();
    out.push({key: btn.dataset.pp, over: w.scrollWidth - w.clientWidth, right: Math.round(r.right),
              vw: document.documentElement.clientWidth, vh: window.innerHeight,
              top: Math.round(r.top), bottom: Math.round(r.bottom),
              overflowX: getComputedStyle(w).overflowX, sticky: getComputedStyle(first).position,
              lastRight: Math.round(last.right), wrapRight: Math.round(after.right),
              firstLeft: Math.round(first.getBoundingClientRect().left), wrapLeft: Math.round(after.left),
              pageOver: document.documentElement.scrollWidth - document.documentElement.clientWidth});
    w.scrollLeft = 0;
  }
  return out;
})()
"""


@pytest.mark.parametrize("width", [1280, 1920, 2560])
def test_per_prompt_table_of_seventeen_backends_fits(tmp_path: Path, width: int) -> None:
    """Issue #24: the per-prompt table of a 17-backend run was clipped at the right at 1280 px."""
    from evalkit.report.browser import Browser

    import json

    from evalkit.rundir import write_summary

    root = synthetic_run(tmp_path, backends=SEVENTEEN, prompts=[f"prompt {i}: a fairly long description" for i in range(6)])
    for path in (root / "metrics").glob("*.json"):  # LPIPS at the tiny model's scale: 0.0000779, seven decimals
        rec = json.loads(path.read_text())
        lp = rec["metrics"].get("lpips_alex")
        if lp:
            lp["per_prompt"] = {k: v * 1e-3 for k, v in lp["per_prompt"].items()}
            lp.update({k: lp[k] * 1e-3 for k in ("mean", "ci_low", "ci_high")})
            path.write_text(json.dumps(rec))
    write_summary(root)
    index = build_report(root, quiet=True, figures=False)
    with Browser(width=width, height=1000) as b:
        b.goto(index.as_uri())
        tables = b.eval(PER_PROMPT_JS)
        b.eval("document.querySelector('#per-prompt').scrollIntoView()")
        ARTIFACTS.mkdir(exist_ok=True)
        b.screenshot(ARTIFACTS / f"report-per-prompt-{width}.png")
    assert len(tables) >= 3
    for t in tables:
        assert t["over"] <= 1 and t["right"] <= t["vw"] and t["pageOver"] <= 0, (width, t)


@pytest.mark.parametrize("width", [1280, 2560])
def test_per_prompt_table_too_wide_for_the_window_scrolls_in_view(tmp_path: Path, width: int) -> None:
    """More backends than any width holds: the table scrolls inside a frame that fits the window (so its scrollbar
    is on screen, not under 40 rows), keeps the prompt column in view, and the page itself never scrolls sideways."""
    from evalkit.report.browser import Browser

    many = list(dict.fromkeys(SEVENTEEN + [f"{b}+compile" for b in SEVENTEEN if "+" not in b and b != "bf16"]))
    root = synthetic_run(tmp_path, backends=many, prompts=[f"prompt {i}" for i in range(40)])
    index = build_report(root, quiet=True, figures=False)
    with Browser(width=width, height=1000) as b:
        b.goto(index.as_uri())
        tables = b.eval(PER_PROMPT_JS)
        b.eval("document.querySelector('.table-wrap.pp').scrollLeft = 400")
        ARTIFACTS.mkdir(exist_ok=True)
        b.screenshot(ARTIFACTS / f"report-per-prompt-scrolled-{width}.png")
    for t in tables:
        assert t["pageOver"] <= 0 and t["right"] <= t["vw"], (width, t)
        if t["over"] > 1:  # too wide here: it must scroll, visibly
            assert t["overflowX"] in ("auto", "scroll") and t["bottom"] - t["top"] <= t["vh"], (width, t)
            assert t["lastRight"] <= t["wrapRight"] + 1, (width, t)  # the last backend can be scrolled to
            assert t["sticky"] == "sticky" and abs(t["firstLeft"] - t["wrapLeft"]) <= 2, (width, t)
    assert any(t["over"] > 1 for t in tables) or width > 2000  # 33 backends do not fit 1280 px


SUMMARY_JS = """
(() => ({pageOver: document.documentElement.scrollWidth - document.documentElement.clientWidth,
  notice: Math.round(document.getElementById('model-notice').getBoundingClientRect().bottom),
  vh: window.innerHeight,
  cards: Array.from(document.querySelectorAll('.card')).map(c => c.innerText.replace(/\\s+/g, ' ')),
  wraps: Array.from(document.querySelectorAll('#summary .table-wrap')).map(w => w.scrollWidth - w.clientWidth)}))()
"""


@pytest.mark.parametrize("width", [1280, 1440, 1920, 2560])
def test_summary_of_the_tiny_run_at_common_widths(tmp_path: Path, width: int) -> None:
    """The tiny run's summary: its random-weights notice in the first screen, the cards, and both tables whole."""
    from evalkit.report.browser import Browser
    from report_fixtures import tiny_like_run

    root = tiny_like_run(tmp_path)
    index = build_report(root, quiet=True)
    with Browser(width=width, height=1000) as b:
        b.goto(index.as_uri())
        got = b.eval(SUMMARY_JS)
        ARTIFACTS.mkdir(exist_ok=True)
        b.screenshot(ARTIFACTS / f"report-summary-{width}.png")
        b.eval("document.getElementById('tradeoffs').scrollIntoView()")
        b.screenshot(ARTIFACTS / f"report-figures-{width}.png")
    assert got["pageOver"] <= 0 and got["notice"] <= got["vh"], (width, got)
    assert all(over <= 1 for over in got["wraps"]), (width, got)
    assert any(c.startswith("FASTEST No clear winner") for c in got["cards"]), got["cards"]

"""#27 item 1, done when: each tripwire's failure (NaN latents, a black image, a checkerboard overlay, an unrelated
image, a backend whose layers are not quantized, a backend identical to bf16) goes through a tiny study, and `check`
exits 1 naming the images and the reason, while a healthy tiny study passes. The failures come from a test-only
library loaded with --plugin (tests/broken_library.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalkit.cli import main

TESTS = Path(__file__).resolve().parent
SMALL = ["--model", "tiny", "--height", "64", "--width", "64", "--steps", "2", "--warmup", "0", "--threads", "1",
         "--metrics", "ssim,psnr", "--report-formats", "png"]
BROKEN = {"broken-nan": "nonfinite", "broken-black": "constant", "broken-grid": "grid",
          "broken-unrelated": "unrelated", "broken-noquant": "not_quantized", "broken-identical": "identical_to_reference"}


@pytest.fixture()
def broken_plugin_forgotten_after():
    """The CLI runs in this process, so --plugin registers the broken library in the live registry: forget it after."""
    yield
    import broken_library

    from evalkit import plugins

    broken_library.unregister()
    plugins._loaded_files.pop(str(TESTS / "broken_library.py"), None)


def _prompts(tmp_path: Path) -> Path:
    p = tmp_path / "two.txt"
    p.write_text("A red cube on a blue table\nA lighthouse at dusk, oil painting\n", encoding="utf-8")
    return p


@pytest.mark.slow
@pytest.mark.usefixtures("broken_plugin_forgotten_after")
def test_every_tripwire_fails_check_naming_the_images_and_a_healthy_study_passes(tmp_path: Path, capsys) -> None:
    prompts = _prompts(tmp_path)
    bounds = tmp_path / "bounds.toml"
    bounds.write_text("[default]\nssim_min = 0.5\n", encoding="utf-8")

    # A healthy tiny study passes.
    healthy = tmp_path / "healthy"
    assert main(["run", str(prompts), "--backends", "bf16,torchao-int8wo", "--out", str(healthy), *SMALL]) == 0
    assert main(["check", str(healthy), "--thresholds", str(bounds)]) == 0, capsys.readouterr().out[-3000:]
    summary = json.loads((healthy / "summary.json").read_text())
    assert all(b["broken"] == [] for b in summary["backends"].values())
    capsys.readouterr()

    # Every failure, one backend each.
    run = tmp_path / "broken"
    rc = main(["run", str(prompts), "--backends", "bf16,torchao-int8wo," + ",".join(BROKEN), "--out", str(run),
               "--plugin", str(TESTS / "broken_library.py"), *SMALL])
    assert rc == 0, capsys.readouterr().err[-3000:]
    capsys.readouterr()
    assert main(["check", str(run), "--thresholds", str(bounds)]) == 1
    out = capsys.readouterr().out
    gens = {b: json.loads((run / "generation" / f"{b}.json").read_text()) for b in ["bf16", *BROKEN]}
    for backend, tripwire in BROKEN.items():
        assert f"FAIL broken ({backend})" in out, out[-4000:]
        line = next(ln for ln in out.split("FAIL ") if ln.startswith(f"broken ({backend})"))
        assert tripwire in line, (backend, line)
        if tripwire not in ("not_quantized", "identical_to_reference"):  # image tripwires name each image
            for img in gens[backend]["images"]:
                assert Path(img["path"]).name in line.replace("\n", ""), (backend, line)
    assert "FAIL broken (torchao-int8wo)" not in out and "FAIL broken (bf16)" not in out

    # Generate counted the NaNs on the tensors, before the PNG turned them into black pixels.
    for img in gens["broken-nan"]["images"]:
        assert img["nonfinite"]["latents"] > 0 and img["nonfinite"]["pixels"] > 0
        assert img["broken"][0]["tripwire"] == "nonfinite" and img["broken"][0]["when"] == "generate"
    assert all(img["nonfinite"] == {"latents": 0, "pixels": 0} for img in gens["bf16"]["images"])
    assert gens["broken-noquant"]["tripwires"]["broken_backend"][0]["tripwire"] == "not_quantized"

    # No broken image is averaged: the metric record counts them with their reasons.
    for backend in BROKEN:
        rec = json.loads((run / "metrics" / f"{backend}.json").read_text())
        assert rec["tripwires"]["n_broken"] == 2, backend
        assert rec["metrics"]["ssim"]["status"] == "skipped", (backend, rec["metrics"]["ssim"])
        assert BROKEN[backend] in {e["tripwire"] for e in rec["broken"]}
    ok = json.loads((run / "metrics" / "torchao-int8wo.json").read_text())
    assert ok["metrics"]["ssim"]["status"] == "ok" and ok["metrics"]["ssim"]["n"] == 2 and ok["broken"] == []

    # The report shows broken images first, with their thumbnails, and marks the backends in the tables.
    page = (run / "index.html").read_text(encoding="utf-8")
    assert page.index('id="broken"') < page.index('id="summary"')
    assert page.count('class="broken-card"') == 2 * 4 + 2 + 1  # four image tripwires x 2 + noquant's two + identical
    assert 'thumbs/' in page[page.index('id="broken"'):page.index('id="summary"')]
    assert "2 broken</a>" in page

    # broken_max relaxes the rule for one backend, from its own section.
    from evalkit.check.gate import check_run
    from evalkit.check.results import Outcome

    bounds.write_text('[default]\nssim_min = 0.5\n[backends."broken-grid"]\nbroken_max = 2\n', encoding="utf-8")
    report = check_run(run, bounds)
    outcome = {c.backend: c.outcome for c in report.cases if c.name == "broken"}
    assert outcome["broken-grid"] is Outcome.PASS and outcome["broken-black"] is Outcome.FAIL
    # nothing broken and no broken_max for it: no testcase, so a clean run's outputs are as they were
    assert "torchao-int8wo" not in outcome and "bf16" not in outcome
    bounds.write_text("[default]\nssim_min = 0.5\nbroken_max = 0\n", encoding="utf-8")
    outcome = {c.backend: c.outcome for c in check_run(run, bounds).cases if c.name == "broken"}
    assert outcome["torchao-int8wo"] is Outcome.PASS and "bf16" not in outcome  # [default] skips the reference

    # compare-images runs the image tripwires: one entry per broken image, with its file name and reason.
    capsys.readouterr()
    assert main(["compare-images", str(run / "images" / "bf16"), str(run / "images" / "broken-black"),
                 "--metrics", "ssim", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    names = sorted(Path(i["path"]).name for i in gens["broken-black"]["images"])
    assert sorted(e["file"] for e in res["broken"]) == names
    assert all(e["tripwire"] == "constant" and "all black" in e["reason"] for e in res["broken"])
    assert res["metrics"]["ssim"]["status"] == "skipped"

    # compare (run vs run) shows the broken images of either run as a row of their own.
    import re

    capsys.readouterr()
    assert main(["compare", str(run), str(run), "--force"]) == 0
    assert re.search(r"broken-grid\s+broken\s+2\s+2\s+\+0", capsys.readouterr().out)

"""Extending evalkit without editing it (#23): a toy model family and a toy quantization library, each from one
test-only module loaded with --plugin, run the tiny study end to end (generate, score, report, check)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalkit.cli import main

TESTS = Path(__file__).resolve().parent


@pytest.fixture()
def plugins_forgotten_after():
    """The CLI runs in this process here, so --plugin registers the toys in the live registries: forget them after,
    or a later test that registers the same toys itself finds them listed twice."""
    yield
    import toy_family
    import toy_library

    from evalkit import plugins

    toy_library.unregister()
    toy_family.unregister()
    for name in ("toy_family.py", "toy_library.py"):
        plugins._loaded_files.pop(str(TESTS / name), None)


@pytest.mark.slow
@pytest.mark.usefixtures("plugins_forgotten_after")
def test_a_toy_family_and_a_toy_library_run_the_study_end_to_end(tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "two.txt"
    prompts.write_text("A red cube on a blue table\nA lighthouse at dusk, oil painting\n", encoding="utf-8")
    run = tmp_path / "run"
    plugins = ["--plugin", str(TESTS / "toy_family.py"), "--plugin", str(TESTS / "toy_library.py")]
    rc = main(["run", str(prompts), "--model", "tiny:toy-pixart", "--backends", "toy-int6,torchao-int8wo",
               "--out", str(run), "--metrics", "lpips_alex,ssim,psnr", "--report-formats", "png", *plugins])
    assert rc == 0, capsys.readouterr().err[-2000:]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model"]["family"] == "toy-pixart" and manifest["model"]["pipeline_class"] == "PixArtSigmaPipeline"
    assert [Path(p["path"]).name for p in manifest["config"]["plugins"]] == ["toy_family.py", "toy_library.py"]
    toy = json.loads((run / "generation" / "toy-int6.json").read_text())
    assert toy["status"] == "ok" and toy["recipe"]["library"] == "toylib"
    assert toy["quantization"]["quantized_linear_count"]["transformer"] > 0
    ao = json.loads((run / "generation" / "torchao-int8wo.json").read_text())
    assert ao["status"] == "ok" and set(ao["quantization"]["components_quantized"]) == {"transformer", "text_encoder"}
    metrics = json.loads((run / "metrics" / "toy-int6.json").read_text())["metrics"]
    assert metrics["lpips_alex"]["status"] == "ok" and metrics["lpips_alex"]["mean"] > 0
    page = (run / "index.html").read_text(encoding="utf-8")
    assert "toy-int6" in page and "Toy PixArt" in page  # the family the run was made with, named
    bounds = tmp_path / "bounds.toml"
    bounds.write_text("[backends.toy-int6]\nlpips_alex_max = 0.9\n[backends.torchao-int8wo]\nlpips_alex_max = 0.9\n",
                      encoding="utf-8")
    assert main(["check", str(run), "--thresholds", str(bounds)]) == 0
    bounds.write_text("[backends.toy-int6]\nlpips_alex_max = 1e-9\n", encoding="utf-8")
    assert main(["check", str(run), "--thresholds", str(bounds)]) == 1  # the toy's own numbers decide
    # A rerun with the same plugins does nothing; a changed plugin is another study, refused in this directory.
    assert main(["generate", str(prompts), "--model", "tiny:toy-pixart", "--backends", "toy-int6,torchao-int8wo",
                 "--out", str(run), *plugins]) == 0


def test_a_plugin_that_changed_since_the_run_recorded_it_is_refused(tmp_path: Path) -> None:
    from evalkit.errors import EvalkitError
    from evalkit.plugins import load_plugin_file

    plugin = tmp_path / "mine.py"
    plugin.write_text("X = 1\n", encoding="utf-8")
    entry = load_plugin_file(plugin)
    plugin.write_text("X = 2\n", encoding="utf-8")
    with pytest.raises(EvalkitError, match="changed since this run recorded it"):
        load_plugin_file(plugin, expected_sha256=entry["sha256"])


def test_a_broken_plugin_is_one_line_naming_the_file(tmp_path: Path, capsys) -> None:
    plugin = tmp_path / "broken.py"
    plugin.write_text("raise RuntimeError('boom')\n", encoding="utf-8")
    prompts = tmp_path / "one.txt"
    prompts.write_text("a cube\n", encoding="utf-8")
    assert main(["generate", str(prompts), "--model", "tiny", "--plugin", str(plugin), "--out",
                 str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.py" in err[0] and "RuntimeError: boom" in err[0]
    assert not (tmp_path / "run").exists()

"""`evalkit calibrate` refuses what it cannot calibrate with one line naming the file (exit 2), before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from check_fixtures import make_run
from evalkit.calibrate.__main__ import main


def test_not_a_run_directory(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_failed_reference(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run", failed={"bf16": "CUDA out of memory"})
    assert main([str(run)]) == 2
    err = capsys.readouterr().err
    assert "generation/bf16.json" in err and "CUDA out of memory" in err


def test_run_without_its_generate_options(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run")  # a manifest with no config.options: nothing says how to regenerate it
    assert main([str(run), "--perturbations", "rerun"]) == 2
    assert "config.options has no prompts_file" in capsys.readouterr().err


def test_a_replaced_reference_image_is_refused_before_any_regeneration(tmp_path: Path, capsys) -> None:
    """The floor is measured against the reference's files: one replaced since generate is named, nothing is run."""
    from PIL import Image

    run = make_run(tmp_path / "run")
    img = sorted((run / "images" / "bf16").iterdir())[0]
    with Image.open(img) as im:
        size = im.size
    Image.new("RGB", size, (0, 0, 255)).save(img)
    assert main([str(run), "--perturbations", "rerun"]) == 2
    err = capsys.readouterr().err
    assert str(img) in err and "replaced: sha256" in err and "before a floor is measured" in err
    assert not (run / "calibration").exists()


def test_perturbation_for_another_device(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run")
    assert main([str(run), "--perturbations", "tf32"]) == 2
    assert "perturbation 'tf32' needs cuda, but the run is on cpu" in capsys.readouterr().err



def test_one_options_file_serves_run_and_calibrate(tmp_path, monkeypatch) -> None:
    """`evalkit run --config F --calibrate`: generate accepts F's [calibrate] table (it is calibrate's), and calibrate
    reads its perturbations from F when F has one."""
    import evalkit.calibrate.stage as stage
    from evalkit.cli import build_parser
    from evalkit.calibrate import cli as cal_cli
    from evalkit.generate.stage import load_config

    cfg = tmp_path / "options.toml"
    cfg.write_text('[backends.bnb-8bit]\nllm_int8_threshold = 5.0\n[calibrate]\nperturbations = ["rerun"]\n')
    backend_options, _ = load_config(str(cfg))
    assert backend_options["bnb-8bit"]["llm_int8_threshold"] == 5.0

    seen: list = []

    class Stop(Exception):
        pass

    def fake_run_calibration(run_dir, config_file=None, **kw):
        seen.append(config_file)
        raise Stop

    monkeypatch.setattr(stage, "run_calibration", fake_run_calibration)
    # the namespace `evalkit run` really builds (generate's --config is the one file; --calibrate turns it on)
    args = build_parser().parse_args(["run", "p.txt", "--config", str(cfg), "--calibrate"])
    args.run_dir = str(tmp_path)  # what generate_main sets for the later stages
    with pytest.raises(Stop):
        cal_cli.calibrate_main(args)
    cfg.write_text('[backends.bnb-8bit]\nllm_int8_threshold = 5.0\n')
    with pytest.raises(Stop):
        cal_cli.calibrate_main(args)
    assert seen == [str(cfg), None]  # without a [calibrate] table: the device's default perturbations

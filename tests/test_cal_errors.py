"""`evalkit calibrate` refuses what it cannot calibrate with one line naming the file (exit 2), before any work."""

from __future__ import annotations

from pathlib import Path

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


def test_perturbation_for_another_device(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run")
    assert main([str(run), "--perturbations", "tf32"]) == 2
    assert "perturbation 'tf32' needs cuda, but the run is on cpu" in capsys.readouterr().err

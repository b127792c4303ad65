"""thresholds.cpu.toml (#24.4): valid for every backend the README's tiny run makes, tolerant of a run with fewer
backends and of a backend the CPU cannot run, and passing on a real tiny CPU run; the README names only files that
exist."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from check_fixtures import make_run, manifest
from evalkit.cli import main
from evalkit.rundir import write_summary

REPO = Path(__file__).resolve().parents[1]
CPU = REPO / "thresholds.cpu.toml"


def _skip_on_this_device(run: Path, backend: str, reason: str) -> None:
    rec = run / "generation" / f"{backend}.json"
    data = json.loads(rec.read_text())
    data.update(status="skipped", reason=reason, images=[], latency=None, memory=None)
    rec.write_text(json.dumps(data))
    shutil.rmtree(run / "images" / backend)
    (run / "metrics" / f"{backend}.json").unlink()
    write_summary(run)


def test_cpu_file_names_real_backends_and_excuses_only_skipped_ones(tmp_path: Path) -> None:
    from evalkit.quantizers.registry import backend_list

    names = tuple(b.name for b in backend_list())
    assert "gguf-q2_k" in names and "torchao-fp8dq" in names
    run = make_run(tmp_path / "run", manifest(backends=names))
    _skip_on_this_device(run, "torchao-fp8dq", "float8 dynamic activation needs CUDA compute capability >= 8.9")
    # The fixture's synthetic LPIPS (0.05-0.16) is far worse than any tiny-model backend: exit 1, never 2 (the file
    # is valid for every name), and the skipped backend is one skipped testcase, not a failure.
    assert main(["check", str(run), "-t", str(CPU), "-q"]) == 1
    root = ET.parse(run / "check" / "junit.xml").getroot()
    fp8dq = next(s for s in root.iter("testsuite") if s.get("name") == "evalkit.check.torchao-fp8dq")
    assert (fp8dq.get("tests"), fp8dq.get("skipped"), fp8dq.get("failures")) == ("1", "1", "0")
    assert "allow_skipped_backend" in fp8dq.find("testcase/skipped").get("message")
    # A crash is never excused.
    crashed = make_run(tmp_path / "crashed", manifest(backends=("bf16", "bnb-nf4", "torchao-int8wo")),
                       failed={"torchao-int8wo": "RuntimeError: boom"})
    assert main(["check", str(crashed), "-t", str(CPU), "-q"]) == 1
    assert "boom" in (crashed / "check" / "summary.md").read_text()


def test_readme_names_only_thresholds_files_that_exist() -> None:
    readme = (REPO / "README.md").read_text()
    named = set(re.findall(r"\bthresholds[\w.-]*\.toml\b", readme))
    assert {"thresholds.cpu.toml", "thresholds.example.toml"} <= named
    assert all((REPO / n).is_file() for n in named), named


@pytest.mark.slow
def test_cpu_file_passes_on_a_real_tiny_cpu_run(tiny_run: Path, tmp_path: Path) -> None:
    """The shared tiny run (bf16, torchao-int8wo, fp8-layerwise; torchao-fp8dq skipped on CPU), scored here. Its
    verdict cannot depend on the CPU's kernels: the file's bounds sit 10x and more from the tiny model's values."""
    from conftest import run_evalkit

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    r = run_evalkit("score", str(run), "--metrics", "lpips_alex,ssim,psnr")
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_evalkit("check", str(run), "--thresholds", str(CPU))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "SKIPPED status (torchao-fp8dq)" in r.stdout

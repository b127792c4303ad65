"""Session fixtures for the libraries of #26 (loaded by tests/conftest.py's `pytest_plugins`): each costly thing is
made once per test session and shared by tests/test_quantizers_*.py, test_checkpoints.py and test_plugins.py.

- `rtn6_site`: examples/plugin-method installed into a temporary `--target` folder (offline: no deps, no build
  isolation), to be put on PYTHONPATH: its entry point is then seen by every evalkit process.
- `torchao_checkpoint`: a torchao-int8wo transformer of the tiny model, written by evalkit's save_quantized.
- `study`: the issue's done-when study on the tiny model: bf16 plus one backend of each new library that runs on
  CPU, the checkpoint above as `--backend mine=DIR`, and the example plugin's method; generated, scored, reported.
  `study_rerun`: the same command into another directory, for bit-identity (AutoRound and BFL then come from
  evalkit's cache, so their calibration and writing are paid once a session).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_evalkit

# One backend of each new library that runs on CPU, chosen for what it exercises: block quantization with the
# root-compress workaround (ModelOpt), the SVD branch (SDNQ), SignRound calibration (AutoRound), the NVFP4 writer
# with its calibrated input scales (BFL).
STUDY_BACKENDS = ("modelopt-int4", "sdnq-uint4-svd", "autoround-w4a16", "bfl-nvfp4", "rtn6-g64")
STUDY_PROMPTS = "A red cube on a blue table\nA lighthouse at dusk, oil painting\n"
# AutoRound's fewest iterations that still run SignRound: iteration 0 scores plain rounding, one signed-gradient
# step follows, and iteration 1 scores its result (with 1 the step is never scored: that is round-to-nearest).
AUTOROUND_ITERS = 2


@pytest.fixture(scope="session")
def rtn6_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("rtn6-src") / "plugin-method"
    shutil.copytree(REPO / "examples" / "plugin-method", src)  # pip writes build/ and egg-info beside the source
    target = tmp_path_factory.mktemp("rtn6-site")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", str(target), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return target


def plugin_env(site: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)}


@pytest.fixture(scope="session")
def torchao_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "tiny-transformer-torchao-int8wo"
    r = subprocess.run([sys.executable, "-c", "import sys; from evalkit.quantizers.checkpoint import save_quantized; "
                        "save_quantized(sys.argv[1], 'torchao-int8wo', sys.argv[2])", str(tiny_model_path), str(out)],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def _study_files(root: Path) -> tuple[Path, Path]:
    prompts = root / "study.txt"
    prompts.write_text(STUDY_PROMPTS, encoding="utf-8")
    options = root / "options.toml"
    options.write_text(f"[backends.autoround-w4a16]\niters = {AUTOROUND_ITERS}\n", encoding="utf-8")
    return prompts, options


def generate_study(root: Path, site: Path, checkpoint: Path) -> Path:
    prompts, options = _study_files(root)
    out = root / "run"
    r = run_evalkit("generate", str(prompts), "--model", "tiny", "--height", "32", "--width", "32", "--warmup", "0",
                    "--backends", ",".join(STUDY_BACKENDS), "--backend", f"mine={checkpoint}", "--config",
                    str(options), "--jobs", "2", "--out", str(out), env=plugin_env(site), timeout=1800)
    assert r.returncode == 0, r.stderr[-4000:]
    return out


@pytest.fixture(scope="session")
def study(tmp_path_factory: pytest.TempPathFactory, rtn6_site: Path, torchao_checkpoint: Path,
          tiny_model_path: Path) -> Path:
    out = generate_study(tmp_path_factory.mktemp("study"), rtn6_site, torchao_checkpoint)
    env = plugin_env(rtn6_site)
    r = run_evalkit("score", str(out), "--metrics", "lpips_alex,ssim,psnr", env=env, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_evalkit("report", str(out), "--report-formats", "png", env=env, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def study_rerun(tmp_path_factory: pytest.TempPathFactory, study: Path, rtn6_site: Path,
                torchao_checkpoint: Path) -> Path:
    return generate_study(tmp_path_factory.mktemp("study-rerun"), rtn6_site, torchao_checkpoint)

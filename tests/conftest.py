"""Shared fixtures. Tests read like the README: run evalkit on the tiny model and assert on the run directory."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Session fixtures of the quantization libraries' tests (the done-when study of #26, its rerun, the example plugin).
pytest_plugins = ("quant_fixtures",)

# One cache for the whole session (the tiny model is built once, ~6 s), never the user's real cache,
# and never the network.
if "EVALKIT_TEST_CACHE" not in os.environ:
    os.environ["EVALKIT_TEST_CACHE"] = tempfile.mkdtemp(prefix="evalkit-test-cache-")
os.environ["EVALKIT_CACHE"] = os.environ["EVALKIT_TEST_CACHE"]
os.environ["HF_HUB_OFFLINE"] = "1"

THREE_PROMPTS = (
    "# three short prompts for fast tests\n"
    "A cat holding a sign that says hello world\n"
    "\n"
    "Noir style, a shadowy alleyway with flickering street lamps\n"
    "A red cube on a blue table\n"
)


def run_evalkit(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess, as a user would."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "evalkit", *args], cwd=cwd or REPO, env=e, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    from evalkit.families.registry import ensure_tiny_pipeline

    return ensure_tiny_pipeline()


@pytest.fixture(scope="session")
def three_prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("prompts") / "three.txt"
    p.write_text(THREE_PROMPTS, encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, three_prompts: Path, tiny_model_path: Path) -> Path:
    """A real generated run: 3 prompts, 64x64, bf16 + torchao-int8wo + fp8-layerwise + one backend that cannot run
    on CPU (recorded as skipped). Shared by every stage's tests; treat it as read-only (copy it to modify)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    r = run_evalkit("generate", str(three_prompts), "--model", "tiny", "--height", "64", "--width", "64",
                    "--backends", "bf16,torchao-int8wo,fp8-layerwise,torchao-fp8dq", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture()
def fake_run_dir(tmp_path: Path) -> Path:
    """A run directory with no model: 3 prompts, bf16 + torchao-int8wo, 32x32 PNGs, records and summary built
    through evalkit's own builders (tests/fake_run.py; call make_run directly for other shapes)."""
    from fake_run import make_run

    return make_run(tmp_path / "fake-run")

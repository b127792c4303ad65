"""The README's "From Python" example as a script (issue #24.3): it runs with `python example.py`; without its
`__main__` guard evalkit says so in one line; a folder named `evalkit` beside a script does not hide evalkit."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _python(script: Path, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)  # as a user runs it: evalkit from the installed package only
    return subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, text=True, capture_output=True,
                          timeout=timeout)


def _workspace(tmp_path: Path) -> Path:
    (tmp_path / "prompts").mkdir()
    shutil.copy(REPO / "prompts" / "styles.txt", tmp_path / "prompts" / "styles.txt")
    return tmp_path


def test_the_readme_example_has_its_guard() -> None:
    code = readme_example()
    assert 'if __name__ == "__main__":' in code and code.rstrip().endswith("main()")


@pytest.mark.slow
def test_the_readme_example_runs_as_a_script(tmp_path: Path) -> None:
    work = _workspace(tmp_path)
    (work / "example.py").write_text(readme_example(), encoding="utf-8")
    r = _python(work / "example.py", work)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    out = r.stdout.splitlines()
    assert any(line.endswith("index.html") for line in out), r.stdout
    assert "0" in out, r.stdout  # the gate's exit code: pass
    assert list((work / "reports").glob("*/index.html")), list(work.rglob("*"))[:20]


def test_a_script_without_the_guard_is_refused_with_the_line_that_needs_it(tmp_path: Path) -> None:
    work = _workspace(tmp_path)
    script = work / "unguarded.py"
    script.write_text("import evalkit\n\n"
                      "run = evalkit.generate(['a red cube'], backends='bf16', model='tiny', height=32, width=32,\n"
                      "                       steps=1, out='run')\n", encoding="utf-8")
    r = _python(script, work, timeout=600)
    assert r.returncode != 0
    last = [ln for ln in r.stderr.splitlines() if ln.strip()][-1]
    assert f"{script}:3 calls evalkit at the script's top level, outside `if __name__ == \"__main__\":`" in last, \
        r.stderr[-3000:]
    assert not list((work / "run" / "images").rglob("*.png"))  # refused before any worker ran


def test_a_folder_named_evalkit_beside_the_script_does_not_hide_the_package(tmp_path: Path) -> None:
    """The clone's folder named `evalkit` and a script in the folder above it: Python would import the clone as an
    empty namespace package; its root __init__.py loads the installed evalkit instead, and says so."""
    (tmp_path / "evalkit").symlink_to(REPO, target_is_directory=True)
    script = tmp_path / "uses_evalkit.py"
    script.write_text("import evalkit\nprint(evalkit.generate.__name__, evalkit.__version__)\n", encoding="utf-8")
    r = _python(script, tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("evalkit.generate ")
    assert f"the folder {tmp_path / 'evalkit'} shadows the installed package" in r.stderr

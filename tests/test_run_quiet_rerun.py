"""Everyday use (issue #16.3, #16.4): third-party notices stay out of the console and in the run's logs; an
unchanged rerun of `evalkit run` imports no torch and leaves the report alone; a change makes the work happen."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import REPO, run_evalkit

# Markers of the notices torchao, torch._pytree, transformers and bitsandbytes print at import on this stack.
NOISE = ("_C_mxfp8", "_C_cutlass", "_pytree", "requires torchvision", "pip install kernels", "Unable to import `torchao`")


def _evalkit_importtime(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI under `python -X importtime`: stderr lists every module the process imported."""
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "evalkit", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=600)


def _imported(stderr: str) -> set[str]:
    return {ln.rsplit("|", 1)[1].strip() for ln in stderr.splitlines() if ln.startswith("import time:") and "|" in ln}


def test_quiet_run_then_noop_rerun_then_changes(tmp_path: Path, three_prompts: Path, tiny_model_path: Path) -> None:
    out = tmp_path / "run"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(three_prompts.read_text())
    cmd = ["run", str(prompts), "--model", "tiny", "--height", "64", "--width", "64",
           "--backends", "bf16,torchao-int8wo", "--metrics", "ssim,psnr", "--out", str(out)]
    r = run_evalkit(*cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    console = r.stdout + r.stderr
    assert not [n for n in NOISE if n in console], console[:3000]
    assert "Report:" in r.stdout
    log = (out / "logs" / "generate.log").read_text(errors="replace")
    assert any(n in log for n in NOISE), log[:2000]  # not silenced: kept where a user debugging a run looks

    index = out / "index.html"
    before = index.stat().st_mtime_ns
    again = _evalkit_importtime(*cmd, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    mods = _imported(again.stderr)
    assert "evalkit.cli" in mods and "rich" in mods  # the import list is real
    assert not {"torch", "transformers", "diffusers", "matplotlib"} & mods, sorted(mods & {"torch", "matplotlib"})
    assert index.stat().st_mtime_ns == before
    assert "nothing to do" in again.stderr and "Report:" in again.stdout

    # What the fast path must not skip: a prompts file with another prompt, a backend not generated yet.
    from evalkit.generate.stage import GenerateOptions
    from evalkit.generate.uptodate import unchanged_run

    same = dict(prompts_file=str(prompts), model="tiny", height=64, width=64, backends="bf16,torchao-int8wo",
                out=str(out))
    assert unchanged_run(GenerateOptions(**same)) == out
    assert unchanged_run(GenerateOptions(**{**same, "backends": "bf16,quanto-int8"})) is None
    prompts.write_text(three_prompts.read_text() + "a fourth prompt about a lighthouse\n")  # same path, new content
    assert unchanged_run(GenerateOptions(**same)) is None
    prompts.write_text(three_prompts.read_text())
    assert unchanged_run(GenerateOptions(**same)) == out

    # A report option changes the page: it is drawn again; the scores are not recomputed.
    r = run_evalkit(*cmd, "--report-thumb-size", "128")
    assert r.returncode == 0, r.stderr[-3000:]
    assert index.stat().st_mtime_ns != before
    assert "score: nothing to do" in r.stderr and "report: wrote" in r.stderr

    # An image replaced behind evalkit's back is regenerated; with -v the libraries' notices reach the console;
    # another metric set makes score run again.
    victim = next((out / "images" / "torchao-int8wo").glob("*.png"))
    victim.write_bytes(next((out / "images" / "bf16").glob("*.png")).read_bytes())
    r = run_evalkit("-v", *cmd[:-4], "--metrics", "ssim", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "regenerating 1 image(s)" in r.stderr
    assert any(n in r.stdout + r.stderr for n in NOISE), r.stderr[:3000]
    assert "score: nothing to do" not in r.stderr


def test_other_packages_python_warnings_go_to_the_stage_log(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import warnings
        from evalkit.logs import attach_run_log, capture_third_party_warnings
        capture_third_party_warnings()
        warnings.warn_explicit("third-party notice", UserWarning, "/x/site-packages/somepkg/mod.py", 3)
        attach_run_log({str(tmp_path)!r}, "score")
        warnings.warn_explicit("later notice", DeprecationWarning, "/x/site-packages/somepkg/mod.py", 4)
        warnings.warn_explicit("evalkit says this", UserWarning, "/src/evalkit/score/stage.py", 5)
    """)
    r = subprocess.run([sys.executable, "-W", "always", "-c", code], cwd=REPO, text=True, capture_output=True)
    assert r.returncode == 0, r.stderr
    assert "third-party notice" not in r.stderr and "later notice" not in r.stderr
    assert "evalkit says this" in r.stderr
    log = (tmp_path / "logs" / "score.log").read_text()
    assert "third-party notice" in log and "later notice" in log
    r = subprocess.run([sys.executable, "-W", "always", "-c", code], cwd=REPO, text=True, capture_output=True,
                       env={**__import__("os").environ, "EVALKIT_VERBOSE": "1"})
    assert "third-party notice" in r.stderr

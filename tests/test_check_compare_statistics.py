"""compare's statistics do not overclaim (issue #13.6): p never below 1/B, nothing significant under the
minimum number of prompts, and the last line agrees with the regressions listed."""

from __future__ import annotations

from pathlib import Path

from check_fixtures import PROMPTS, make_run, manifest
from evalkit.check.compare import MIN_PROMPTS_FOR_SIGNIFICANCE, _p, paired_bootstrap
from evalkit.cli import main


def test_p_value_never_below_what_the_bootstrap_resolves() -> None:
    base = [0.1 + 0.01 * i for i in range(12)]
    r = paired_bootstrap(base, [v + 0.05 for v in base], n_bootstrap=1000)
    assert r.p_value == 1 / 1000 and r.p_at_resolution  # every resample was > 0: p is at most 1/B, not 0
    assert _p(r.p_value, 1000) == "< 1/1000"
    assert _p(0.0312, 1000) == "0.0312"


def test_too_few_prompts_are_never_significant() -> None:
    base = [0.10, 0.14, 0.12, 0.09, 0.15]
    r = paired_bootstrap(base, [v + 0.05 for v in base], n_bootstrap=2000)
    assert r.ci_low > 0  # the CI alone would call it: every one of 5 deltas is +0.05
    assert not r.significant and not r.enough_prompts
    assert MIN_PROMPTS_FOR_SIGNIFICANCE == 10


def test_five_prompts_give_no_regression_and_say_why(tmp_path: Path, capsys) -> None:
    m = manifest(prompts=PROMPTS[:5])
    base = make_run(tmp_path / "base", m)
    cand = make_run(tmp_path / "cand", m, shift=0.05)
    assert main(["compare", str(base), str(cand), "--fail-on-regression"]) == 0
    out = capsys.readouterr().out
    assert "too few prompts (n=5 < 10)" in out and "no significant regression" in out
    assert "⚠ regression" not in out and "shown but never called significant" in out
    verdict = next(l for l in out.splitlines() if l.startswith(("PASS", "FAIL")))
    assert verdict.startswith("PASS:"), verdict


def test_final_verdict_line_agrees_with_the_regressions(tmp_path: Path, capsys) -> None:
    base = make_run(tmp_path / "base")
    cand = make_run(tmp_path / "cand", shift=0.02)
    assert main(["compare", str(base), str(cand)]) == 0  # report only: exit 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
    verdict = next(l for l in lines if l.startswith(("PASS", "FAIL")))
    assert verdict.startswith("PASS WITH REGRESSIONS"), verdict
    md = (cand / "check" / "compare-summary.md").read_text()
    assert "**PASS WITH REGRESSIONS (6 significant regression(s)" in md.splitlines()[0]
    assert main(["compare", str(base), str(cand), "--fail-on-regression", "-q"]) == 1
    md = (cand / "check" / "compare-summary.md").read_text()
    assert "**FAIL (6 significant regression(s))**" in md.splitlines()[0]

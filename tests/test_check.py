"""`evalkit check`: the release gate's exit codes, messages and outputs, on tiny synthetic runs."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from check_fixtures import make_run, write
from evalkit.cli import main

XSD = Path(__file__).resolve().parent.parent / "evalkit" / "check" / "schema" / "junit-10.xsd"

PASSING = """\
# bounds every backend of the fixture run meets
[default]
lpips_alex_max = 0.2
ssim_min = 0.8
psnr_min = 20
fid_max = 20
latency_ratio_to_bf16_max = 2.0
require_status_ok = true

[backends."torchao-int8wo"]
lpips_alex_max = 0.08
"""


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run")


def check(run: Path, thresholds: Path, *extra: str) -> int:
    return main(["check", str(run), "--thresholds", str(thresholds), *extra])


def junit_cases(path: Path) -> list[ET.Element]:
    return ET.parse(path).getroot().findall(".//testcase")


# --- exit codes -------------------------------------------------------------------------------------------

def test_pass_exits_0_and_writes_outputs(run: Path, tmp_path: Path, capsys) -> None:
    assert check(run, write(tmp_path / "t.toml", PASSING)) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "torchao-int8wo" in out
    md = (run / "check" / "summary.md").read_text()
    assert "**PASS**" in md and "| bnb-nf4 | `lpips_alex_max` |" in md
    # [default] has 6 entries (5 bounds + require_status_ok) for 2 non-reference backends; bf16 is not judged.
    cases = junit_cases(run / "check" / "junit.xml")
    assert len(cases) == 12
    assert {c.get("classname") for c in cases} == {"evalkit.check.bnb-nf4", "evalkit.check.torchao-int8wo"}


def test_violated_bound_exits_1_and_names_value_and_bound(run: Path, tmp_path: Path, capsys) -> None:
    th = write(tmp_path / "t.toml", '[backends."bnb-nf4"]\nlpips_alex_max = 0.05\nssim_min = 0.5\n')
    assert check(run, th) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out
    root = ET.parse(run / "check" / "junit.xml").getroot()
    failures = root.findall(".//failure")
    assert len(failures) == 1
    msg = failures[0].get("message")
    assert "lpips_alex mean 0.1183 is above the maximum 0.05" in msg
    assert 'backends."bnb-nf4"' in msg
    assert "❌ **FAIL**" in (run / "check" / "summary.md").read_text()


def test_per_backend_section_overrides_default(run: Path, tmp_path: Path) -> None:
    th = write(tmp_path / "t.toml", '[default]\nlpips_alex_max = 0.05\n[backends."bnb-nf4"]\nlpips_alex_max = 0.2\n')
    assert check(run, th, "-q") == 1
    failed = [c for c in junit_cases(run / "check" / "junit.xml") if c.find("failure") is not None]
    assert [c.get("classname") for c in failed] == ["evalkit.check.torchao-int8wo"]


def test_use_ci_judges_the_confidence_bound(run: Path, tmp_path: Path) -> None:
    # bnb-nf4's lpips mean is 0.1183 and its ci_high about 0.1353: the mean passes 0.125, the CI bound does not.
    th = write(tmp_path / "t.toml", '[backends."bnb-nf4"]\nlpips_alex_max = 0.125\nssim_min = 0.88\n')
    assert check(run, th, "-q") == 0
    assert check(run, th, "-q", "--use-ci") == 1
    md = (run / "check" / "summary.md").read_text()
    assert "(ci_high)" in md and "(ci_low)" in md


def test_use_ci_on_a_metric_without_ci_says_so(run: Path, tmp_path: Path) -> None:
    assert check(run, write(tmp_path / "t.toml", "[default]\nfid_max = 20\n"), "-q", "--use-ci") == 0
    assert "no CI" in (run / "check" / "summary.md").read_text()


@pytest.mark.parametrize("bad, where", [
    ("[default]\nlpips_alex_max = 0.1\nssim_min 0.8\n", ":3:"),  # missing '='
    ("[default]\nlpips_alex_max = 0.1\n[default]\nssim_min = 0.8\n", ":3:"),  # table defined twice
    ('[backends.bnb+nf4]\nssim_min = 0.8\n', ":1:"),  # '+' needs quotes
    ("[default]\nlpips_alex_max = [0.1\n", ":2:"),  # unclosed array
])
def test_malformed_toml_exits_2_naming_the_line(run: Path, tmp_path: Path, capsys, bad: str, where: str) -> None:
    th = write(tmp_path / "bad.toml", bad)
    assert check(run, th) == 2
    err = capsys.readouterr().err
    assert err.startswith("evalkit: error: ") and len(err.strip().splitlines()) == 1
    assert f"bad.toml{where}" in err and "invalid TOML" in err


@pytest.mark.parametrize("text, line, wrong, right", [
    ("[default]\nssim_min = 0.8\nlpips_alx_max = 0.1\n", 3, "lpips_alx_max", "lpips_alex_max"),
    ("[default]\nlpips_max = 0.1\n", 2, "lpips_max", "lpips_alex_max"),  # the shorthand: which net?
    ("[default]\npeak_memory_reserved_max = 30\n", 2, "peak_memory_reserved_max", "peak_memory_reserved_gib_max"),
    ("[default]\nlatency_ratio_to_bf16_min = 1\n", 2, "latency_ratio_to_bf16_min", "latency_ratio_to_bf16_max"),
    ('[backends."bnb-nf4"]\nclipscore_min = 20\n', 2, "clipscore_min", "clip_score_min"),
    ('[default]\nssim_min = 0.8\n\n[backends."bnb-nf5"]\nssim_min = 0.8\n', 4, "bnb-nf5", "bnb-nf4"),
    ('[backends."torchao_int8wo"]\nssim_min = 0.8\n', 1, "torchao_int8wo", "torchao-int8wo"),
    ("[defaults]\nssim_min = 0.8\n", 1, "defaults", "default"),
])
def test_unknown_names_exit_2_with_suggestion(run: Path, tmp_path: Path, capsys, text, line, wrong, right) -> None:
    assert check(run, write(tmp_path / "t.toml", text)) == 2
    err = capsys.readouterr().err
    assert f"t.toml:{line}:" in err
    assert repr(wrong) in err
    assert "Did you mean" in err and right in err.split("Did you mean", 1)[1]


def test_metric_known_only_from_the_run_is_accepted(tmp_path: Path) -> None:
    # A metric this module has never heard of, but the run scored, is a valid bound name.
    import json

    run = make_run(tmp_path / "run")
    rec_path = run / "metrics" / "bnb-nf4.json"
    rec = json.loads(rec_path.read_text())
    rec["metrics"]["image_reward"] = {"status": "ok", "mean": 0.4, "n": 6, "higher_is_better": True}
    rec_path.write_text(json.dumps(rec))
    from evalkit.rundir import write_summary

    write_summary(run)
    assert check(run, write(tmp_path / "t.toml", '[backends."bnb-nf4"]\nimage_reward_min = 0.3\n'), "-q") == 0


@pytest.mark.parametrize("text, fragment", [
    ("[default]\nlpips_alex_max = '0.1'\n", "must be a number"),
    ("[default]\nlpips_alex_max = true\n", "must be a number"),
    ("[default]\nrequire_status_ok = 1\n", "must be true or false"),
    ("lpips_alex_max = 0.1\n", "Bounds go under [default]"),
    ("[default]\n", "no bound applies"),
])
def test_invalid_values_exit_2(run: Path, tmp_path: Path, capsys, text: str, fragment: str) -> None:
    assert check(run, write(tmp_path / "t.toml", text)) == 2
    assert fragment in capsys.readouterr().err


def test_missing_run_files_exit_2(tmp_path: Path, capsys) -> None:
    th = write(tmp_path / "t.toml", PASSING)
    assert check(tmp_path / "nope", th) == 2
    assert "run directory not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert check(tmp_path / "empty", th) == 2
    assert "no manifest.json" in capsys.readouterr().err
    run = make_run(tmp_path / "run")
    (run / "summary.json").unlink()
    assert check(run, th) == 2
    assert "summary.json: not found" in capsys.readouterr().err
    run2 = make_run(tmp_path / "run2")
    assert check(run2, tmp_path / "missing.toml") == 2
    assert "thresholds file not found" in capsys.readouterr().err


def test_unscored_run_with_metric_bounds_exits_2(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run", score=False)
    assert check(run, write(tmp_path / "t.toml", PASSING)) == 2
    assert "has not been scored" in capsys.readouterr().err
    # Resource bounds alone need no scoring.
    assert check(run, write(tmp_path / "r.toml", "[default]\nlatency_ratio_to_bf16_max = 2\n"), "-q") == 0


def test_error_replaces_stale_outputs_with_an_error_verdict(run: Path, tmp_path: Path) -> None:
    # CI uploads RUN_DIR/check/* whatever the exit code: an old PASS must not outlive a check that errored.
    assert check(run, write(tmp_path / "t.toml", PASSING), "-q") == 0
    assert "**PASS**" in (run / "check" / "summary.md").read_text()
    assert check(run, write(tmp_path / "bad.toml", "[default\n"), "-q") == 2
    md = (run / "check" / "summary.md").read_text()
    assert "**ERROR**" in md and "PASS" not in md and "bad.toml:1" in md
    root = ET.parse(run / "check" / "junit.xml").getroot()
    errors = list(root.iter("error"))
    assert root.get("errors") == "1" and len(errors) == 1 and "invalid TOML" in errors[0].get("message")
    assert not list(root.iter("failure"))  # an error is not a failed bound
    _validate_xsd(run / "check" / "junit.xml")


# --- what must fail, not silently pass ----------------------------------------------------------------------

def test_skipped_metric_demanded_is_a_failure_with_its_reason(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run", skipped={"clip_score": "no CLIP weights found: run `evalkit weights prepare`"})
    th = write(tmp_path / "t.toml", "[default]\nclip_score_min = 20\nssim_min = 0.5\n")
    assert check(run, th) == 1
    out = capsys.readouterr().out
    assert "clip_score was skipped in the run: no CLIP weights found" in out
    cases = {(c.get("classname"), c.get("name")): c for c in junit_cases(run / "check" / "junit.xml")}
    clip = cases[("evalkit.check.bnb-nf4", "clip_score_min")]
    assert clip.find("failure") is not None and clip.find("skipped") is None
    assert "no CLIP weights found" in clip.find("failure").get("message")
    assert cases[("evalkit.check.bnb-nf4", "ssim_min")].find("failure") is None


def test_metric_never_scored_for_backend_fails(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    assert check(run, write(tmp_path / "t.toml", "[default]\nms_ssim_min = 0.5\n"), "-q") == 1
    assert "ms_ssim not scored for this backend" in (run / "check" / "summary.md").read_text()


def test_failed_backend_named_by_thresholds_fails_with_reason(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", failed={"bnb-nf4": "CUDA out of memory while loading transformer"})
    th = write(tmp_path / "t.toml", "[default]\nrequire_status_ok = true\nlpips_alex_max = 0.2\n")
    assert check(run, th, "-q") == 1
    cases = {(c.get("classname"), c.get("name")): c for c in junit_cases(run / "check" / "junit.xml")}
    for name in ("require_status_ok", "lpips_alex_max"):
        f = cases[("evalkit.check.bnb-nf4", name)].find("failure")
        assert f is not None and "CUDA out of memory while loading transformer" in f.get("message")
    assert cases[("evalkit.check.torchao-int8wo", "lpips_alex_max")].find("failure") is None


def test_unmeasured_memory_fails_unless_allowed(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")  # a CPU run: CUDA memory is null with cuda_reason "device is cpu"
    strict = write(tmp_path / "s.toml", "[default]\npeak_memory_reserved_gib_max = 30\n")
    assert check(run, strict, "-q") == 1
    md = (run / "check" / "summary.md").read_text()
    assert "not measured" in md and "device is cpu" in md and "allow_unmeasured" in md
    lenient = write(tmp_path / "l.toml", "[default]\npeak_memory_reserved_gib_max = 30\nallow_unmeasured = true\n")
    assert check(run, lenient, "-q") == 0
    root = ET.parse(run / "check" / "junit.xml").getroot()
    assert len(root.findall(".//skipped")) == 2
    assert all(s.get("skipped") == "1" for s in root.findall("testsuite"))


def test_allow_unmeasured_never_excuses_a_skipped_metric(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", skipped={"clip_score": "no CLIP weights"})
    th = write(tmp_path / "t.toml", "[default]\nclip_score_min = 20\nallow_unmeasured = true\n")
    assert check(run, th, "-q") == 1


def test_memory_bounds_on_a_cuda_run(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", device="cuda", peak_reserved={"bf16": 33.0, "bnb-nf4": 12.0, "torchao-int8wo": 21.0})
    th = write(tmp_path / "t.toml", """
[default]
peak_memory_reserved_gib_max = 20
memory_after_load_allocated_gib_max = 20
[backends."bf16"]
peak_memory_reserved_gib_max = 35
""")
    assert check(run, th, "-q") == 1
    cases = junit_cases(run / "check" / "junit.xml")
    failed = [(c.get("classname"), c.get("name")) for c in cases if c.find("failure") is not None]
    assert failed == [("evalkit.check.torchao-int8wo", "peak_memory_reserved_gib_max")]
    # The reference is judged only through its own section.
    assert ("evalkit.check.bf16", "peak_memory_reserved_gib_max") in [(c.get("classname"), c.get("name")) for c in cases]


def test_flagged_images_bound(tmp_path: Path) -> None:
    from check_fixtures import manifest

    m = manifest()
    pid = m["prompts"][0]["id"]
    run = make_run(tmp_path / "run", m, flags={"bnb-nf4": {pid: ["nan"]}})
    assert check(run, write(tmp_path / "t.toml", "[default]\nflagged_images_max = 0\n"), "-q") == 1
    assert "nan: 1" in (run / "check" / "junit.xml").read_text()


def test_bound_on_the_good_side_warns(run: Path, tmp_path: Path, capsys) -> None:
    assert check(run, write(tmp_path / "t.toml", "[default]\nssim_max = 0.99\n"), "-q") == 0
    assert "did you mean ssim_min" in capsys.readouterr().err


def test_random_weights_run_warns(tmp_path: Path) -> None:
    from check_fixtures import manifest

    m = manifest()
    m["model"].update(random_weights=True, quality_meaningful=False, note="random:flux-dev")
    run = make_run(tmp_path / "run", m)
    assert check(run, write(tmp_path / "t.toml", "[default]\nlatency_ratio_to_bf16_max = 2\n"), "-q") == 0
    assert "random weights" in (run / "check" / "summary.md").read_text()


def test_output_paths_and_dash_disables(run: Path, tmp_path: Path) -> None:
    th = write(tmp_path / "t.toml", PASSING)
    assert check(run, th, "-q", "--junit", str(tmp_path / "out" / "j.xml"), "--markdown", "-") == 0
    assert (tmp_path / "out" / "j.xml").exists()
    assert not (run / "check" / "summary.md").exists()


# --- JUnit schema -------------------------------------------------------------------------------------------

def _validate_structure(path: Path) -> None:
    """The checks junit-10.xsd makes that matter to CI parsers, for machines without xmlschema."""
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    total = 0
    for suite in root.findall("testsuite"):
        for attr in ("name", "tests", "failures", "errors"):
            assert suite.get(attr) is not None, attr
        cases = suite.findall("testcase")
        assert int(suite.get("tests")) == len(cases)
        assert int(suite.get("failures")) == sum(c.find("failure") is not None for c in cases)
        assert int(suite.get("skipped")) == sum(c.find("skipped") is not None for c in cases)
        assert int(suite.get("errors")) == 0
        for c in cases:
            assert c.get("name") and c.get("classname", "").startswith("evalkit.")
            assert {ch.tag for ch in c} <= {"failure", "skipped", "error", "system-out", "system-err"}
        total += len(cases)
    assert int(root.get("tests")) == total


def _validate_xsd(path: Path) -> None:
    xmlschema = pytest.importorskip("xmlschema", reason="xmlschema (dev dependency) validates against junit-10.xsd")
    xmlschema.XMLSchema(str(XSD)).validate(str(path))


@pytest.mark.parametrize("text, use_ci", [(PASSING, False), ("[default]\nlpips_alex_max = 0.01\nclip_score_min = 1\n"
                                                           "peak_memory_reserved_gib_max = 1\n[backends.\"bnb-nf4\"]\n"
                                                           "allow_unmeasured = true\n", True)])
def test_junit_validates_against_schema_one_testcase_per_bound(tmp_path: Path, text: str, use_ci: bool) -> None:
    run = make_run(tmp_path / "run", skipped={"clip_score": "no weights <&> \"quoted\""})
    th = write(tmp_path / "t.toml", text)
    check(run, th, "-q", *(["--use-ci"] if use_ci else []))
    path = run / "check" / "junit.xml"
    _validate_structure(path)
    _validate_xsd(path)
    import tomllib

    data = tomllib.loads(text)
    default_keys = [k for k in data.get("default", {}) if k != "allow_unmeasured"]
    for backend in ("bnb-nf4", "torchao-int8wo"):
        own = [k for k in data.get("backends", {}).get(backend, {}) if k not in ("allow_unmeasured",)]
        names = [c.get("name") for c in junit_cases(path) if c.get("classname") == f"evalkit.check.{backend}"]
        assert sorted(names) == sorted(set(default_keys) | set(own))


def test_xsd_rejects_broken_junit(tmp_path: Path) -> None:
    # Proves the validation above can fail: a testcase without its required name.
    xmlschema = pytest.importorskip("xmlschema")
    bad = write(tmp_path / "bad.xml", '<testsuites><testsuite name="s" tests="1" failures="0" errors="0">'
                                      '<testcase classname="c"/></testsuite></testsuites>')
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        xmlschema.XMLSchema(str(XSD)).validate(str(bad))


# --- the real command line ------------------------------------------------------------------------------------

def test_subprocess_exit_codes(run: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}

    def rc(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "evalkit", "check", str(run), *args],
                              capture_output=True, text=True, env=env, timeout=120)

    ok = rc("--thresholds", str(write(tmp_path / "ok.toml", PASSING)))
    assert ok.returncode == 0, ok.stderr
    assert "PASS" in ok.stdout
    bad = rc("--thresholds", str(write(tmp_path / "fail.toml", "[default]\nssim_min = 0.99\n")))
    assert bad.returncode == 1 and "FAIL" in bad.stdout
    err = rc("--thresholds", str(write(tmp_path / "err.toml", "[default]\nssim_min = \n")))
    assert err.returncode == 2 and "err.toml:2:" in err.stderr and "Traceback" not in err.stderr


def test_cli_module_imports_nothing_heavy() -> None:
    code = ("import sys, evalkit.cli, evalkit.check.cli; evalkit.cli.build_parser(); "
            "heavy = [m for m in ('torch', 'numpy', 'diffusers', 'rich') if m in sys.modules]; print(heavy)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    # Other stages' cli modules are the lead's; this asserts at least that check's does not pull these in.
    code2 = ("import sys, evalkit.check.cli; "
             "print([m for m in ('torch', 'numpy', 'diffusers', 'rich', 'evalkit.check.compare') if m in sys.modules])")
    out2 = subprocess.run([sys.executable, "-c", code2], capture_output=True, text=True, env=env, timeout=60)
    assert out2.stdout.strip() == "[]", out2.stdout


# --- the shipped example and the docs -------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent


def test_example_thresholds_file_is_valid_for_its_backends(tmp_path: Path) -> None:
    # Same backends as the example's sections; a CUDA run so memory is measured. Exit 1 is fine (the fixture
    # has no clip_score_drop), exit 2 would mean the shipped example itself is broken.
    run = make_run(tmp_path / "run", device="cuda", peak_reserved={"bf16": 33.0, "bnb-nf4": 12.0, "torchao-int8wo": 20.0})
    assert check(run, REPO / "thresholds.example.toml", "-q") == 1
    md = (run / "check" / "summary.md").read_text()
    assert "clip_score_drop not scored" in md
    assert "bnb-nf4** `peak_memory_reserved_gib_max`" not in md  # 12 GiB is within nf4's 18


def test_docs_name_every_bound() -> None:
    from evalkit.check.thresholds import KNOWN_METRICS, OPTIONS, RESOURCES

    doc = (REPO / "docs" / "release-gate.md").read_text()
    for name in [*KNOWN_METRICS, *OPTIONS]:
        assert f"`{name}" in doc or f"{name}`" in doc, name
    for r in RESOURCES:
        assert f"{r}_max" in doc, r


def test_ignore_opts_one_backend_out_visibly(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", failed={"bnb-nf4": "needs CUDA"})
    th = write(tmp_path / "t.toml", '[default]\nrequire_status_ok = true\n[backends."bnb-nf4"]\nignore = true\n')
    assert check(run, th, "-q") == 0
    cases = {(c.get("classname"), c.get("name")): c for c in junit_cases(run / "check" / "junit.xml")}
    assert cases[("evalkit.check.bnb-nf4", "ignore")].find("skipped") is not None
    assert check(run, write(tmp_path / "d.toml", "[default]\nignore = true\n"), "-q") == 2


@pytest.mark.slow
def test_end_to_end_on_a_real_tiny_run(tiny_run: Path, tmp_path: Path) -> None:
    """The shared generated tiny run (CPU: CUDA memory null; torchao-fp8dq recorded as skipped)."""
    import shutil

    from conftest import run_evalkit

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    th = write(tmp_path / "t.toml", """
[default]
require_status_ok = true
latency_ratio_to_bf16_max = 1000
load_time_s_max = 1000
peak_memory_reserved_gib_max = 100
allow_unmeasured = true
""")
    r = run_evalkit("check", str(run), "--thresholds", str(th))
    # torchao-fp8dq cannot run on CPU: named by [default], it fails with the generation's own reason.
    assert r.returncode == 1, r.stderr
    root = ET.parse(run / "check" / "junit.xml").getroot()
    failed = {c.get("classname") for c in root.iter("testcase") if c.find("failure") is not None}
    assert failed == {"evalkit.check.torchao-fp8dq"}
    import json

    skip_reason = json.loads((run / "generation" / "torchao-fp8dq.json").read_text())["reason"]
    assert skip_reason and skip_reason in next(root.iter("failure")).get("message")
    _validate_structure(run / "check" / "junit.xml")

    th.write_text(th.read_text() + '\n[backends."torchao-fp8dq"]\nignore = true\n')
    r = run_evalkit("check", str(run), "--thresholds", str(th))
    assert r.returncode == 0, r.stdout + r.stderr
    # Comparing the run with itself: every quality delta is exactly zero.
    r = run_evalkit("compare", str(tiny_run), str(run), "--fail-on-regression")
    assert r.returncode == 0, r.stdout + r.stderr

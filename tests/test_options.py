"""Each stage's options are declared once (evalkit/options.py): the CLI, the Python API, the argv a launcher passes
to its ranks and the manifest entry are derived from one dataclass. These tests fail when an option reaches one of
them and not another, whatever option is added later: the values are made from the declarations themselves."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
from pathlib import Path
from typing import Any

import pytest

from evalkit.calibrate.options import CalibrateOptions
from evalkit.check.options import CheckOptions, CompareOptions
from evalkit.cli import build_parser
from evalkit.errors import EvalkitError
from evalkit.generate.options import BackendsOptions, GenerateOptions, prompts_slug
from evalkit.options import Field, api_fields, option_fields
from evalkit.report.options import ReportOptions
from evalkit.score.options import RUN_FLAGS, ScoreOptions

REPO = Path(__file__).resolve().parents[1]


def _api_functions(cls: type) -> list[Any]:
    """The Python functions that take `cls`'s options as keyword arguments."""
    import evalkit.api

    if cls is GenerateOptions:
        return [evalkit.api.generate]
    if cls is ScoreOptions:
        import evalkit.score.api

        return [evalkit.score.api.score, evalkit.api.score]
    if cls in (ReportOptions, CheckOptions, CompareOptions, BackendsOptions):
        return [{ReportOptions: evalkit.api.report, CheckOptions: evalkit.api.check,
                 CompareOptions: evalkit.api.compare, BackendsOptions: evalkit.api.list_backends}[cls]]
    from evalkit.calibrate.stage import run_calibration

    return [run_calibration]


# (options class, its command)
STAGES = [(GenerateOptions, "generate"), (CalibrateOptions, "calibrate"), (ScoreOptions, "score"),
          (ReportOptions, "report"), (CheckOptions, "check"), (CompareOptions, "compare"),
          (BackendsOptions, "backends")]


def _other_value(f: Field) -> Any:
    """A valid value of `f` that is not its default."""
    if f.spec.choices:
        return next(c for c in f.spec.choices if c != f.default)
    if f.is_list:
        return ["0", "1"] if f.name == "gpus" else [f"{f.name}-a", f"{f.name}-b"]
    if f.base is bool:
        return True if f.default in (None, False) else False
    if f.base is int:
        return (f.default or 0) + 3
    if f.base is float:
        return (f.default or 0.0) + 2.5
    return f"{f.name}-value"


def non_default(cls: type) -> Any:
    """An instance of `cls` with every option set to something other than its default."""
    return cls(**{f.name: _other_value(f) for f in option_fields(cls)})


def _options(opts: Any) -> dict[str, Any]:
    """The user options of `opts` (not the internal fields such as the command line it came from)."""
    return {f.name: getattr(opts, f.name) for f in option_fields(type(opts))}


def _subparser(command: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


@pytest.mark.parametrize("cls,command", STAGES)
def test_every_option_survives_the_launchers_argv(cls: type, command: str) -> None:
    """every field -> argv (what --gpus/--jobs pass to the ranks) -> the real parser -> the same options."""
    opts = non_default(cls)
    args = build_parser().parse_args([command, *opts.to_argv()])
    assert _options(cls.from_args(args)) == _options(opts)
    # and the defaults, which the argv leaves out, come back as defaults
    plain = cls(**{f.name: _other_value(f) for f in option_fields(cls)
                   if f.spec.positional or f.default is dataclasses.MISSING})
    assert _options(cls.from_args(build_parser().parse_args([command, *plain.to_argv()]))) == _options(plain)


def test_evalkit_run_takes_every_generate_option_and_the_scoring_ones() -> None:
    opts = non_default(GenerateOptions)
    assert _options(GenerateOptions.from_args(build_parser().parse_args(["run", *opts.to_argv()]))) == _options(opts)
    score = non_default(ScoreOptions)
    argv = [a for a in score.to_argv()[1:] if a.split("=")[0].lstrip("-").replace("-", "_") in RUN_FLAGS]
    args = build_parser().parse_args(["run", "p.txt", *argv])
    args.run_dir = "RUN"  # what generate_main sets for the later stages
    back = ScoreOptions.from_args(args)
    assert {k: getattr(back, k) for k in RUN_FLAGS} == {k: getattr(score, k) for k in RUN_FLAGS}


@pytest.mark.parametrize("cls,command", STAGES)
def test_every_option_has_help_and_nothing_else_is_on_the_command_line(cls: type, command: str) -> None:
    for f in option_fields(cls):
        assert len(f.spec.help.split()) >= 3, f"{cls.__name__}.{f.name} has no help"
    dests = {a.dest for a in _subparser(command)._actions if a.dest not in ("help", "verbose")}
    assert dests == {f.name for f in option_fields(cls)}, "a flag declared outside the options dataclass"
    text = _subparser(command).format_help()
    for f in option_fields(cls):
        assert (f.spec.metavar or f.api_name) in text if f.spec.positional else f.flag in text


@pytest.mark.parametrize("cls,command", STAGES)
def test_every_option_is_a_documented_parameter_of_the_python_api(cls: type, command: str) -> None:
    """Every option but the few that only the command line has (a launcher's --gpus, the terminal's --quiet)."""
    cli_only = {f.name for f in option_fields(cls) if not f.spec.api}
    # the API returns check's and compare's result, which the JUnit and Markdown files only render
    assert cli_only <= {"quiet", "gpus", "jobs", "junit", "markdown", "json"}, cli_only
    for fn in _api_functions(cls):
        params = inspect.signature(fn).parameters
        for f in api_fields(cls):
            assert f.api_name in params, f"{fn.__module__}.{fn.__name__} lacks {f.api_name}"
            default = params[f.api_name].default
            if f.default is not dataclasses.MISSING:
                assert default == (tuple(f.default) if isinstance(f.default, list) else f.default), f.name
        doc = _api_functions(cls)[0].__doc__
        for f in api_fields(cls):
            assert f"{f.api_name} (" in doc, f"the docstring does not document {f.api_name}"
    opts = non_default(cls)
    values = {f.api_name: getattr(opts, f.name) for f in api_fields(cls)}
    assert {k: v for k, v in _options(cls.from_api(values)).items() if k not in cli_only} == \
        {k: v for k, v in _options(opts).items() if k not in cli_only}


def test_evalkit_run_takes_the_report_options_as_report_flags_and_report_takes_them_too() -> None:
    from evalkit.report.cli import RUN_FIELDS
    from evalkit.report.data import MEMORY_AXES

    opts = non_default(ReportOptions)
    argv = ["--report-" + a[2:] for a in opts.to_argv()[1:] if a.split("=")[0][2:].replace("-", "_") in RUN_FIELDS]
    args = build_parser().parse_args(["run", "p.txt", *argv])
    args.run_dir = opts.run_dir  # what generate_main sets for the later stages
    back = ReportOptions.from_args(args)
    assert {k: getattr(back, k) for k in RUN_FIELDS} == {k: getattr(opts, k) for k in RUN_FIELDS}
    alone = ReportOptions.from_args(build_parser().parse_args(["report", opts.run_dir, *argv]))
    assert {k: getattr(alone, k) for k in RUN_FIELDS} == {k: getattr(opts, k) for k in RUN_FIELDS}
    assert ReportOptions.from_args(build_parser().parse_args(["report", "R"])) == ReportOptions(run_dir="R")
    assert set(f.spec.choices for f in option_fields(ReportOptions) if f.name == "memory_axis").pop() == \
        ("auto", *MEMORY_AXES), "the report's memory axes are declared in report/data.py"


def test_values_argparse_cannot_refuse_are_refused_in_one_line_by_the_cli_and_the_api(tmp_path: Path) -> None:
    import evalkit

    with pytest.raises(EvalkitError, match=r"^--alpha must be between 0 and 1, not 1.5$"):
        evalkit.compare(tmp_path, tmp_path, alpha=1.5)
    with pytest.raises(EvalkitError, match=r"^--thumb-size 8: choose between 32 and 2048 pixels$"):
        evalkit.report(tmp_path, thumb_size=8)
    with pytest.raises(EvalkitError, match=r"^evalkit.check: use_ci = 'yes': expected bool$"):
        evalkit.check(tmp_path, tmp_path / "t.toml", use_ci="yes")
    with pytest.raises(SystemExit):  # argparse: --thresholds is required
        build_parser().parse_args(["check", "RUN"])


def test_api_takes_paths_and_sequences_and_refuses_a_wrong_type_naming_it(tmp_path: Path) -> None:
    opts = GenerateOptions.from_api({"prompts": tmp_path / "p.txt", "backends": ["bf16", "torchao-int8wo"],
                                     "components": "transformer, text_encoder_2", "plugins": [tmp_path / "a.py"],
                                     "config": tmp_path / "c.toml", "guidance": 3})
    assert opts.prompts_file == str(tmp_path / "p.txt") and opts.backends == "bf16,torchao-int8wo"
    assert opts.components == ["transformer", "text_encoder_2"] and opts.plugins == [str(tmp_path / "a.py")]
    assert opts.config_file == str(tmp_path / "c.toml") and opts.guidance == 3.0
    assert GenerateOptions.from_api({"prompts": "p.txt", "gpus": None}).gpus == []
    with pytest.raises(EvalkitError, match=r"^evalkit.generate: height = '64': expected int or null$"):
        GenerateOptions.from_api({"prompts": "p.txt", "height": "64"}, "evalkit.generate")
    with pytest.raises(EvalkitError, match="schedule = 'fastest': expected one of auto, prompts, backends"):
        GenerateOptions.from_api({"prompts": "p.txt", "schedule": "fastest"})
    import evalkit

    with pytest.raises(TypeError, match="retry_failed"):
        evalkit.generate("p.txt", retry_failed=False)


@pytest.mark.parametrize("cls,command", STAGES)
def test_manifest_entry_reads_back(cls: type, command: str) -> None:
    opts = non_default(cls)
    stored = json.loads(json.dumps(opts.to_manifest()))
    assert _options(cls.from_manifest(stored, "manifest.json")) == _options(opts)


def test_a_renamed_or_mistyped_stored_option_is_refused_naming_it() -> None:
    """Calibration rebuilds the run's generate options from the manifest: an option this evalkit does not know
    (renamed, or from a newer evalkit) used to be dropped silently, regenerating other images than the run's."""
    stored = GenerateOptions(prompts_file="p.txt").to_manifest()
    with pytest.raises(EvalkitError, match=r"^manifest.json: config.options: unknown option\(s\) heigth, seeds "):
        GenerateOptions.from_manifest({**stored, "heigth": 64, "seeds": 2}, "manifest.json: config.options")
    with pytest.raises(EvalkitError, match=r"^m: steps = '4': expected int or null$"):
        GenerateOptions.from_manifest({**stored, "steps": "4"}, "m")
    with pytest.raises(EvalkitError, match="m: batch_size = True: expected int"):
        GenerateOptions.from_manifest({**stored, "batch_size": True}, "m")
    with pytest.raises(EvalkitError, match="required option prompts_file is missing"):
        GenerateOptions.from_manifest({"model": "tiny"}, "m")
    # an option that was removed because it was never read is ignored in manifests written before
    assert GenerateOptions.from_manifest({**stored, "retry_failed": True}, "m") == GenerateOptions(prompts_file="p.txt")


def test_the_committed_old_run_s_options_read_back() -> None:
    manifest = json.loads((REPO / "tests" / "data" / "run-v1" / "manifest.json").read_text())
    opts = GenerateOptions.from_manifest(manifest["config"]["options"], "run-v1")
    assert opts.model == manifest["config"]["options"]["model"] and opts.threads is None


def test_unset_numerics_stay_out_of_the_manifest_and_the_identity() -> None:
    """Runs made before --threads/--tf32/--sdpa-backend existed keep their identity (and directory name)."""
    from types import SimpleNamespace

    from evalkit.generate.prepare import run_identity

    gen = {"height": 64, "width": 64, "num_inference_steps": 2, "guidance_scale": 3.5, "max_sequence_length": 64,
           "base_seed": 0, "batch_size": 1}
    model = SimpleNamespace(spec="tiny")
    plain = GenerateOptions(prompts_file="p.txt")
    assert not {"threads", "tf32", "sdpa_backend"} & set(plain.to_manifest())
    assert not {"threads", "tf32", "sdpa_backend"} & set(run_identity(plain, model, "sha", gen, "cpu", {}, []))
    knobs = dataclasses.replace(plain, threads=2, tf32=False, sdpa_backend="math")
    ident = run_identity(knobs, model, "sha", gen, "cpu", {}, [])
    assert (ident["threads"], ident["tf32"], ident["sdpa_backend"]) == (2, False, "math")
    assert knobs.to_manifest()["tf32"] is False


def test_a_deprecated_spelling_still_works_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["calibrate", "RUN", "--metrics-device", "cpu"])
    assert CalibrateOptions.from_args(args).device == "cpu"
    assert "--metrics-device is deprecated; use --device" in capsys.readouterr().err
    assert "--metrics-device" not in _subparser("calibrate").format_help()


def test_prompt_sets_of_one_stem_get_different_run_names() -> None:
    assert prompts_slug("prompts/three.txt") == "three"  # unchanged: existing runs keep their directory
    names = {prompts_slug(f"three.{ext}") for ext in ("csv", "tsv", "jsonl", "json", "txt")}
    assert len(names) == 5


def test_generate_help_names_the_prompt_set_formats() -> None:
    for command in ("generate", "run"):
        text = " ".join(_subparser(command).format_help().split())
        assert ".csv/.tsv" in text and ".jsonl" in text, command


def test_a_retired_environment_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from evalkit.generate.prepare import check_options

    monkeypatch.setenv("EVALKIT_THREADS", "4")
    with pytest.raises(EvalkitError, match="EVALKIT_THREADS is set, but evalkit no longer reads it: .* --threads"):
        check_options(GenerateOptions(prompts_file="p.txt"))
    monkeypatch.delenv("EVALKIT_THREADS")
    with pytest.raises(EvalkitError, match="--threads must be at least 1"):
        check_options(GenerateOptions(prompts_file="p.txt", threads=0))


def test_an_existing_prompt_set_run_is_found_under_its_old_name(tmp_path: Path) -> None:
    """Runs of a .csv made before the format joined the run id are reopened, not regenerated elsewhere."""
    from types import SimpleNamespace

    from evalkit.generate.prepare import run_root
    from evalkit.generate.uptodate import run_dir_candidates

    opts = GenerateOptions(prompts_file="sets/three.csv", model="tiny", reports_dir=str(tmp_path))
    identity = {"model_spec": "tiny"}
    root, run_id = run_root(opts, SimpleNamespace(spec="tiny"), identity)
    assert root.parent == tmp_path and run_id.startswith("tiny-three-csv-") and root.name == run_id
    legacy = tmp_path / run_id.replace("three-csv-", "three-")
    legacy.mkdir()
    (legacy / "manifest.json").write_text("{}")
    assert run_root(opts, SimpleNamespace(spec="tiny"), identity) == (legacy, legacy.name)
    (tmp_path / "tiny-three-jsonl-0123abcd").mkdir()  # another prompt set's run is not a candidate
    assert run_dir_candidates(opts) == [legacy]
    root.mkdir()
    assert run_dir_candidates(opts) == sorted([legacy, root])


def test_reopening_a_run_that_holds_other_backends_says_so() -> None:
    from evalkit.generate.ranks import held_backends_note

    opts = GenerateOptions(prompts_file="p.txt", backends="bf16,torchao-int8wo")
    assert held_backends_note(opts, ["bf16", "torchao-int8wo"]) is None
    note = held_backends_note(opts, ["bf16", "quanto-int8", "torchao-int8wo", "fp8-layerwise"])
    assert note is not None and note.startswith(
        "this run directory already holds backends quanto-int8, fp8-layerwise; it now has 4")


def test_flags_read_alike_across_commands(capsys: pytest.CaptureFixture[str]) -> None:
    """#24: score's --quiet has -q; compare-images' batch flag is score's --metrics-batch-size (the old --batch-size
    still works, saying so); every flag of every command has help."""
    parser = build_parser()
    assert parser.parse_args(["score", "RUN", "-q"]).quiet is True
    assert parser.parse_args(["compare-images", "a", "b", "--metrics-batch-size", "4"]).metrics_batch_size == 4
    assert "deprecated" not in capsys.readouterr().err
    assert parser.parse_args(["compare-images", "a", "b", "--batch-size", "3"]).metrics_batch_size == 3
    assert "--batch-size is deprecated; use --metrics-batch-size" in capsys.readouterr().err
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, p in sub.choices.items():
        for action in p._actions:
            if action.help != argparse.SUPPRESS:
                assert action.help and len(action.help.split()) >= 2, (command, action.option_strings or action.dest)


def test_compare_images_shares_score_s_declarations_on_the_cli_and_in_the_api() -> None:
    """`evalkit compare-images` takes score's declarations of the flags they share, and evalkit.compare_images
    takes each of them with score's default (it had --fid-sqrt in the API and not on the command line)."""
    import evalkit.score.api
    from evalkit.score.options import COMPARE_IMAGES_FLAGS

    fields = {f.name: f for f in option_fields(ScoreOptions) if f.name in COMPARE_IMAGES_FLAGS}
    opts = non_default(ScoreOptions)
    argv = [a for a in opts.to_argv() if a.split("=")[0][2:].replace("-", "_") in COMPARE_IMAGES_FLAGS]
    args = build_parser().parse_args(["compare-images", "A", "B", *argv])
    assert {k: getattr(args, k) for k in fields} == {k: getattr(opts, k) for k in fields}
    params = inspect.signature(evalkit.score.api.compare_images).parameters
    api_name = {"metrics_batch_size": "batch_size"}  # the API's older name, kept
    for name, f in fields.items():
        default = params[api_name.get(name, name)].default
        assert default == f.default or (name == "device" and default is None), name

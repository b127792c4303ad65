"""Typed records: builders, shape checks on read (one line naming the file and field), the summary's new fields,
and a run written by the previous evalkit (tests/data/run-v1) still opening and rebuilding its summary."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from evalkit.errors import EvalkitError
from evalkit.integrity import verify_run
from evalkit.io import atomic_write_json, read_json
from evalkit.prompts import prompt_id, prompt_seed
from evalkit.records import (SCHEMA_VERSION, ShapeError, build_generation_record, build_metric_record,
                             image_entry, partial_reason, validate, GenerationRecord)
from evalkit.rundir import RunDir, load_generation_records, open_run, write_summary
from fake_run import PROMPTS, make_run

OLD_RUN = Path(__file__).parent / "data" / "run-v1"


@pytest.fixture()
def old_run(tmp_path: Path) -> Path:
    shutil.copytree(OLD_RUN, tmp_path / "run-v1")
    return tmp_path / "run-v1"


# ------------------------------------------------------------------------------------------- the old run

def test_old_run_opens_and_its_summary_rebuilds_unchanged(old_run: Path) -> None:
    written = read_json(old_run / "summary.json")
    rd, manifest = open_run(old_run)
    assert manifest["schema_version"] == 1 and manifest["backends"] == ["bf16", "torchao-int8wo", "quanto-int8"]
    records = load_generation_records(rd, manifest["backends"])
    assert verify_run(rd, records).problems == []  # hashed: its records predate the stat fingerprint

    rebuilt = json.loads(json.dumps(write_summary(old_run)))
    assert written["schema_version"] == 1 and rebuilt["schema_version"] == SCHEMA_VERSION == 2  # derived: rebuilt new
    for key, value in written.items():
        if key not in ("backends", "schema_version"):
            assert rebuilt[key] == value, key
    for name, entry in written["backends"].items():
        new = rebuilt["backends"][name]
        assert {k: new[k] for k in entry} == entry  # every field the old summary had, with the same value
        assert new["partial_reason"] is None
    assert rebuilt["images_left_out"] == []
    assert list(rebuilt["backends"]) == manifest["backends"]


def test_old_run_prompt_ids_and_seeds_are_evalkit_s(old_run: Path) -> None:
    """The format did not drift: evalkit.prompts still derives the ids and seeds the old run recorded."""
    manifest = read_json(old_run / "manifest.json")
    base = manifest["generation"]["base_seed"]
    for p in manifest["prompts"]:
        assert p["id"] == prompt_id(p["index"], p["text"])
        assert p["seed"] == prompt_seed(p["text"], base)
        for b in manifest["backends"]:
            assert (old_run / "images" / b / f"{p['id']}_s{p['seed']}.png").is_file()


@pytest.mark.slow
def test_old_run_scores_and_reports(old_run: Path) -> None:
    from conftest import run_evalkit

    before = read_json(old_run / "metrics" / "torchao-int8wo.json")["metrics"]
    r = run_evalkit("score", str(old_run))
    assert r.returncode == 0, r.stderr[-3000:]
    after = read_json(old_run / "metrics" / "torchao-int8wo.json")["metrics"]
    for m in ("lpips_alex", "ssim", "psnr"):
        assert after[m]["mean"] == pytest.approx(before[m]["mean"], rel=1e-6), m
    r = run_evalkit("report", str(old_run), "--no-figures")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (old_run / "index.html").is_file()


# ------------------------------------------------------------------------------------------- shape on read

@pytest.mark.parametrize("mutate, where", [
    (lambda r: r.__setitem__("images", "none"), "record.images must be a JSON list, found str 'none'"),
    (lambda r: r["images"][1].__setitem__("sha256", 7), "record.images[1].sha256 must be a string, found int 7"),
    (lambda r: r["images"][0].pop("path"), "record.images[0].path is missing"),
    (lambda r: r.__setitem__("status", "done"), "record.status must be one of 'ok', 'failed', 'skipped', found 'done'"),
    (lambda r: r.pop("backend"), "record.backend is missing"),
    (lambda r: r.__setitem__("latency", [1, 2]), "record.latency must be a JSON object or null, found list"),
])
def test_generation_record_with_the_wrong_shape_is_one_line_naming_file_and_field(old_run: Path, mutate, where) -> None:
    path = old_run / "generation" / "quanto-int8.json"
    record = read_json(path)
    mutate(record)
    atomic_write_json(path, record)
    with pytest.raises(EvalkitError) as e:
        write_summary(old_run)
    assert str(e.value) == f"{path}: {where}"


def test_manifest_and_metric_record_shapes_are_checked(old_run: Path) -> None:
    manifest = read_json(old_run / "manifest.json")
    manifest["prompts"][2]["seed"] = "12"
    atomic_write_json(old_run / "manifest.json", manifest)
    with pytest.raises(EvalkitError, match=r"manifest.json: manifest.prompts\[2\].seed must be an integer, found str '12'$"):
        open_run(old_run)

    shutil.copy(OLD_RUN / "manifest.json", old_run / "manifest.json")
    met = read_json(old_run / "metrics" / "bf16.json")
    met["metrics"]["ssim"] = ["not", "an", "object"]
    atomic_write_json(old_run / "metrics" / "bf16.json", met)
    with pytest.raises(EvalkitError, match=r"bf16.json: record.metrics.ssim must be a JSON object, found list$"):
        write_summary(old_run)


def test_a_record_that_is_not_an_object_and_a_newer_schema(old_run: Path) -> None:
    (old_run / "generation" / "bf16.json").write_text("[1, 2]\n")
    with pytest.raises(EvalkitError, match="bf16.json: record must be a JSON object, found list$"):
        write_summary(old_run)
    manifest = read_json(old_run / "manifest.json")
    manifest["schema_version"] = SCHEMA_VERSION + 1
    atomic_write_json(old_run / "manifest.json", manifest)
    with pytest.raises(EvalkitError, match="is newer than this evalkit understands"):
        open_run(old_run)


def test_cli_reports_a_damaged_record_in_one_line(old_run: Path) -> None:
    from conftest import run_evalkit

    path = old_run / "generation" / "bf16.json"
    record = read_json(path)
    record["images"] = {"oops": 1}
    atomic_write_json(path, record)
    r = run_evalkit("report", str(old_run), "--no-figures")
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith(f"evalkit: error: {path}: ") and "images" in err


# ------------------------------------------------------------------------------------------- builders

def test_builders_refuse_what_readers_would_refuse() -> None:
    with pytest.raises(ValueError, match="needs a reason"):
        build_generation_record(backend="bnb-nf4", status="failed")
    with pytest.raises(ValueError, match="seed must be an integer"):
        image_entry(prompt_id="p00-x-12345678", seed="1", path="images/bf16/x.png", sha256="0" * 64)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"metrics.fid must be a JSON object, found float"):
        build_metric_record(backend="bf16", metrics={"fid": 3.0})  # type: ignore[dict-item]
    rec = build_generation_record(backend="bf16", status="ok")
    validate(rec, GenerationRecord)
    with pytest.raises(ShapeError):
        validate({**rec, "pid": True}, GenerationRecord)  # a bool is not a pid


def test_fake_run_is_built_through_evalkit_and_passes_its_own_checks(tmp_path: Path) -> None:
    root = make_run(tmp_path / "run", backends=("bf16", "torchao-int8wo", "bnb-8bit"), status={"bnb-8bit": "failed"})
    rd, manifest = open_run(root)
    assert [p["id"] for p in manifest["prompts"]] == [prompt_id(i, t) for i, t in enumerate(PROMPTS)]
    records = load_generation_records(rd, manifest["backends"])
    report = verify_run(rd, records)
    assert report.problems == [] and report.fingerprint_only == 6 and report.hashed == 0
    summary = read_json(root / "summary.json")
    assert summary["backends"]["bnb-8bit"]["status"] == "failed"
    assert summary["backends"]["bf16"]["n_images"] == 3


# ------------------------------------------------------------------------------------------- summary fields

def test_partial_reason_from_the_record_or_an_old_note() -> None:
    assert partial_reason({"quantization": {"partial_reason": "transformer left in bf16 on CPU: ..."}}) == \
        "transformer left in bf16 on CPU: ..."
    assert partial_reason({"quantization": {"partial_reason": None, "note": "transformer left in bf16"}}) is None
    old = "transformer left in bf16 on CPU: diffusers' bitsandbytes quantizer needs a GPU"
    assert partial_reason({"quantization": {"note": old}}) == old
    assert partial_reason({"quantization": {"note": "quantized as asked"}}) is None
    assert partial_reason(None) is None and partial_reason({"quantization": None}) is None


def test_partial_reason_says_when_compile_ran_partly_eagerly() -> None:
    dynamo = {"recompile_limit_hit": True, "recompilations": 9, "recompile_reasons": ["forward: 1/0: id mismatch"]}
    why = partial_reason({"quantization": {"partial_reason": None}, "compile": {"dynamo": dynamo}})
    assert why is not None and "recompile limit after 9 recompilations" in why and "id mismatch" in why
    fine = dict(dynamo, recompile_limit_hit=False)
    assert partial_reason({"quantization": {}, "compile": {"dynamo": fine}}) is None
    both = partial_reason({"quantization": {"partial_reason": "transformer left in bf16"}, "compile": {"dynamo": dynamo}})
    assert both is not None and both.startswith("transformer left in bf16; +compile ran partly eagerly")


def test_summary_carries_partial_reason_and_images_left_out(tmp_path: Path) -> None:
    note = "transformer left in bf16 on CPU: diffusers' bitsandbytes quantizer needs a GPU"
    probe = make_run(tmp_path / "probe", backends=("bf16",))
    pids = [p["id"] for p in read_json(probe / "manifest.json")["prompts"]]
    ok = {"status": "ok", "mean": 0.1, "n": 2, "higher_is_better": False}
    skipped_pair = [{"prompt_id": pids[1], "seed": 1, "reason": "corrupt PNG: truncated"}]
    root = make_run(
        tmp_path / "run", backends=("bf16", "bnb-8bit", "torchao-int8wo"),
        quantization={"bnb-8bit": {"components_quantized": ["text_encoder_2"], "note": note},
                      "torchao-int8wo": {"components_quantized": ["transformer"], "partial_reason": None}},
        metrics={"bnb-8bit": {"lpips_alex": {**ok, "skipped": skipped_pair}, "ssim": {**ok, "skipped": skipped_pair},
                              "clip_score": {"status": "skipped", "reason": "no CLIP weights"}},
                 "torchao-int8wo": {"lpips_alex": ok}},
        left_out={"torchao-int8wo": [{"prompt_id": pids[0], "path": None, "reason": "undecodable: truncated"}]})
    summary = read_json(root / "summary.json")
    assert summary["backends"]["bnb-8bit"]["partial_reason"] == note
    assert summary["backends"]["torchao-int8wo"]["partial_reason"] is None
    assert summary["backends"]["bf16"]["partial_reason"] is None
    rd = RunDir(root)
    by_pid = {img["prompt_id"]: img["path"] for img in read_json(rd.generation_record("bnb-8bit"))["images"]}
    assert summary["images_left_out"] == [
        {"backend": "bnb-8bit", "prompt_id": pids[1], "path": by_pid[pids[1]], "reason": "corrupt PNG: truncated",
         "metrics": ["lpips_alex", "ssim"]},
        {"backend": "torchao-int8wo", "prompt_id": pids[0],
         "path": f"images/torchao-int8wo/{pids[0]}_s{prompt_seed(PROMPTS[0], 0)}.png",
         "reason": "undecodable: truncated"},
    ]


def test_old_run_scores_and_reports_and_score_leaves_the_manifest_to_generate(old_run: Path) -> None:
    """Schema 2: score writes FID's settings to its own fid_mode.json; the schema-1 manifest is read, never
    rewritten (generate owns it), and report writes none of the run's records (summary.json included)."""
    import evalkit
    from evalkit.rundir import load_fid_mode

    manifest_bytes = (old_run / "manifest.json").read_bytes()
    results = evalkit.score(old_run, metrics="ssim,psnr,fid")
    assert results["torchao-int8wo"]["ssim"]["status"] == "ok"
    assert (old_run / "manifest.json").read_bytes() == manifest_bytes
    mode = read_json(old_run / "fid_mode.json")
    assert mode["n_reference"] == len(read_json(old_run / "manifest.json")["prompts"]) and mode["reference_backend"] == "bf16"
    rd, manifest = open_run(old_run)
    assert load_fid_mode(rd, manifest) == mode
    assert read_json(old_run / "summary.json")["fid_mode"] == mode
    before = {p: p.read_bytes() for p in [old_run / "summary.json", *sorted((old_run / "generation").glob("*.json")),
                                           *sorted((old_run / "metrics").glob("*.json"))]}
    page = evalkit.report(old_run, no_figures=True)
    assert page.is_file() and "FID" in page.read_text(encoding="utf-8")
    assert {p: p.read_bytes() for p in before} == before


def test_a_schema_1_manifest_keeps_its_fid_mode_readable(old_run: Path) -> None:
    from evalkit.rundir import load_fid_mode

    m = read_json(old_run / "manifest.json")
    m["fid_mode"] = {"implementation": "old", "n": 3}
    (old_run / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    rd, manifest = open_run(old_run)
    assert load_fid_mode(rd, manifest) == {"implementation": "old", "n": 3}
    (old_run / "fid_mode.json").write_text(json.dumps({"implementation": "new", "n": 3}), encoding="utf-8")
    assert load_fid_mode(rd, manifest)["implementation"] == "new"  # score's own file wins once it exists


def test_a_record_read_again_after_a_change_in_place_is_checked_again(tmp_path):
    """read_record remembers what it has checked by content, not by name: the same bytes skip the shape check, a
    record rewritten in place (same path, even the same size) is checked again."""
    import json as _json

    from evalkit.errors import EvalkitError
    from evalkit.records import read_generation_record

    p = tmp_path / "bf16.json"
    good = {"schema_version": 2, "backend": "bf16", "status": "ok", "images": []}
    p.write_text(_json.dumps(good))
    assert read_generation_record(p)["status"] == "ok"
    assert read_generation_record(p)["status"] == "ok"  # the remembered check
    p.write_text(_json.dumps({**good, "status": "okk"}).replace('"okk"', '"ok1"'))
    with pytest.raises(EvalkitError, match="status"):
        read_generation_record(p)


# Paths of the run directory's records (evalkit.rundir.RunDir): reading one goes through its typed reader
# (evalkit.records.read_manifest, read_generation_record, ...), never a bare read_json.
_RECORD_PATH = re.compile(r"\.(manifest|summary|merge_manifest|calibration)\b|\.(generation_record|metrics_record|"
                          r"shard_record|shard_unit)\(|\b(manifest|summary|merge|calibration)\.json\b")


def _bare_record_reads(source: str) -> list[tuple[int, str]]:
    """(line, argument) of each read_json of a record path, given directly or through a name assigned one in the
    same function (`path = rd.generation_record(b)` ... `read_json(path)`)."""
    import ast

    out = []
    scopes = [n for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.Module, ast.FunctionDef))]
    for scope in scopes:
        body = ast.walk(scope) if isinstance(scope, ast.FunctionDef) else iter(scope.body)
        names = {t.id for n in body if isinstance(n, ast.Assign) and _RECORD_PATH.search(ast.unparse(n.value))
                 for t in n.targets if isinstance(t, ast.Name)}
        for node in ast.walk(scope):
            if isinstance(node, ast.Call) and node.args and (getattr(node.func, "id", None)
                                                            or getattr(node.func, "attr", None)) == "read_json":
                arg = ast.unparse(node.args[0])
                if _RECORD_PATH.search(arg) or arg in names:
                    out.append((node.lineno, arg))
    return sorted(set(out))


def test_every_record_of_the_run_directory_is_read_through_its_typed_reader() -> None:
    assert _bare_record_reads("m = read_json(rd.manifest)\nr = io.read_json(rd.shard_record(b, t))\n"
                              "x = read_json(cache_path)\ndef f(rd):\n    path = rd.generation_record(b)\n"
                              "    return read_json(path)\n") == [(1, "rd.manifest"), (2, "rd.shard_record(b, t)"),
                                                                  (6, "path")]
    root = Path(__file__).resolve().parents[1] / "evalkit"
    offenders = [f"{p.relative_to(root.parent)}:{line}: read_json({arg})"
                 for p in sorted(root.rglob("*.py")) if p.name != "records.py"
                 for line, arg in _bare_record_reads(p.read_text(encoding="utf-8"))]
    assert not offenders, "read these through evalkit.records' typed readers:\n" + "\n".join(offenders)

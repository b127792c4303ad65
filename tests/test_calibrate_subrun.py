"""Calibration sub-runs of another backend than the reference (`bf16+compile`) do not regenerate plain bf16: the
run's own bf16 images are the reference (on an H200, 2026-11-29, that regeneration cost ~50 s of a call)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import THREE_PROMPTS
from evalkit.calibrate.perturbations import Perturbation
from evalkit.calibrate.stage import _generate_options
from evalkit.quantizers.registry import parse_backend_list
from evalkit.generate.stage import GenerateOptions, run_generate
from evalkit.io import read_json


def test_backend_list_leaves_the_reference_out_only_when_asked() -> None:
    assert [s.name for s in parse_backend_list("fp8-layerwise")] == ["bf16", "fp8-layerwise"]
    assert [s.name for s in parse_backend_list("bf16+compile", include_reference=False)] == ["bf16+compile"]


def test_calibration_sub_run_of_compile_has_no_plain_reference(tmp_path: Path) -> None:
    from evalkit.prompts import load_prompts

    src = tmp_path / "src.txt"
    src.write_text(THREE_PROMPTS, encoding="utf-8")
    entries = [{"index": i, "id": q.id, "text": q.text, "seed": q.seed} for i, q in enumerate(load_prompts(src))]
    manifest = {"reference_backend": "bf16", "prompts": entries, "config": {"device": "cpu", "options": {
        "prompts_file": "p.txt", "model": "tiny", "seed": 0}}}
    p = Perturbation("compile", "torch.compile", compile=True)
    # _generate_options writes the manifest's prompts as a file under the sub-run's parent
    assert _generate_options(manifest, tmp_path / "compile", "bf16+compile", p).include_reference is False
    assert _generate_options(manifest, tmp_path / "batch2", "bf16", Perturbation("batch2", "b", batch_size=2)) \
        .include_reference is True


@pytest.mark.slow
def test_a_run_without_the_reference_generates_only_what_it_names(tmp_path: Path, tiny_model_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text(THREE_PROMPTS, encoding="utf-8")
    out = tmp_path / "run"
    run_generate(GenerateOptions(prompts_file=str(prompts), model="tiny", backends="fp8-layerwise", height=64,
                                 width=64, out=str(out), include_reference=False))
    assert read_json(out / "manifest.json")["backends"] == ["fp8-layerwise"]
    assert sorted(p.name for p in (out / "generation").glob("*.json")) == ["fp8-layerwise.json"]
    assert len(list((out / "images" / "fp8-layerwise").glob("*.png"))) == 3
    assert not (out / "images" / "bf16").exists()


@pytest.mark.slow
def test_calibration_sharded_over_two_ranks_equals_one_process(tmp_path: Path, tiny_model_path: Path) -> None:
    """`evalkit calibrate --jobs 2` regenerates each perturbation on 2 ranks (torchrun underneath): the same images,
    hence the same floor, as one process; each rank keeps the reference's thread count (no hidden 'threads')."""
    import shutil

    from conftest import run_evalkit

    prompts = tmp_path / "p.txt"
    prompts.write_text(THREE_PROMPTS, encoding="utf-8")
    one = tmp_path / "one"
    r = run_evalkit("generate", str(prompts), "--model", "tiny", "--backends", "bf16", "--height", "64", "--width",
                    "64", "--out", str(one))
    assert r.returncode == 0, r.stderr[-2000:]
    two = tmp_path / "two"
    shutil.copytree(one, two)
    for run, extra in ((one, []), (two, ["--jobs", "2"])):
        r = run_evalkit("calibrate", str(run), "--perturbations", "batch2", "--device", "cpu", *extra)
        assert r.returncode == 0, r.stderr[-3000:]
    sub_one, sub_two = one / "calibration" / "batch2", two / "calibration" / "batch2"
    tags = {u["tag"] for u in read_json(sub_two / "merge.json")["backends"]["bf16"]["units"]}
    assert tags and all(t.startswith("w2-") for t in tags)  # really made by 2 ranks
    pngs = sorted(p.relative_to(sub_one) for p in sub_one.glob("images/bf16/*.png"))
    assert len(pngs) == 3 and all((sub_one / p).read_bytes() == (sub_two / p).read_bytes() for p in pngs)
    ref_threads = read_json(one / "generation" / "bf16.json")["numerics"]["intra_op_threads"]
    assert read_json(sub_two / "generation" / "bf16.json")["numerics"]["intra_op_threads"] == ref_threads
    a, b = read_json(one / "calibration.json"), read_json(two / "calibration.json")
    for name, m in a["metrics"].items():
        assert m["perturbations"]["batch2"] == b["metrics"][name]["perturbations"]["batch2"], name
    assert a["metrics"]["ssim"]["perturbations"]["batch2"]["per_prompt"]  # the comparison covered values


def test_a_sub_run_made_when_knobs_were_environment_variables_is_refused_naming_it(tmp_path: Path) -> None:
    """Before --threads existed, the 'threads' sub-run got EVALKIT_THREADS and its identity did not say so: reusing
    it would compare images made under unrecorded settings. Calibration says which directory to delete."""
    import json

    import pytest as _pytest

    from evalkit.calibrate.stage import _refuse_unrecorded_knobs
    from evalkit.errors import EvalkitError

    from evalkit.records import build_manifest

    def manifest(identity: dict) -> str:  # a sub-run's manifest, as generate wrote it
        return json.dumps(build_manifest(prompts=[], backends=["bf16"], run_id=None,
                                         generation={"height": 64, "width": 64}, config={"identity": identity}))

    sub = tmp_path / "calibration" / "threads"
    sub.mkdir(parents=True)
    (sub / "manifest.json").write_text(manifest({"model_spec": "tiny"}))
    opts = GenerateOptions(prompts_file="p.txt", threads=1)
    with _pytest.raises(EvalkitError, match=r"did not record threads=1 .* delete .*calibration/threads"):
        _refuse_unrecorded_knobs(sub, opts)
    _refuse_unrecorded_knobs(sub, GenerateOptions(prompts_file="p.txt"))  # no knob set: nothing to refuse
    (sub / "manifest.json").write_text(manifest({"threads": 1}))
    _refuse_unrecorded_knobs(sub, opts)  # recorded: prepare_run compares it like any identity key


def test_perturbation_knobs_become_the_sub_run_s_options(tmp_path: Path) -> None:
    from evalkit.prompts import load_prompts

    src = tmp_path / "src.txt"
    src.write_text(THREE_PROMPTS, encoding="utf-8")
    entries = [{"index": i, "id": q.id, "text": q.text, "seed": q.seed} for i, q in enumerate(load_prompts(src))]
    manifest = {"reference_backend": "bf16", "prompts": entries, "config": {"device": "cpu", "options": {
        "prompts_file": "p.txt", "model": "tiny", "seed": 0, "tf32": False}}}
    opts = _generate_options(manifest, tmp_path / "t", "bf16", Perturbation("t", "t", intra_op_threads=3))
    assert (opts.threads, opts.tf32, opts.sdpa_backend) == (3, False, None)  # the run's own tf32 is kept
    manifest["config"]["options"]["heigth"] = 64  # a field this evalkit does not know is refused, never dropped
    with pytest.raises(Exception, match="unknown option\\(s\\) heigth"):
        _generate_options(manifest, tmp_path / "t", "bf16", Perturbation("t", "t"))

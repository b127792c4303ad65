"""Calibration sub-runs of another backend than the reference (`bf16+compile`) do not regenerate plain bf16: the
run's own bf16 images are the reference (on an H200, 2026-11-29, that regeneration cost ~50 s of a call)."""

from __future__ import annotations

from pathlib import Path

from conftest import THREE_PROMPTS
from evalkit.calibrate.perturbations import Perturbation
from evalkit.calibrate.stage import _generate_options
from evalkit.generate.backends import parse_backend_list
from evalkit.generate.stage import GenerateOptions, run_generate
from evalkit.io import read_json


def test_backend_list_leaves_the_reference_out_only_when_asked() -> None:
    assert [s.name for s in parse_backend_list("fp8-layerwise", "cpu")] == ["bf16", "fp8-layerwise"]
    assert [s.name for s in parse_backend_list("bf16+compile", "cpu", include_reference=False)] == ["bf16+compile"]


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

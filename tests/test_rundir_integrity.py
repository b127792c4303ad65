"""Images are checked against their generation record: missing, truncated, replaced, wrong-size and extra files are
found, and the stat fingerprint spares re-hashing only files whose stat is unchanged."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from evalkit.errors import EvalkitError
from evalkit.integrity import verify_images, verify_run
from evalkit.io import read_json
from evalkit.rundir import RunDir

OLD_RUN = Path(__file__).parent / "data" / "run-v1"
BACKEND = "torchao-int8wo"


@pytest.fixture()
def run(tmp_path: Path) -> RunDir:
    """A copy of the committed schema-1 run (its records carry sha256 but no stat fingerprint)."""
    shutil.copytree(OLD_RUN, tmp_path / "run")
    return RunDir(tmp_path / "run")


def _record(rd: RunDir, backend: str = BACKEND) -> dict:
    return read_json(rd.generation_record(backend))


def _with_fingerprints(rd: RunDir, record: dict) -> dict:
    """What the generate stage records after each atomic write: the file's size and mtime."""
    for img in record["images"]:
        st = (rd.root / img["path"]).stat()
        img["size_bytes"], img["mtime_ns"] = st.st_size, st.st_mtime_ns
    return record


def test_intact_run_passes_and_old_records_are_hashed(run: RunDir) -> None:
    records = {b: _record(run, b) for b in read_json(run.manifest)["backends"]}
    report = verify_run(run, records)
    assert report.problems == []
    assert len(report.ok) == 15
    assert report.hashed == 15 and report.fingerprint_only == 0  # no size_bytes/mtime_ns: every file is hashed
    report.raise_if_problems()  # no problems: no error


def test_fingerprint_skips_rehash_until_the_stat_changes(run: RunDir) -> None:
    record = _with_fingerprints(run, _record(run))
    report = verify_images(run, BACKEND, record)
    assert (report.hashed, report.fingerprint_only, report.problems) == (0, 5, [])

    # Touching a file (same bytes, new mtime) makes it be hashed again; its bytes still match, so it passes.
    target = run.root / record["images"][1]["path"]
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    report = verify_images(run, BACKEND, record)
    assert (report.hashed, report.fingerprint_only, report.problems) == (1, 4, [])

    # full=True (`--verify`) hashes everything whatever the stat says.
    assert verify_images(run, BACKEND, record, full=True).hashed == 5


def test_replaced_file_with_forged_stat_passes_fingerprint_but_not_full_verify(run: RunDir) -> None:
    """The stated limit of the cheap rule: same size and mtime restored means 'unchanged' until --verify."""
    record = _with_fingerprints(run, _record(run))
    entry = record["images"][0]
    target = run.root / entry["path"]
    st = target.stat()
    data = bytearray(target.read_bytes())
    # Another valid PNG of exactly the same byte size is hard to make; flip one byte inside a chunk instead.
    data[60] ^= 0xFF
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert verify_images(run, BACKEND, record).problems == []
    full = verify_images(run, BACKEND, record, full=True)
    assert [p["path"] for p in full.problems] == [entry["path"]]


def test_replaced_file_is_reported(run: RunDir) -> None:
    record = _with_fingerprints(run, _record(run))
    entry = record["images"][3]
    target = run.root / entry["path"]
    Image.new("RGB", (32, 32), (200, 10, 10)).save(target)  # a valid image of the right size, not the generated one
    report = verify_images(run, BACKEND, record)
    assert len(report.problems) == 1
    p = report.problems[0]
    assert (p["backend"], p["prompt_id"], p["path"]) == (BACKEND, entry["prompt_id"], entry["path"])
    assert p["reason"].startswith("replaced: sha256")
    assert entry not in report.ok and len(report.ok) == 4


def test_truncated_file_is_reported_as_undecodable(run: RunDir) -> None:
    record = _with_fingerprints(run, _record(run))
    entry = record["images"][2]
    target = run.root / entry["path"]
    target.write_bytes(target.read_bytes()[: entry["size_bytes"] // 2])
    report = verify_images(run, BACKEND, record)
    [p] = report.problems
    assert p["path"] == entry["path"]
    assert p["reason"].startswith("undecodable: truncated or corrupt")
    assert f"of {entry['size_bytes']} bytes" in p["reason"]


def test_truncated_file_in_an_old_record_is_found_by_hashing(run: RunDir) -> None:
    record = _record(run)  # no fingerprint
    target = run.root / record["images"][0]["path"]
    target.write_bytes(target.read_bytes()[:100])
    [p] = verify_images(run, BACKEND, record).problems
    assert p["reason"].startswith("undecodable")


def test_missing_file_is_reported_and_the_error_names_it(run: RunDir) -> None:
    record = _record(run)
    entry = record["images"][4]
    (run.root / entry["path"]).unlink()
    (run.root / record["images"][0]["path"]).unlink()
    report = verify_images(run, BACKEND, record)
    assert [p["reason"].split(":")[0] for p in report.problems] == ["missing", "missing"]
    with pytest.raises(EvalkitError) as e:
        report.raise_if_problems()
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(str(run.root / record["images"][0]["path"]) + ": missing")
    assert f"backend {BACKEND}" in msg and record["images"][0]["prompt_id"] in msg
    assert msg.endswith("and 1 more problem")


def test_extra_file_is_reported_but_temp_files_are_not(run: RunDir) -> None:
    record = _record(run)
    folder = run.images_dir(BACKEND)
    Image.new("RGB", (32, 32)).save(folder / "stray.png")
    (folder / ".p00.png.1234.abcd.tmp").write_bytes(b"half")  # io's temp file of a write in progress
    report = verify_images(run, BACKEND, record)
    [p] = report.problems
    assert p == {"backend": BACKEND, "prompt_id": None, "path": f"images/{BACKEND}/stray.png",
                 "reason": f"extra file: not in generation/{BACKEND}.json"}
    assert len(report.ok) == 5
    assert verify_images(run, BACKEND, record, check_extra=False).problems == []


def test_wrong_size_is_reported(run: RunDir) -> None:
    record = _record(run)
    entry = record["images"][1]
    target = run.root / entry["path"]
    Image.new("RGB", (48, 32)).save(target)
    from evalkit.io import sha256_file

    entry["sha256"] = sha256_file(target)  # the record agrees with the file: only its size is wrong
    [p] = verify_images(run, BACKEND, record).problems
    assert p["reason"] == "wrong size: 48x32 px, the run's images are 32x32"


def test_record_path_outside_the_backend_folder_is_refused(run: RunDir) -> None:
    record = _record(run)
    record["images"][0]["path"] = "../../etc/passwd"
    record["images"][1]["path"] = "images/bf16/" + Path(record["images"][1]["path"]).name
    report = verify_images(run, BACKEND, record, check_extra=False)
    assert [p["reason"] for p in report.problems] == [f"bad record entry: path is outside images/{BACKEND}/"] * 2

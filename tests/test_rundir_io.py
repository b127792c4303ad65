"""Atomic writes: a full disk or an unwritable path gives one line naming the path, and leaves no temp file and no
torn target; temp names are unique per process; a torn JSONL line does not swallow the next one."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from evalkit import io
from evalkit.errors import EvalkitError, WriteError

REPO = Path(__file__).resolve().parents[1]


def _enospc(*_a: object, **_k: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_full_disk_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         failing: str) -> None:
    target = tmp_path / "generation" / "bf16.json"
    io.atomic_write_json(target, {"status": "ok"})
    before = target.read_bytes()
    monkeypatch.setattr(io.os, failing, _enospc)
    with pytest.raises(WriteError) as e:
        io.atomic_write_json(target, {"status": "ok", "more": list(range(1000))})
    monkeypatch.undo()
    msg = str(e.value)
    assert msg.startswith(f"{target}: cannot write (No space left on device)")
    assert "rerun the same command to resume" in msg and "\n" not in msg
    assert isinstance(e.value, EvalkitError) and e.value.exit_code == 2
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC  # `except OSError` callers still work
    assert target.read_bytes() == before  # not torn, not emptied
    assert sorted(p.name for p in target.parent.iterdir()) == ["bf16.json"]  # no temp file left


def test_full_disk_on_a_new_file_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(io.os, "fsync", _enospc)
    with pytest.raises(WriteError):
        io.atomic_write_text(tmp_path / "summary.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_a_real_write_limit_is_reported_not_torn(tmp_path: Path) -> None:
    """No monkeypatching: the kernel refuses the write (RLIMIT_FSIZE, EFBIG) as a full disk would (ENOSPC)."""
    target = tmp_path / "big.bin"
    target.write_bytes(b"old")
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "from evalkit.io import atomic_write_bytes\n"
        "from evalkit.errors import EvalkitError\n"
        "try:\n"
        f"    atomic_write_bytes({str(target)!r}, b'x' * 100000)\n"
        "except EvalkitError as e:\n"
        "    print(e); sys.exit(2)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2, r.stderr
    assert r.stdout.strip() == f"{target}: cannot write (File too large)"
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["big.bin"]


def test_path_under_a_file_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "metrics").write_text("a file where a folder should be")
    with pytest.raises(WriteError) as e:
        io.atomic_write_json(tmp_path / "metrics" / "bf16.json", {})
    assert str(e.value).startswith(f"{tmp_path / 'metrics' / 'bf16.json'}: cannot write (")


def test_read_only_directory(tmp_path: Path) -> None:
    """Root ignores directory permissions, so the write runs as an unprivileged user when the tests run as root."""
    base = Path(tempfile.mkdtemp(prefix="evalkit-ro-"))
    try:
        base.chmod(0o755)
        ro = base / "run"
        ro.mkdir()
        (ro / "manifest.json").write_text("{}")
        ro.chmod(0o555)
        code = (
            "import os, sys\n"
            "from evalkit.io import atomic_write_json\n"  # imported first: the stdlib under /root is not nobody's
            "from evalkit.errors import EvalkitError\n"
            "if os.geteuid() == 0:\n"
            "    os.setgid(65534); os.setuid(65534)\n"
            "try:\n"
            f"    atomic_write_json({str(ro / 'manifest.json')!r}, {{'new': 1}})\n"
            "except EvalkitError as e:\n"
            "    print(e); sys.exit(2)\n"
        )
        r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
        assert r.returncode == 2, r.stderr[-2000:]
        assert r.stdout.strip() == f"{ro / 'manifest.json'}: cannot write (Permission denied)"
        assert (ro / "manifest.json").read_text() == "{}"
        assert [p.name for p in ro.iterdir()] == ["manifest.json"]
    finally:
        (base / "run").chmod(0o755)
        shutil.rmtree(base)


def test_temp_names_carry_the_pid_and_differ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        seen.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", spy)
    for _ in range(3):
        io.atomic_write_text(tmp_path / "summary.json", "{}")
    assert len(set(seen)) == 3
    assert all(name.startswith(f".summary.json.{os.getpid()}.") and name.endswith(".tmp") for name in seen)


def test_append_after_a_torn_line_keeps_the_next_record(tmp_path: Path) -> None:
    path = tmp_path / "generation" / "shards" / "bf16" / "w1-r0.partial.jsonl"
    io.append_jsonl(path, {"prompt_id": "p00"})
    with open(path, "a") as f:
        f.write('{"prompt_id": "p01", "sha')  # killed mid-write: no newline
    io.append_jsonl(path, {"prompt_id": "p02"})
    assert [r["prompt_id"] for r in io.read_jsonl(path)] == ["p00", "p02"]


def test_append_on_a_full_disk_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.jsonl"
    monkeypatch.setattr(io.os, "fsync", _enospc)
    with pytest.raises(WriteError) as e:
        io.append_jsonl(path, {"a": 1})
    assert str(e.value).startswith(f"{path}: cannot write (No space left on device)")


def test_written_json_round_trips(tmp_path: Path) -> None:
    io.atomic_write_json(tmp_path / "a.json", {"b": 1, "a": [1.5, "é"]})
    assert json.loads((tmp_path / "a.json").read_text(encoding="utf-8")) == {"a": [1.5, "é"], "b": 1}


def test_atomic_writes_get_the_umask_mode_not_mkstemps_0600(tmp_path: Path) -> None:
    """A report or summary is the user's file: readable by whoever the umask allows, like any file they write."""
    import stat

    from evalkit.io import UMASK, atomic_write_text

    target = tmp_path / "summary.json"
    atomic_write_text(target, "{}")
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~UMASK

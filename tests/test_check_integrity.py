"""check and compare verify the images their metrics rest on (#23.3 item 5): a reference or backend image replaced or
corrupted after scoring makes them exit 2 with one line naming the file, through evalkit.integrity as score does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from check_fixtures import make_run, write
from evalkit.cli import main

QUALITY = "[default]\nssim_min = 0.5\n"


def first_image(run: Path, backend: str) -> Path:
    return sorted((run / "images" / backend).iterdir())[0]


def replace_keeping_stat(path: Path) -> None:
    """Other pixels, same size in bytes and same mtime: only a hash can tell (what --verify is for)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # inside the last IDAT/IEND bytes: same length, other content
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def replace_with_other_image(path: Path) -> None:
    with Image.open(path) as im:
        size = im.size
    Image.new("RGB", size, (255, 0, 0)).save(path)


@pytest.mark.parametrize("backend", ["bf16", "bnb-nf4"])
def test_replaced_image_makes_check_exit_2_naming_it(tmp_path: Path, capsys, backend: str) -> None:
    run = make_run(tmp_path / "run")
    img = first_image(run, backend)
    replace_with_other_image(img)
    assert main(["check", str(run), "-t", str(write(tmp_path / "t.toml", QUALITY)), "-q"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(img) in err and "replaced: sha256" in err
    assert "metrics were computed from the recorded file" in err


def test_truncated_or_missing_image_makes_check_exit_2(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run")
    img = first_image(run, "torchao-int8wo")
    img.write_bytes(img.read_bytes()[:40])
    th = write(tmp_path / "t.toml", QUALITY)
    assert main(["check", str(run), "-t", str(th), "-q"]) == 2
    assert str(img) in capsys.readouterr().err
    img.unlink()
    assert main(["check", str(run), "-t", str(th), "-q"]) == 2
    assert f"{img}: missing" in capsys.readouterr().err


def test_verify_hashes_a_file_whose_stat_still_matches(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run")
    img = first_image(run, "bf16")
    replace_keeping_stat(img)
    th = write(tmp_path / "t.toml", QUALITY)
    assert main(["check", str(run), "-t", str(th), "-q"]) == 0  # the fingerprint fast path trusts it, as score does
    assert main(["check", str(run), "-t", str(th), "-q", "--verify"]) == 2
    assert str(img) in capsys.readouterr().err


def test_resource_only_bounds_do_not_need_the_images(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    first_image(run, "bf16").unlink()
    th = write(tmp_path / "t.toml", "[default]\nlatency_ratio_to_bf16_max = 2\n")
    assert main(["check", str(run), "-t", str(th), "-q"]) == 0


@pytest.mark.parametrize("side", ["base", "cand"])
def test_replaced_image_makes_compare_exit_2_naming_it(tmp_path: Path, capsys, side: str) -> None:
    runs = {"base": make_run(tmp_path / "base"), "cand": make_run(tmp_path / "cand")}
    img = first_image(runs[side], "bf16")
    replace_with_other_image(img)
    assert main(["compare", str(runs["base"]), str(runs["cand"]), "-q"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(img) in err


def test_replaced_image_makes_report_exit_2_naming_it(tmp_path: Path, capsys) -> None:
    """report shows the images and the numbers scored from them: a file replaced since is refused as check does."""
    run = make_run(tmp_path / "run")
    assert main(["report", str(run), "--formats", "png"]) == 0
    capsys.readouterr()
    img = first_image(run, "bnb-nf4")
    replace_with_other_image(img)
    assert main(["report", str(run), "--formats", "png"]) == 2  # unchanged records: the no-op path checks too
    err = capsys.readouterr().err
    assert str(img) in err and "replaced: sha256" in err and "no longer describe its images" in err
    assert main(["report", str(run), "--formats", "svg,png"]) == 2  # other options: a rebuild refuses as well
    assert str(img) in capsys.readouterr().err

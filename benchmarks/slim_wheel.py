"""Copy a wheel without the shared libraries the device machine cannot use, so more fits in one device call.

    python3 benchmarks/slim_wheel.py .whl/bitsandbytes-0.50.2-*.whl OUT_DIR --keep cpu,cuda130,cuda132

A device call carries at most 64 MiB. bitsandbytes 0.50.2's wheel is 43 MB because it ships one
`libbitsandbytes_<target>.so` per CUDA, ROCm and XPU version; the device's torch (2.11.0+cu130) loads only
`libbitsandbytes_cuda130.so`. The copy keeps every other file byte for byte, drops the libraries whose target is
not in --keep, and drops their lines from RECORD, so pip installs it like the original (same file name).
"""

from __future__ import annotations

import argparse
import re
import sys
import zipfile
from pathlib import Path

LIBRARY = re.compile(r"(^|/)lib[\w]+?_(?P<target>[a-z]+\d*)\.so$")


def slim(wheel: Path, out_dir: Path, keep: set[str]) -> tuple[Path, list[str]]:
    """Write the slimmed copy of `wheel` into `out_dir`; returns its path and the names dropped."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wheel.name
    if target.resolve() == wheel.resolve():
        raise SystemExit(f"{target}: would overwrite the original; choose another OUT_DIR")
    dropped: list[str] = []
    with zipfile.ZipFile(wheel) as src:
        for info in src.infolist():
            m = LIBRARY.search(info.filename)
            if m and m.group("target") not in keep:
                dropped.append(info.filename)
        if not dropped:
            raise SystemExit(f"{wheel}: no library outside --keep {sorted(keep)}; nothing to drop")
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                if info.filename in dropped:
                    continue
                data = src.read(info)
                if info.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines(keepends=True)
                    data = "".join(ln for ln in lines if ln.split(",", 1)[0] not in dropped).encode()
                dst.writestr(info, data)
    return target, dropped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wheel", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--keep", default="cpu,cuda130", help="comma list of library targets to keep (default %(default)s)")
    a = ap.parse_args(argv)
    target, dropped = slim(a.wheel, a.out_dir, {k.strip() for k in a.keep.split(",") if k.strip()})
    print(f"{target}: {target.stat().st_size / 1e6:.1f} MB (was {a.wheel.stat().st_size / 1e6:.1f} MB); "
          f"dropped {len(dropped)} libraries")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""#26's names: `evalkit backends --json` lists every one with whether it runs and why not, on this machine and on
a GPU that is not here (an H200: cuda, capability 9.0), and quanto's deprecation shows in `backends` and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_evalkit
from evalkit.quantizers.registry import LIBRARIES, backend_rows

ISSUE_NAMES = ("modelopt-fp8", "modelopt-fp8-fp8", "modelopt-int8", "modelopt-int4", "modelopt-nf4", "modelopt-nvfp4",
               "sdnq-int8", "sdnq-uint4", "sdnq-fp8", "sdnq-uint4-svd", "sdnq-int8-mm", "autoround-w4a16",
               "bfl-fp8r", "bfl-nvfp4", "nunchaku-svdq-int4", "nunchaku-svdq-nvfp4", "torchao-fp8dq-row",
               "torchao-nvfp4", "torchao-mxfp8", "torchao-mxfp4")
# On an H200: what cannot run, and the words of its reason. Everything else of the list runs there (given its
# package), ModelOpt/BFL NVFP4 by dequantizing (their descriptions say so).
H200_REFUSED = {"nunchaku-svdq-int4": "refuses Hopper", "nunchaku-svdq-nvfp4": "Blackwell",
                "torchao-nvfp4": "SM100", "torchao-mxfp8": "SM100", "torchao-mxfp4": "SM100"}
CPU_REFUSED = {**H200_REFUSED, "nunchaku-svdq-int4": "needs a CUDA GPU", "nunchaku-svdq-nvfp4": "needs a CUDA GPU",
               "torchao-fp8dq-row": "8.9"}


def _rows(*args: str) -> dict[str, dict]:
    r = run_evalkit("backends", "--json", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    return {row["name"]: row for row in json.loads(r.stdout)["backends"]}


@pytest.mark.parametrize("args, refused", [(("--device", "cpu"), CPU_REFUSED), (("--capability", "9.0"), H200_REFUSED)],
                         ids=["here-cpu", "h200"])
def test_every_name_is_listed_with_whether_it_runs_and_why_not(args: tuple[str, ...], refused: dict[str, str]) -> None:
    rows = _rows(*args)
    for name in ISSUE_NAMES:
        row = rows[name]
        lib = LIBRARIES[row["library"]]
        if name in refused:
            assert row["runs_here"] is False and refused[name] in row["reason"], (name, row["reason"])
        elif lib.available():
            assert row["runs_here"] is True, (name, row["reason"])
        else:  # a package this machine lacks: named with its pip line
            assert row["runs_here"] is False and f"pip install {lib.pip_name}" in row["reason"], name


def test_a_hypothetical_gpu_is_judged_from_its_capability_alone() -> None:
    h200 = {r["name"]: r for r in backend_rows("cuda", (9, 0))}
    b200 = {r["name"]: r for r in backend_rows("cuda", (10, 0))}
    assert not h200["torchao-mxfp8"]["runs_here"] and b200["torchao-mxfp8"]["runs_here"]
    assert h200["torchao-fp8dq"]["runs_here"] and not {r["name"]: r for r in backend_rows("cuda", (8, 0))}[
        "torchao-fp8dq"]["runs_here"]
    bad = run_evalkit("backends", "--capability", "nine")
    assert bad.returncode == 2 and "--capability 'nine'" in bad.stderr


def test_quanto_is_shown_deprecated_upstream_in_backends_and_the_report(tmp_path: Path) -> None:
    rows = _rows("--device", "cpu")
    assert "removed in diffusers 1.0.0" in rows["quanto-int8"]["deprecated"] and rows["sdnq-int8"]["deprecated"] is None

    from fake_run import make_run
    from evalkit.io import read_json, atomic_write_json
    from evalkit.quantizers.registry import parse_backend
    from evalkit.report import build_report
    from evalkit.rundir import write_summary

    root = make_run(tmp_path / "run", backends=("bf16", "quanto-int8", "torchao-int8wo"))
    for name in ("quanto-int8", "torchao-int8wo"):  # the recipe the worker writes
        path = root / "generation" / f"{name}.json"
        rec = read_json(path)
        rec["recipe"] = parse_backend(name).recipe()
        atomic_write_json(path, rec)
    write_summary(root)
    page = build_report(root, quiet=True, figures=False).read_text(encoding="utf-8")
    def row(name: str) -> str:  # the performance table's row of `name`, up to its end
        start = page.index(f'data-sort="{name}"')
        return page[start:page.index("</tr>", start)]

    assert "deprecated upstream" in row("quanto-int8") and "QuantoConfig" in row("quanto-int8")
    other = row("torchao-int8wo")
    assert "deprecated upstream" not in other


def test_the_table_piped_to_a_file_keeps_each_row_on_its_lines() -> None:
    """Off a terminal the table is not squeezed into 80 columns (words were cut, 'quantizatio' / 'n'): every backend
    name and its 'runs here' cell share one line."""
    r = run_evalkit("backends")
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("│ ")]
    names = {line.split("│")[1].strip() for line in rows} - {""}
    assert {"bf16", "bnb-nf4", "torchao-int8wo", "gguf-q4_1"} <= names
    for line in rows:
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells[0]:
            assert cells[1] in ("yes", "no", "partly") or cells[1].startswith(("yes", "no")), line
    assert max(len(line) for line in r.stdout.splitlines()) > 80

"""The example plugin (examples/plugin-method), installed as a package: its entry point adds a backend that
`evalkit backends` lists and a tiny study runs, with the records evalkit's own backends get (#26 item 3)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_evalkit
from evalkit.io import read_json
from quant_fixtures import plugin_env


def test_the_installed_example_is_listed_through_its_entry_point(rtn6_site: Path) -> None:
    # What pip installed: the package and a .dist-info whose entry_points.txt names evalkit's group.
    entry_points = next(rtn6_site.glob("evalkit_rtn6-*.dist-info")) / "entry_points.txt"
    assert "[evalkit.backends]" in entry_points.read_text(encoding="utf-8")
    r = run_evalkit("backends", "--device", "cpu", "--json", env=plugin_env(rtn6_site))
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {row["name"]: row for row in json.loads(r.stdout)["backends"]}
    assert rows["rtn6-g64"]["library"] == "rtn6" and rows["rtn6-g64"]["runs_here"] is True
    assert rows["rtn6-g64"]["quantizes"] == ["transformer"]
    # Not installed, not there: the backend comes from the installed package, not from the source tree.
    bare = run_evalkit("backends", "--device", "cpu", "--json")
    assert "rtn6-g64" not in {row["name"] for row in json.loads(bare.stdout)["backends"]}


def test_the_plugin_method_runs_with_evalkits_records(study: Path) -> None:
    rec = read_json(study / "generation" / "rtn6-g64.json")
    assert rec["status"] == "ok" and rec["recipe"]["library"] == "rtn6"
    q = rec["quantization"]
    # The census sees the packed layers (a qweight and no float weight) and only them.
    assert q["layer_types"]["transformer"].get("RTN6Linear[Tensor:uint8]", 0) == q["post_load"]["replaced_linears"] > 0
    assert q["quantized_linear_count"]["transformer"] == q["post_load"]["replaced_linears"]
    assert q["partial_reason"] is None
    # The weights really shrink: 6 bits plus group parameters against 16 bits.
    ref = read_json(study / "generation" / "bf16.json")["footprint"]["transformer"]["bytes"]
    assert rec["footprint"]["transformer"]["bytes"] < 0.6 * ref
    manifest = read_json(study / "manifest.json")
    assert manifest["versions"]["evalkit-rtn6"] == "0.1.0"  # the plugin's version is part of the recorded stack


def test_packing_round_trips_and_dequantizes_within_a_step() -> None:
    import torch

    sys.path.insert(0, str(REPO / "examples" / "plugin-method"))
    try:
        from evalkit_rtn6.layer import RTN6Linear, pack6, unpack6
    finally:
        sys.path.pop(0)
    codes = torch.randint(0, 64, (5, 128))
    packed = pack6(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 96)
    assert torch.equal(unpack6(packed), codes)
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 8)
    q = RTN6Linear(lin, 64)
    w = lin.weight.detach().reshape(8, 2, 64)
    step = (w.amax(-1) - w.amin(-1)) / 63
    err = (q.dequantize(torch.float32).reshape(8, 2, 64) - w).abs().amax(-1)
    # half a step, or one where the rounded zero point pushes an extreme code out of 0..63 and it is clamped
    assert bool((err <= step + 1e-6).all()) and float((err <= step * 0.5 + 1e-6).float().mean()) > 0.5
    with pytest.raises(ValueError, match="multiple of the group"):
        RTN6Linear(torch.nn.Linear(96, 4), 64)

"""The report shows the reference's noise floor (calibration.json): a band on quality plots, a row in the quality
table and its exports, and a rerun key that changes with the calibration. Without calibration.json nothing changes."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from evalkit.errors import EvalkitError
from evalkit.io import atomic_write_json
from evalkit.report import build_report
from evalkit.report.build import REPORT_INPUTS_FILE, report_inputs_key
from evalkit.report.data import load_report_data
from evalkit.report.noise_floor import BAND_LABEL, IDENTICAL_NOTE
from fake_run import make_run

MS_SSIM_REASON = "images are 32x32 px; MS-SSIM (5 scales, window 11) needs each side >= 176 px (batch2, rerun)"


def _metric(mean: float, lo: float, hi: float, hib: bool) -> dict[str, Any]:
    return {"status": "ok", "mean": mean, "ci_low": lo, "ci_high": hi, "ci_level": 0.95, "n": 3,
            "higher_is_better": hib, "per_prompt": {}}


# Backend metric records as score writes them (the fields the report reads).
METRICS = {"torchao-int8wo": {"lpips_alex": _metric(0.020, 0.015, 0.025, False),
                              "ssim": _metric(0.95, 0.94, 0.96, True),
                              "psnr": _metric(35.0, 34.0, 36.0, True)}}

# The shape of a real calibration.json (evalkit calibrate on the tiny model, CPU, 2026-11-28), values changed.
CALIBRATION: dict[str, Any] = {
    "schema": "evalkit.calibration/1", "run_id": "run", "reference_backend": "bf16", "device": "cpu",
    "created_utc": "2026-11-28T22:48:30Z", "n_prompts": 3, "model": "tiny",
    "floor_definition": "per metric, the worst 95% bootstrap CI end on the metric's bad side over the perturbations",
    "perturbations": {"batch2": {"backend": "bf16", "settings": {"batch_size": 2}, "n_images": 3,
                                 "n_byte_identical_images": 1, "run_dir": "calibration/batch2"}},
    "metrics": {
        "lpips_alex": {"label": "LPIPS (AlexNet)", "unit": "", "higher_is_better": False, "identity": 0.0,
                       "scale": "linear", "perturbations": {},
                       "floor": {"status": "ok", "value": 0.0042, "identical": False, "from": "batch2",
                                 "display": "0.0042", "distance_from_identity": 0.0042,
                                 "perturbations_judged": ["batch2"]}},
        "ssim": {"label": "SSIM", "unit": "", "higher_is_better": True, "identity": 1.0, "scale": "linear",
                 "perturbations": {},
                 "floor": {"status": "ok", "value": 0.987, "identical": False, "from": "batch2", "display": "0.9870",
                           "distance_from_identity": 0.013, "perturbations_judged": ["batch2"]}},
        "ms_ssim": {"label": "MS-SSIM", "unit": "", "higher_is_better": True, "identity": 1.0, "scale": "linear",
                    "perturbations": {}, "floor": {"status": "skipped", "reason": MS_SSIM_REASON}},
        "psnr": {"label": "PSNR", "unit": "dB", "higher_is_better": True, "identity": 100.0, "scale": "db",
                 "perturbations": {},
                 "floor": {"status": "ok", "value": None, "identical": True, "from": "batch2", "display": "identical",
                           "distance_from_identity": 0.0, "perturbations_judged": ["batch2"]}},
    },
}


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("band") / "run", metrics=METRICS)


def _calibrated(plain: Path, tmp_path: Path, cal: dict[str, Any] = CALIBRATION) -> Path:
    root = tmp_path / "run"
    shutil.copytree(plain, root)
    atomic_write_json(root / "calibration.json", cal)
    return root


def _axes_for(root: Path, key: str, which: str = "memory"):
    import matplotlib

    matplotlib.use("Agg", force=True)
    from evalkit.report import figures

    data = load_report_data(root)
    m = next(mm for mm in data.metrics if mm.key == key)
    fig, _, _ = (figures.quality_vs_memory if which == "memory" else figures.quality_vs_latency)(data, m)
    return fig, fig.axes[0]


def _band(ax) -> tuple[float, float] | None:
    """(low, high) in data units of the shaded noise-floor band, or None."""
    for p in ax.patches:
        if p.get_label() == BAND_LABEL:
            # axhspan's coordinates: x in axes units, y in data units
            ys = [float(y) for _, y in p.get_path().transformed(p.get_patch_transform()).vertices]
            return min(ys), max(ys)
    return None


def _legend_texts(ax) -> list[str]:
    leg = ax.get_legend()
    return [t.get_text() for t in leg.get_texts()] if leg else []


def test_lower_is_better_band_runs_from_identity_up_to_the_floor(plain_run: Path, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    root = _calibrated(plain_run, tmp_path)
    for which in ("memory", "latency"):
        fig, ax = _axes_for(root, "lpips_alex", which)
        lo, hi = _band(ax)  # type: ignore[misc]
        assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.0042)
        assert ax.get_ylim()[0] <= 0.0 and ax.get_ylim()[1] >= 0.025  # band and points both on the axis
        assert BAND_LABEL in _legend_texts(ax)
        plt.close(fig)


def test_higher_is_better_band_runs_from_the_floor_to_the_axis_top(plain_run: Path, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = _axes_for(_calibrated(plain_run, tmp_path), "ssim")
    lo, hi = _band(ax)  # type: ignore[misc]
    assert lo == pytest.approx(0.987)
    assert hi == pytest.approx(min(1.0, ax.get_ylim()[1]))  # SSIM's identity 1, or the axis edge below it
    assert ax.get_ylim()[1] > 0.987  # the floor (above every point) was brought onto the axis
    plt.close(fig)


def test_identical_floor_draws_no_band_and_says_byte_identical(plain_run: Path, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    root = _calibrated(plain_run, tmp_path)
    fig, ax = _axes_for(root, "psnr")
    assert _band(ax) is None
    assert IDENTICAL_NOTE in _legend_texts(ax)
    assert ax.get_ylim()[1] < 60  # the 100 dB identity did not stretch the axis
    plt.close(fig)
    build_report(root, figures=True, quiet=True)
    page = (root / "index.html").read_text(encoding="utf-8")
    assert f"PSNR noise floor: {IDENTICAL_NOTE} (no band)" in page
    svg = (root / "figures" / "quality_vs_memory_lpips_alex.svg").read_text(encoding="utf-8")
    assert 'id="patch' in svg  # the band is in the written file (text is drawn as paths, so no label here)
    assert f"Shaded: {BAND_LABEL}, LPIPS (AlexNet) 0.0042 (set by batch2)" in page


def test_floor_not_measured_draws_nothing_and_the_caption_says_why(plain_run: Path, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    cal = copy.deepcopy(CALIBRATION)
    cal["metrics"]["ssim"]["floor"] = {"status": "skipped", "reason": "ssim failed in batch2: out of memory (batch2)"}
    root = _calibrated(plain_run, tmp_path, cal)
    fig, ax = _axes_for(root, "ssim")
    assert _band(ax) is None and BAND_LABEL not in _legend_texts(ax)
    plt.close(fig)
    build_report(root, figures=True, quiet=True)
    page = (root / "index.html").read_text(encoding="utf-8")
    assert "No SSIM noise floor: ssim failed in batch2: out of memory (batch2)." in page


def test_quality_table_and_exports_print_the_floor(plain_run: Path, tmp_path: Path) -> None:
    root = _calibrated(plain_run, tmp_path)
    build_report(root, figures=False, quiet=True)
    page = (root / "index.html").read_text(encoding="utf-8")
    foot = page[page.index('<tr class="noise-floor">'):page.index("</tfoot>")]
    cells = foot.split("<td")[1:]
    data = load_report_data(root)
    shown = {m.key: cells[i] for i, m in enumerate(data.metrics)}
    assert "0.0042" in shown["lpips_alex"] and "0.9870" in shown["ssim"] and "identical" in shown["psnr"]
    tex = (root / "tables" / "quality.tex").read_text(encoding="utf-8")
    row = next(line for line in tex.splitlines() if "noise floor" in line)
    want = {"lpips_alex": "0.0042", "ssim": "0.9870", "psnr": "identical"}
    assert row.removesuffix(" \\\\").split(" & ")[1:] == [want[m.key] for m in data.metrics]
    csv_text = (root / "tables" / "noise_floor.csv").read_text(encoding="utf-8")
    assert "lpips_alex,ok,0.0042,False,0.0042,batch2," in csv_text
    assert "psnr,ok,,True,identical,batch2," in csv_text
    assert "ms_ssim,skipped" in csv_text and "176 px" in csv_text


def test_no_calibration_leaves_the_report_unchanged(plain_run: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(plain_run, a)
    build_report(a, figures=False, quiet=True)
    b = _calibrated(plain_run, b)
    build_report(b, figures=False, quiet=True)
    plain_page = (a / "index.html").read_text(encoding="utf-8")
    assert "noise floor" not in plain_page and "noise-floor" not in plain_page
    assert not (a / "tables" / "noise_floor.csv").exists()
    assert "noise floor" not in (a / "tables" / "quality.tex").read_text(encoding="utf-8")
    assert "noise floor" in (b / "index.html").read_text(encoding="utf-8")


def test_a_new_calibration_changes_the_rerun_key_and_redraws(plain_run: Path, tmp_path: Path) -> None:
    root = tmp_path / "run"
    shutil.copytree(plain_run, root)
    build_report(root, figures=False, quiet=True)
    key_plain = json.loads((root / REPORT_INPUTS_FILE).read_text())
    atomic_write_json(root / "calibration.json", CALIBRATION)
    build_report(root, figures=False, quiet=True)
    assert json.loads((root / REPORT_INPUTS_FILE).read_text()) != key_plain
    assert "0.0042" in (root / "index.html").read_text(encoding="utf-8")
    key = report_inputs_key(root, {})
    cal = copy.deepcopy(CALIBRATION)
    cal["created_utc"] = "2030-01-01T00:00:00Z"  # a rewrite with the same floors: same key
    atomic_write_json(root / "calibration.json", cal)
    assert report_inputs_key(root, {}) == key
    cal["metrics"]["lpips_alex"]["floor"].update(value=0.0099, display="0.0099")
    atomic_write_json(root / "calibration.json", cal)
    assert report_inputs_key(root, {}) != key
    build_report(root, figures=False, quiet=True)
    assert "0.0099" in (root / "index.html").read_text(encoding="utf-8")


def test_a_calibration_of_another_schema_is_a_one_line_error(plain_run: Path, tmp_path: Path) -> None:
    root = _calibrated(plain_run, tmp_path, {**CALIBRATION, "schema": "evalkit.calibration/99"})
    with pytest.raises(EvalkitError, match=r"calibration\.json: not a calibration of schema"):
        load_report_data(root)


def test_a_calibration_of_another_reference_is_not_shown_and_the_page_says_so(plain_run: Path, tmp_path: Path) -> None:
    root = _calibrated(plain_run, tmp_path, {**CALIBRATION, "reference_backend": "fp32"})
    data = load_report_data(root)
    assert data.floors == {}
    assert any("calibrated reference 'fp32'" in n for n in data.notes)


def test_a_calibration_check_refuses_is_not_drawn_either(plain_run: Path, tmp_path: Path) -> None:
    """check and report read calibration.json through one reader (evalkit/floors.py): the report used to draw an
    LPIPS floor below identity, a value `evalkit check` refuses."""
    from evalkit.check.noise import load_floors
    from evalkit.errors import EvalkitError

    cal = copy.deepcopy(CALIBRATION)
    cal["metrics"]["lpips_alex"]["floor"]["value"] = -0.01
    root = _calibrated(plain_run, tmp_path, cal)
    said = "metrics.lpips_alex.floor.value -0.01 is not on the bad side of identity 0"
    with pytest.raises(EvalkitError, match=said):
        load_floors(root / "calibration.json")
    with pytest.raises(EvalkitError, match=said):
        build_report(root, figures=False, quiet=True)

"""The figure path's shortcuts give the pictures the slow path gave (issue #16.4: the tiny run in <= 45 s).

- labels are placed by arithmetic on one measured text box: the same boxes matplotlib gives the annotations (what
  the labels then cover, or not, is tested on the drawn figures in test_report_figures.py);
- a pinned layout: one draw per saved format, the axes and legend where constrained layout and loc="best" put them;
- figures drawn by workers while the parent works: page order kept, and an error stops the workers.
"""

from __future__ import annotations

import io
import multiprocessing
from pathlib import Path

import pytest

from report_fixtures import FIFTEEN_BACKENDS, synthetic_run

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg", force=True)
import matplotlib.pyplot as plt  # noqa: E402

from evalkit.report import figures, labels  # noqa: E402
from evalkit.report.data import load_report_data  # noqa: E402


@pytest.fixture(scope="module")
def crowded_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fifteen backends: labels crowd, some need leader lines, and the Pareto legend has to find a corner."""
    return synthetic_run(tmp_path_factory.mktemp("figs"), backends=[b[0] for b in FIFTEEN_BACKENDS])


@pytest.mark.parametrize("dpi", [72, 100, 200])
def test_label_box_is_matplotlibs_annotation_box(dpi: int) -> None:
    with plt.rc_context(figures.STYLE):
        fig, ax = plt.subplots(dpi=dpi, layout="constrained")
        ax.plot([0, 1], [0, 1])
        fig.draw_without_rendering()
        renderer = fig.canvas.get_renderer()
        for text in ["gguf-q2_k ★", "bnb-nf4 †", "torchao-int8wo", "qy"]:
            probe = ax.annotate(text, (0.3, 0.6), xytext=(0, 0), textcoords="offset points", fontsize=6.5)
            size = (probe.get_window_extent(renderer).width, probe.get_window_extent(renderer).height)
            probe.remove()
            anchor = ax.transData.transform((0.3, 0.6))
            for dx, dy, ha, va, _ in labels.label_offsets():
                t = ax.annotate(text, (0.3, 0.6), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                                fontsize=6.5)
                want = t.get_window_extent(renderer)
                t.remove()
                got = labels.label_box(size, anchor, dx, dy, ha, va, renderer.points_to_pixels(1.0))
                assert got.bounds == pytest.approx(want.bounds, abs=1e-6), (text, dx, dy, ha, va)
        plt.close(fig)


def _count_draws(monkeypatch) -> list[int]:
    from matplotlib.figure import Figure

    calls = [0]
    original = Figure.draw

    def draw(self, renderer):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return original(self, renderer)

    monkeypatch.setattr(Figure, "draw", draw)
    return calls


def test_pinned_figure_draws_once_per_format_where_constrained_layout_put_it(crowded_run: Path, monkeypatch) -> None:
    data = load_report_data(crowded_run)
    m = data.metrics[0]
    with plt.rc_context(figures.STYLE):
        free, _, _ = figures.quality_vs_memory(data, m)
        pinned, _, _ = figures.quality_vs_memory(data, m)
        assert pinned.axes[0].get_legend() is not None  # the Pareto front: loc="best" has a choice to make
        free.draw_without_rendering()
        figures.pin_layout(pinned)
        calls = _count_draws(monkeypatch)
        for ext in ("svg", "pdf", "png"):
            pinned.savefig(io.BytesIO(), format=ext)
        assert calls[0] == 3  # matplotlib puts a default engine back after a save unless the rc default is off
        assert pinned.get_layout_engine() is None
        free.savefig(io.BytesIO(), format="png", dpi=100)
        pinned.savefig(io.BytesIO(), format="png", dpi=100)
        r1, r2 = free.canvas.get_renderer(), pinned.canvas.get_renderer()
        assert pinned.axes[0].get_position().bounds == pytest.approx(free.axes[0].get_position().bounds, abs=1e-9)
        assert (pinned.axes[0].get_legend().get_window_extent(r2).bounds
                == pytest.approx(free.axes[0].get_legend().get_window_extent(r1).bounds, abs=0.01))
    plt.close(free)
    plt.close(pinned)


def test_workers_keep_page_order(crowded_run: Path) -> None:
    data = load_report_data(crowded_run)
    serial = [f.key for f in figures.write_figures(data, formats=("png",), workers=1)]
    parallel = [f.key for f in figures.write_figures(data, formats=("png",), workers=2)]
    assert parallel == serial
    assert serial[:2] == ["memory", "latency"]  # drawn last by the workers, shown first on the page


def test_error_in_the_parent_stops_the_figure_workers(crowded_run: Path, tmp_path: Path, monkeypatch) -> None:
    import shutil

    from evalkit.report import build, images

    root = tmp_path / "run"
    shutil.copytree(crowded_run, root)

    def broken(*_a, **_k):
        raise RuntimeError("thumbnail failed")

    monkeypatch.setattr(images, "build_images", broken)
    with pytest.raises(RuntimeError, match="thumbnail failed"):
        build.build_report(root, quiet=True)
    assert multiprocessing.active_children() == []


def test_formats_option_draws_only_those_and_a_later_default_adds_the_rest(tmp_path: Path) -> None:
    from evalkit.cli import main

    root = synthetic_run(tmp_path)
    assert main(["report", str(root), "--formats", "png,svg"]) == 0
    assert sorted({p.suffix for p in (root / "figures").iterdir()}) == [".png", ".svg"]
    page = (root / "index.html").read_text(encoding="utf-8")
    assert 'href="figures/memory.svg"' in page and "memory.pdf" not in page
    assert main(["report", str(root)]) == 0  # the formats are in the report's input key: this one redraws
    assert sorted({p.suffix for p in (root / "figures").iterdir()}) == [".pdf", ".png", ".svg"]
    assert main(["report", str(root), "--formats", "svg"]) == 0  # the PDFs and PNGs it no longer lists go
    assert sorted({p.suffix for p in (root / "figures").iterdir()}) == [".svg"]


@pytest.mark.parametrize("formats, fragment", [("pdf", "add svg or png"), ("svg,gif", "choose among svg, pdf, png"),
                                                (",", "choose among")])
def test_bad_formats_are_a_one_line_error(tmp_path: Path, capsys, formats: str, fragment: str) -> None:
    from evalkit.cli import main

    root = synthetic_run(tmp_path)
    assert main(["report", str(root), "--formats", formats]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and "--formats" in err[0], err
    assert not (root / "index.html").exists()


def test_run_takes_report_formats() -> None:
    from evalkit.cli import build_parser

    args = build_parser().parse_args(["run", "prompts/styles.txt", "--report-formats", "svg,png"])
    assert args.formats == "svg,png"

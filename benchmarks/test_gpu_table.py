"""benchmarks/gpu_table.py on hand-made run directories (no GPU): which record becomes the table row, how a cut
backend reads, which anomalies are listed. Run: `python -m pytest -q benchmarks/test_gpu_table.py` (outside the
default test paths: the table is a benchmark tool)."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

_spec = importlib.util.spec_from_file_location("gpu_table", Path(__file__).with_name("gpu_table.py"))
gpu_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_table)


def _record(backend: str, latency: float, alloc: float, reserved: float, **extra) -> dict:
    return {"backend": backend, "status": "ok", "reason": None, "load_time_s": 5.0, "compile_time_s": None,
            "latency": {"n": 3, "median_s": latency, "p10_s": latency - 0.1, "p90_s": latency + 0.1},
            "memory": {"after_load_allocated_gib": alloc, "after_load_reserved_gib": reserved,
                       "load_peak_allocated_gib": alloc, "load_peak_reserved_gib": reserved,
                       "peak_allocated_gib": alloc + 2, "peak_reserved_gib": reserved + 2},
            "quantization": {"quantized_linear_count": {"transformer": 504, "text_encoder_2": 144},
                             "layer_types": {"transformer": {"Linear4bit[Params4bit:uint8]": 504}}},
            "placement": {"placement": "cuda"}, "footprint": {"total_gib": alloc}, **extra}


def _run(tmp: Path, name: str, records: list[dict], backends: list[str], cuts: dict | None = None,
         preset: str | None = None, model: str = "random:flux-dev") -> Path:
    d = tmp / name
    (d / "generation").mkdir(parents=True)
    manifest = {"backends": backends, "prompts": [{"id": "p0"}, {"id": "p1"}, {"id": "p2"}],
                "prompts_file": "prompts-3.txt", "created_utc": "2026-11-28T21:00:00Z",
                "model": {"spec": model},
                "generation": {"height": 1024, "width": 1024, "num_inference_steps": 50, "warmup_runs": 1},
                "device": {"name": "NVIDIA H200", "device_count": 4}, "versions": {"torch": "2.11.0"},
                "config": {"compile": {"global": {"preset": preset}} if preset else {}}}
    (d / "manifest.json").write_text(json.dumps(manifest))
    for r in records:
        (d / "generation" / f"{r['backend']}.json").write_text(json.dumps(r))
    (d / "cut.json").write_text(json.dumps({"cuts": cuts or {}}))
    return d


def test_table_prefers_finished_record_and_lists_anomalies(tmp_path: Path) -> None:
    # Run a: bnb-nf4 cut after one image; run b: bnb-nf4 finished. The table must take b's record.
    a = _run(tmp_path, "a", [_record("bf16", 9.0, 31.4, 31.5)], ["bf16", "bnb-nf4", "torchao-int8wo+compile"],
             cuts={"bnb-nf4": {"worker_started": True, "seconds_run": 40.0, "images_done": 1,
                               "image_latencies_s": [9.9]},
                   "torchao-int8wo+compile": {"worker_started": True, "seconds_run": 368.6, "images_done": 0,
                                              "image_latencies_s": []}},
             preset="regional")
    b = _run(tmp_path, "b", [_record("bf16", 9.0, 31.4, 31.5), _record("bnb-nf4", 9.5, 10.7, 10.7),
                             _record("quanto-fp8", 14.6, 17.0, 28.5)], ["bf16", "bnb-nf4", "quanto-fp8"])
    out = tmp_path / "table"
    assert gpu_table.main([str(a), str(b), "--out", str(out)]) == 0

    lines = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert len(lines) == 6  # one CSV line per record, anchors and cut backends included
    nf4 = [r for r in lines if r["backend"] == "bnb-nf4"]
    assert [(r["run"], r["status"], r["in_table"]) for r in nf4] == [("a", "not finished", "False"),
                                                                      ("b", "ok", "True")]
    cut = next(r for r in lines if r["backend"] == "torchao-int8wo+compile")
    assert cut["row"] == "torchao-int8wo+compile [regional]" and "368.6 s" in cut["reason"]

    md = out.with_suffix(".md").read_text()
    anomalies = md.split("## Anomalies found in the numbers")[1]
    assert "`quanto-fp8`: reserved 28.50 GiB after load against 17.00 GiB allocated" in anomalies
    assert "`quanto-fp8`: 1.62× bf16's latency" in anomalies
    assert "`bnb-nf4`: 1.06× bf16's latency" in anomalies
    assert "`bnb-nf4`: reserved" not in anomalies  # 10.7 / 10.7: nothing to report
    assert "Required rows with no run and no earlier result:" in md and "`gguf-q8_0`" in md


def test_another_familys_table_is_titled_by_its_model_without_the_seed_tables_rows(tmp_path: Path) -> None:
    a = _run(tmp_path, "a", [_record("bf16", 5.4, 26.1, 26.2), _record("bnb-nf4", 5.5, 10.1, 10.2)],
             ["bf16", "bnb-nf4"], model="random:sd3.5-large")
    out = tmp_path / "table"
    assert gpu_table.main([str(a), "--out", str(out)]) == 0
    md = out.with_suffix(".md").read_text()
    assert md.startswith("# GPU table of random:sd3.5-large on NVIDIA H200") and "seed table" not in md
    assert "Required rows" not in md  # the seed table's list is FLUX.1's


def test_a_run_without_bf16_is_titled_and_says_its_rows_have_no_ratio(tmp_path: Path) -> None:
    """FLUX.2-dev's bf16 (104 GiB) does not fit an 80 GB card: its quantized rows run with --no-reference. The table
    still names the model and device, and says why × bf16 is empty instead of leaving the anchor list blank."""
    a = _run(tmp_path, "f1", [_record("bnb-nf4", 21.0, 30.1, 30.4)], ["bnb-nf4"], model="random:flux2-dev")
    out = tmp_path / "table"
    assert gpu_table.main([str(a), "--out", str(out)]) == 0
    md = out.with_suffix(".md").read_text()
    assert md.startswith("# GPU table of random:flux2-dev on NVIDIA H200 (×4)")
    assert "| f1 | NVIDIA H200 | - | no bf16 in this run: its rows have no × bf16 |" in md
    row = next(line for line in md.splitlines() if line.startswith("| bnb-nf4 |"))
    assert row.split(" | ")[4] == "-"  # × bf16


def test_a_finished_unit_the_deadline_left_unmerged_is_its_row_and_the_anchor(tmp_path: Path) -> None:
    """Qwen-Image's q5: the deadline stopped the stage after bf16's one-rank unit had written its record and before
    the merge; that record is the row (and the anchor), not "stopped in loading"."""
    a = _run(tmp_path, "q5", [], ["bf16", "bnb-nf4"], model="random:qwen-image",
             cuts={"bf16": {"worker_started": True, "seconds_run": 199.1, "images_done": 0, "image_latencies_s": []},
                   "bnb-nf4": {"worker_started": True, "seconds_run": 90.0, "images_done": 1,
                               "image_latencies_s": [33.0]}})
    unit = a / "generation" / "shards" / "bf16"
    unit.mkdir(parents=True)
    (unit / "w1-r0.json").write_text(json.dumps(_record("bf16", 31.67, 53.79, 54.01)))
    out = tmp_path / "table"
    assert gpu_table.main([str(a), "--out", str(out)]) == 0
    lines = {r["backend"]: r for r in csv.DictReader(out.with_suffix(".csv").open())}
    assert lines["bf16"]["status"] == "ok" and "before it merged" in lines["bf16"]["reason"]
    assert lines["bnb-nf4"]["status"] == "not finished"
    assert float(lines["bnb-nf4"]["latency_x_bf16"]) == round(33.0 / 31.67, 4)  # the CSV keeps 4 decimals


def test_earlier_figure_stands_in_and_names_this_devices_partial(tmp_path: Path) -> None:
    """A row cut here is filled from an earlier device's result, and its note keeps the images finished here."""
    a = _run(tmp_path, "a", [_record("bf16", 9.0, 31.4, 31.5)], ["bf16", "torchao-int4wo"],
             cuts={"torchao-int4wo": {"worker_started": True, "seconds_run": 319.5, "images_done": 1,
                                      "image_latencies_s": [106.93]}})
    earlier = tmp_path / "h100.json"
    earlier.write_text(json.dumps({
        "device": {"name": "NVIDIA H100", "device_count": 1}, "date_utc": "2026-11-21T00:00:00Z",
        "versions": {"torch": "2.9.0"},
        "rows": [{"backend": "bf16", "status": "ok", "latency_median_s": 9.4},
                 {"backend": "torchao-int4wo", "status": "ok", "latency_median_s": 108.0, "latency_n": 2}]}))
    out = tmp_path / "table"
    assert gpu_table.main([str(a), "--earlier", str(earlier), "--out", str(out)]) == 0
    row = next(r for r in csv.DictReader(out.with_suffix(".csv").open())
               if r["backend"] == "torchao-int4wo" and r["in_table"] == "True")
    assert row["status"] == "ok (earlier)" and "NVIDIA H100" in row["reason"]
    assert "NVIDIA H200 (run a): cut after 1 image, median 106.93 s (partial)" in row["reason"]
    assert "median 106.93 s (partial)" in out.with_suffix(".md").read_text()  # the cell keeps it whole


def test_collect_writes_one_run_directory_of_finished_rows(tmp_path: Path) -> None:
    b = _run(tmp_path, "b", [_record("bf16", 9.0, 31.4, 31.5), _record("bnb-nf4", 9.5, 10.7, 10.7)],
             ["bf16", "bnb-nf4", "quanto-fp8"], cuts={"quanto-fp8": {"worker_started": False}})
    coll = tmp_path / "coll"
    assert gpu_table.main([str(b), "--out", str(tmp_path / "t"), "--collect", str(coll)]) == 0
    manifest = json.loads((coll / "manifest.json").read_text())
    assert manifest["backends"] == ["bf16", "bnb-nf4"]  # the unfinished backend has no record to show
    assert sorted(p.name for p in (coll / "generation").iterdir()) == ["bf16.json", "bnb-nf4.json"]


def test_cuts_read_each_ranks_partial_record(tmp_path: Path) -> None:
    """A backend killed at the deadline after its images but before its record: the images a rank wrote under
    generation/shards/ (issue #14's layout) are what the cut shows, not "0 images"."""
    spec = importlib.util.spec_from_file_location("gpu_table_run", Path(__file__).with_name("gpu_table_run.py"))
    run_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_mod)
    d = _run(tmp_path, "t", [_record("bf16", 9.0, 31.4, 31.5)], ["bf16", "torchao-int8dq"])
    shard = d / "generation" / "shards" / "torchao-int8dq"
    shard.mkdir(parents=True)
    (shard / "w1-r0.partial.jsonl").write_text("".join(json.dumps({"prompt_id": f"p{i}", "latency_s": 72.0 + i}) + "\n"
                                                       for i in range(3)))
    (d / "logs").mkdir()
    (d / "logs" / "torchao-int8dq.log").write_text("")
    cut = run_mod.record_cuts(d, 1e10)["torchao-int8dq"]
    assert cut["images_done"] == 3 and cut["image_latencies_s"] == [72.0, 73.0, 74.0]


def test_keep_going_leaves_the_step_running_and_the_next_call_waits_for_it(tmp_path: Path) -> None:
    """--keep-going (a compile longer than a call): the first call returns at its deadline with generate still
    running in its own session; the second waits for that process, then finds nothing left to generate. About 40 s
    on the tiny model."""
    import os
    import subprocess
    import sys

    script = Path(__file__).with_name("gpu_table_run.py")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red fox\na blue car\n")
    env = dict(os.environ, EVALKIT_RUNS=str(tmp_path / "runs"), PYTHONPATH=str(script.parents[1]))
    args = [sys.executable, str(script), "--device", "cpu", "--model", "tiny", "--prompts", str(prompts),
            "--run", "k:0:0:bf16", "--keep-going"]
    first = subprocess.run([*args, "--deadline-s", "3"], env=dict(env, OUT=str(tmp_path / "o1")),
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    run = tmp_path / "runs" / "k"
    left = json.loads((run / ".inflight.json").read_text())
    assert left["step"] == "generate" and "left running" in first.stdout
    meta = json.loads((tmp_path / "o1" / "meta.json").read_text())
    assert meta["runs"][0]["rc"] == "left running" and meta["runs"][0]["left_running"]["pid"] == left["pid"]
    second = subprocess.run([*args, "--deadline-s", "300"], env=dict(env, OUT=str(tmp_path / "o2")),
                            capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"waiting for step generate (pid {left['pid']})" in second.stdout
    assert json.loads((run / "generation" / "bf16.json").read_text())["status"] == "ok"
    assert not (run / ".inflight.json").exists()
    assert json.loads((tmp_path / "o2" / "meta.json").read_text())["runs"][0]["rc"] == 0


def test_an_old_short_warm_up_compile_time_is_shown_as_bounds_not_as_its_number() -> None:
    """Qwen-Image's int8wo+compile (q6, 2026-12-06): a 4-step warm-up of 19.48 s against 26.82 s images recorded
    compile_time_s 0.0; the table shows what that record can say, 0.0 to 19.48 - 26.82 * 4/50."""
    rec = _record("torchao-int8wo+compile", 26.82, 28.0, 28.2, compile_time_s=0.0, warmup_times_s=[19.48],
                  compile={"mode": "default"})
    gen = {"num_inference_steps": 50, "warmup_steps": 4}
    lo, hi = gpu_table.compile_bounds(rec, gen)
    assert lo == 0.0 and abs(hi - (19.48 - 26.82 * 4 / 50)) < 1e-9
    assert gpu_table.compile_bounds(rec, {"num_inference_steps": 50}) is None  # a whole-image warm-up: its figure stands
    fixed = dict(rec, compile={"mode": "default", "time_basis": "first warm-up call less ..."},
                 warmup_times_s=[19.48, 2.1])
    assert gpu_table.compile_bounds(fixed, gen) is None  # measured against a call of its length: stands
    assert gpu_table.compile_bounds(dict(rec, compile=None), gen) is None  # not a compiled row

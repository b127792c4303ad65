"""A worker that dies without writing its record is reported with its own last word (issue #24.3), and the check
for a script's `__main__` guard reads the right lines."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_evalkit
from evalkit.generate.spawn import worker_error_line
from evalkit.mainguard import guarded
from evalkit.records import read_generation_record

HEADER = "\n=== 2026-12-04T22:00:00Z worker for bf16 ===\n"


def test_the_error_line_is_the_exception_of_the_last_traceback_after_the_header(tmp_path: Path) -> None:
    log = tmp_path / "bf16.log"
    log.write_text("an earlier attempt\nValueError: old\n" + HEADER)
    start = log.stat().st_size
    with open(log, "a") as f:
        f.write("some notice a library printed\n"
                "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n    f()\n"
                "KeyError: 'x'\n\nDuring handling of the above exception, another exception occurred:\n\n"
                "Traceback (most recent call last):\n  File \"y.py\", line 2, in g\n    ^^^\n"
                "evalkit.errors.EvalkitError: reports/run: locked by pid 4242 on host h (stage generate)\n"
                "a line printed at exit\n")
    assert worker_error_line(log, start) == ("evalkit.errors.EvalkitError: reports/run: locked by pid 4242 on "
                                            "host h (stage generate)")


def test_without_a_traceback_the_last_line_and_without_output_nothing(tmp_path: Path) -> None:
    log = tmp_path / "bf16.log"
    log.write_text(HEADER + "Killed: out of memory\n\n")
    assert worker_error_line(log) == "Killed: out of memory"
    log.write_text(HEADER)  # the case: a header and nothing after it; the header is never the answer
    assert worker_error_line(log) == ""
    log.write_text("older output\n" + HEADER)
    assert worker_error_line(log, log.stat().st_size) == ""
    assert worker_error_line(tmp_path / "missing.log") == ""


def test_a_worker_that_dies_before_its_record_is_reported_with_its_exception(tmp_path: Path,
                                                                              three_prompts: Path) -> None:
    """A plugin that fails to load in the worker only (the stage sets EVALKIT_PARENT_PID for workers): the worker
    dies before it can write a record, and the failed record the stage writes quotes the worker's exception."""
    plugin = tmp_path / "refuses_in_workers.py"
    plugin.write_text("import os\nif os.environ.get('EVALKIT_PARENT_PID'):\n"
                      "    raise RuntimeError('this plugin does not load in a worker')\n")
    out = tmp_path / "run"
    r = run_evalkit("generate", str(three_prompts), "--model", "tiny", "--height", "32", "--width", "32",
                    "--backends", "bf16", "--plugin", str(plugin), "--out", str(out))
    rec = json.loads((out / "generation" / "bf16.json").read_text())
    assert rec["status"] == "failed"
    # The stage goes on and its own readers take the record (a GPU run's OOM-killed worker once stopped the stage
    # with "record.ranks[0].pid must be an integer, found null": the dead worker had no pid in its record).
    assert "must be" not in r.stderr and (out / "summary.json").is_file(), r.stderr[-2000:]
    assert read_generation_record(out / "generation" / "bf16.json")["ranks"][0]["pid"] is None
    # the merged record names the rank: "rank 0 of 1 (w1-r0): worker exited with code 1: ...EvalkitError: ..."
    assert "worker exited with code 1: " in rec["reason"] and \
        "RuntimeError: this plugin does not load in a worker" in rec["reason"], (rec["reason"], r.stderr[-2000:])


def test_guarded_reads_the_body_of_the_main_test_only() -> None:
    src = ("import evalkit\n"                          # 1
           "evalkit.list_backends()\n"                 # 2
           "if '__main__' == __name__:\n"              # 3
           "    evalkit.generate(\n"                   # 4
           "        'p.txt')\n"                        # 5
           "else:\n"                                   # 6
           "    evalkit.score('run')\n"                # 7
           "if __name__ != '__main__':\n"              # 8
           "    evalkit.report('run')\n")              # 9
    assert [guarded(src, n) for n in range(1, 10)] == [False, False, False, True, True, False, False, False, False]

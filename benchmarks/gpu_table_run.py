"""Several `evalkit generate` runs at once on one multi-GPU device machine, each on its own GPUs, for the seed table.

    python3 benchmarks/gpu_table_run.py --deadline-s 540 \
        --run main:0,1:1:bf16,bnb-nf4,... --run int4:2,3:0:bf16,torchao-int4wo,quanto-int4 [--config NAME=path.toml]

A `--run NAME:GPUS:WARMUP:BACKENDS` is one run directory (/tmp/evalkit-runs/NAME) generated with
`--gpus GPUS --warmup WARMUP`; its bf16 anchor runs first on its first GPU, as the stage does. Runs on disjoint GPUs
do not share a GPU, so their latencies stand. Before the runs: optimum-quanto's CUDA kernels start building in the
background (if a run has quanto-int4) and random:flux-dev is built once, so concurrent runs do not race to build it.

At the deadline (seconds since this script started) every run still going is killed, and for each backend without a
record the cut is written down: seconds its worker had run, and the images it had finished (with their latencies,
from the partial record). Each run's small files (manifest, summary, generation records, partial records, cut.json,
log tails) go to $OUT/NAME.tar.gz; benchmarks/gpu_table.py turns the untarred run directories into the table.
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOG_TAIL_LINES = 60


def parse_run(text: str) -> dict:
    try:
        name, gpus, warmup, backends = text.split(":", 3)
        return {"name": name, "gpus": gpus, "warmup": int(warmup), "backends": backends}
    except ValueError:
        raise SystemExit(f"--run {text!r}: expected NAME:GPUS:WARMUP:BACKENDS")


def worker_started(log: Path) -> float | None:
    """Epoch seconds of the last '=== <UTC> worker for X ===' header the stage wrote into the backend's log."""
    if not log.exists():
        return None
    stamps = re.findall(r"=== (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) worker for", log.read_text(errors="replace"))
    return calendar.timegm(time.strptime(stamps[-1], "%Y-%m-%dT%H:%M:%SZ")) if stamps else None


def record_cuts(run_dir: Path, deadline_epoch: float) -> dict:
    """What each backend with no record had reached when the run was stopped."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    cuts = {}
    for name in manifest["backends"]:
        if (run_dir / "generation" / f"{name}.json").exists():
            continue
        started = worker_started(run_dir / "logs" / f"{name}.log")
        partial = run_dir / "generation" / f"{name}.partial.jsonl"
        images = [json.loads(ln) for ln in partial.read_text().splitlines() if ln.strip()] if partial.exists() else []
        cuts[name] = {"worker_started": started is not None,
                      "seconds_run": None if started is None else round(deadline_epoch - started, 1),
                      "images_done": len(images), "image_latencies_s": [i["latency_s"] for i in images]}
    return cuts


def tar_run(run_dir: Path, out: Path, extra: dict) -> None:
    (run_dir / "cut.json").write_text(json.dumps(extra, indent=1))
    with tarfile.open(out / f"{run_dir.name}.tar.gz", "w:gz") as tar:
        for sub in ("manifest.json", "summary.json", "cut.json", "generation"):
            if (run_dir / sub).exists():
                tar.add(run_dir / sub, arcname=f"{run_dir.name}/{sub}")
        for log in sorted((run_dir / "logs").glob("*.log")):
            # Logs can be flooded with library warnings; the end says how a worker finished.
            lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            tmp = out / ".logtail"
            tmp.write_text("\n".join(lines) + "\n")
            tar.add(tmp, arcname=f"{run_dir.name}/logs/{log.name}")
            tmp.unlink()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", action="append", type=parse_run, required=True)
    ap.add_argument("--config", action="append", default=[], help="NAME=path: --config for run NAME")
    ap.add_argument("--prompts", default=str(REPO / "benchmarks" / "prompts-3.txt"))
    ap.add_argument("--model", default="random:flux-dev")
    ap.add_argument("--device", default="cuda", help="cpu only for a dry run of this script with --model tiny")
    ap.add_argument("--deadline-s", type=float, default=540)
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `evalkit generate` arguments")
    a = ap.parse_args()
    t0 = time.time()
    out = Path(os.environ.get("OUT", "gpu-out"))
    out.mkdir(parents=True, exist_ok=True)
    runs_root = Path(os.environ.get("EVALKIT_RUNS", "/tmp/evalkit-runs"))
    configs = dict(c.split("=", 1) for c in a.config)
    meta: dict = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)), "argv": sys.argv[1:],
                  "deadline_s": a.deadline_s}

    def say(msg: str) -> None:
        print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)

    quanto = None
    if any("quanto-int4" in r["backends"] for r in a.run):
        quanto = subprocess.Popen([sys.executable, "-c", "import time; t=time.time(); from optimum.quanto.library."
                                   "extensions import get_extension as g; g('quanto_cuda').lib; "
                                   "print('quanto_cuda build seconds', round(time.time()-t, 1))"], cwd=REPO)
        say("optimum-quanto kernel build started in the background")
    if a.model == "random:flux-dev":
        tb = time.time()
        subprocess.run([sys.executable, "-c", "from evalkit.generate.models import ensure_random_flux_dev as e; "
                        "e('cuda')"], cwd=REPO, check=True)
        meta["model_build_s"] = round(time.time() - tb, 1)
        say(f"random:flux-dev ready in {meta['model_build_s']} s")

    procs = {}
    for r in a.run:
        run_dir = runs_root / r["name"]
        cmd = [sys.executable, "-m", "evalkit", "generate", a.prompts, "--model", a.model, "--device", a.device,
               "--backends", r["backends"], "--out", str(run_dir), "--warmup", str(r["warmup"]), "--gpus", r["gpus"]]
        if r["name"] in configs:
            cmd += ["--config", configs[r["name"]]]
        cmd += a.extra
        r["command"] = cmd
        say("+ " + " ".join(cmd))
        log = open(out / f"{r['name']}.stderr.log", "wb")
        procs[r["name"]] = (subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=log, stderr=log), run_dir)

    while any(p.poll() is None for p, _ in procs.values()) and time.time() - t0 < a.deadline_s:
        time.sleep(2)
    stop = time.time()
    for r in a.run:
        p, run_dir = procs[r["name"]]
        r["rc"] = p.poll()
        if r["rc"] is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            r["rc"] = "killed at the deadline"
            subprocess.run([sys.executable, "-c", f"from evalkit.rundir import write_summary; write_summary({str(run_dir)!r})"],
                           cwd=REPO)
        say(f"run {r['name']}: rc={r['rc']}")
        if (run_dir / "manifest.json").exists():
            tar_run(run_dir, out, {"run": r, "stopped_after_s": round(stop - t0, 1), "cuts": record_cuts(run_dir, stop),
                                   "model_build_s": meta.get("model_build_s")})
    if quanto is not None:
        if quanto.poll() is None:
            quanto.kill()
        meta["quanto_build_rc"] = quanto.poll()
    meta["runs"] = a.run
    meta["wall_s"] = round(time.time() - t0, 1)
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Several `evalkit generate` runs at once on one multi-GPU device machine, each on its own GPUs, for the seed table
and the noise floor.

    python3 benchmarks/gpu_table_run.py --deadline-s 540 \
        --run main:0,1:1:bf16,bnb-nf4,... --run int4:2,3:0:bf16,torchao-int4wo,quanto-int4 [--config NAME=path.toml] \
        [--calibrate NAME:batch2,sdpa-math,tf32,compile[:rerun]] [--then NAME:BACKENDS]

A `--run NAME:GPUS:WARMUP:BACKENDS` is one run directory (/tmp/evalkit-runs/NAME) generated with
`--gpus GPUS --warmup WARMUP`; its bf16 anchor runs first on its first GPU, as the stage does. Each run's processes
see only its GPUs (CUDA_VISIBLE_DEVICES=GPUS), so runs on disjoint GPUs do not share a GPU and their latencies stand;
a step that picks no GPU itself (calibrate) stays on its run's GPUs too. Before the runs: optimum-quanto's CUDA
kernels start building in the background (if a run has quanto-int4) and the `--model random:VARIANT` (default
random:flux-dev; any family's variant, `evalkit models`) is built once, so concurrent runs do not race to build it;
`evalkit backends --json` is saved as $OUT/backends.json (why a row cannot run on this GPU), and whether MSLK's int4
kernels load goes into meta.json (`mslk_int4`) when a run has torchao-int4wo.
benchmarks/families-gpu.md has the commands for the families of issue #25.

`--calibrate NAME:P1,P2,...[:Q1,...]` follows run NAME's generate with its noise floor (issue #17): one
`evalkit calibrate RUN --perturbations P` per P, each its own process, so a deadline keeps every perturbation
already scored (each result is kept as RUN/calibration.P.json); then plain `evalkit calibrate RUN` (the device's
default perturbations, every score cached by then: RUN/calibration.default.json); then each Q alone (extras such as
the `rerun` control). RUN/calibration.json is left as the defaults' result when that step finished.
`--no-default-calibrate` leaves the plain call out when time is short (the per-perturbation results hold the same
scores). `--then NAME:BACKENDS` generates more backends into run NAME after its calibration, one GPU doing both in
turn: the run's bf16 is up to date, so it is not generated again and stays those rows' anchor.

`--keep-going` is for a step that outlasts a call (a full-size torchao compile): at the deadline the step in flight
is left running instead of killed. It runs in a process session of its own, which the device machine lets live on
while the machine is held (chain the next call within its idle window). Its pid goes to RUN/.inflight.json, and the
next call naming the same `--run` waits for it before its own steps, whose generate then only fills what is missing;
so a compile is never cut at a call's boundary and its inductor cache stays on the machine's disk.

At the deadline (seconds since this script started) every step still going is killed, and for each backend without a
record the cut is written down: seconds its worker had run, and the images it had finished (with their latencies,
from the partial record); calibration runs likewise. Each run's small files (manifest, summary, generation records,
partial records, cut.json, calibration files, log tails) go to $OUT/NAME.tar.gz; benchmarks/gpu_table.py turns the
untarred run directories into the table and benchmarks/floor_table.py the calibrations into the floor's page.
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOG_TAIL_LINES = 60
CALIBRATION_DIR = "calibration"  # evalkit.calibrate.stage.CALIBRATION_DIR (not imported: keep this script light)
INFLIGHT = ".inflight.json"  # a step an earlier call left running (--keep-going)


def parse_run(text: str) -> dict:
    try:
        name, gpus, warmup, backends = text.split(":", 3)
        return {"name": name, "gpus": gpus, "warmup": int(warmup), "backends": backends}
    except ValueError:
        raise SystemExit(f"--run {text!r}: expected NAME:GPUS:WARMUP:BACKENDS")


def parse_calibrate(text: str) -> tuple[str, list[str], list[str]]:
    parts = text.split(":")
    if not 2 <= len(parts) <= 3 or not parts[0] or not parts[1]:
        raise SystemExit(f"--calibrate {text!r}: expected NAME:P1,P2,...[:EXTRA1,...]")
    names = lambda s: [n.strip() for n in s.split(",") if n.strip()]  # noqa: E731
    return parts[0], names(parts[1]), names(parts[2]) if len(parts) == 3 else []


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
        # The unsharded partial record, and each rank's (generation/shards/<backend>/<tag>.partial.jsonl, issue #14)
        partials = [run_dir / "generation" / f"{name}.partial.jsonl",
                    *sorted((run_dir / "generation" / "shards" / name).glob("*.partial.jsonl"))]
        images = [json.loads(ln) for partial in partials if partial.exists()
                  for ln in partial.read_text().splitlines() if ln.strip()]
        cuts[name] = {"worker_started": started is not None,
                      "seconds_run": None if started is None else round(deadline_epoch - started, 1),
                      "images_done": len(images), "image_latencies_s": [i["latency_s"] for i in images]}
    return cuts


def calibration_runs(run_dir: Path) -> list[Path]:
    """The run directories `evalkit calibrate` regenerated the reference into (one per perturbation)."""
    root = run_dir / CALIBRATION_DIR
    return sorted(p for p in root.iterdir() if (p / "manifest.json").exists()) if root.is_dir() else []


def _add_run_files(tar: tarfile.TarFile, run_dir: Path, arc: str, out: Path) -> None:
    for sub in ("manifest.json", "summary.json", "cut.json", "generation"):
        if (run_dir / sub).exists():
            tar.add(run_dir / sub, arcname=f"{arc}/{sub}")
    for log in sorted((run_dir / "logs").glob("*.log")):
        # Logs can be flooded with library warnings; the end says how a worker finished.
        lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        tmp = out / ".logtail"
        tmp.write_text("\n".join(lines) + "\n")
        tar.add(tmp, arcname=f"{arc}/logs/{log.name}")
        tmp.unlink()


def tar_run(run_dir: Path, out: Path, extra: dict) -> None:
    (run_dir / "cut.json").write_text(json.dumps(extra, indent=1))
    with tarfile.open(out / f"{run_dir.name}.tar.gz", "w:gz") as tar:
        _add_run_files(tar, run_dir, run_dir.name, out)
        for f in sorted(run_dir.glob("calibration*.json")):
            tar.add(f, arcname=f"{run_dir.name}/{f.name}")
        for sub in calibration_runs(run_dir):
            _add_run_files(tar, sub, f"{run_dir.name}/{CALIBRATION_DIR}/{sub.name}", out)


class Pipeline:
    """One run's steps, one process at a time, in a thread; `stop()` kills the step in flight and skips the rest,
    `detach()` (--keep-going) skips the rest and leaves the step in flight running."""

    def __init__(self, name: str, steps: list[tuple[str, list[str]]], env: dict, log_path: Path, run_dir: Path,
                 t0: float, say) -> None:
        self.name, self.steps, self.env, self.log_path, self.run_dir = name, steps, env, log_path, run_dir
        self.t0, self.say = t0, say
        self.done: list[dict] = []
        self.proc: subprocess.Popen | None = None
        self.stopped = False
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._work, daemon=True)

    def _work(self) -> None:
        self._wait_for_inflight()
        with open(self.log_path, "ab") as log:
            for label, cmd in self.steps:
                with self.lock:
                    if self.stopped:
                        return
                    self.say(f"{self.name}/{label}: + {' '.join(cmd)}")
                    log.write(f"\n=== {label}: {' '.join(cmd)}\n".encode())
                    log.flush()
                    started = time.time()
                    self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, start_new_session=True, stdout=log,
                                                 stderr=log)
                    step = {"step": label, "command": cmd, "started_s": round(started - self.t0, 1)}
                    self.done.append(step)
                rc = self.proc.wait()
                with self.lock:
                    step.update(ended_s=round(time.time() - self.t0, 1), rc="killed at the deadline" if self.stopped
                                else rc)
                result = self.run_dir / "calibration.json"
                if rc == 0 and label.startswith("calibrate:") and result.exists():
                    # Each calibrate call rewrites calibration.json with its own perturbations: keep every one.
                    shutil.copy(result, self.run_dir / f"calibration.{label.split(':', 1)[1]}.json")
                self.say(f"{self.name}/{label}: rc={step['rc']} after {step['ended_s'] - step['started_s']:.1f} s")

    def _wait_for_inflight(self) -> None:
        """A step an earlier call left running (--keep-going) holds the run's lock: wait for it to end first."""
        marker = self.run_dir / INFLIGHT
        if not marker.exists():
            return
        info = json.loads(marker.read_text())
        self.say(f"{self.name}: waiting for step {info['step']} (pid {info['pid']}) left running by an earlier call")
        while _alive(info["pid"]) and not self.stopped:
            time.sleep(2)
        if not _alive(info["pid"]):
            marker.unlink()
            self.say(f"{self.name}: the earlier step {info['step']} has ended")

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            if self.proc is not None and self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.thread.join()

    def detach(self) -> dict | None:
        """Start no further step and leave the one in flight running; returns what RUN/.inflight.json records."""
        with self.lock:
            self.stopped = True
            marker = self.run_dir / INFLIGHT
            if self.proc is None and marker.exists():  # still waiting for an earlier call's step: it runs on
                return {**json.loads(marker.read_text()), "from_an_earlier_call": True}
            if self.proc is None or self.proc.poll() is not None:
                return None
            step = self.done[-1]
            info = {"pid": self.proc.pid, "step": step["step"], "command": step["command"],
                    "started_s": step["started_s"], "left_running_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                      time.gmtime())}
            (self.run_dir / INFLIGHT).write_text(json.dumps(info, indent=1))
            step["rc"] = "left running (--keep-going)"
            return info


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A child of this process that has exited but not been reaped is a zombie: not running.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", action="append", type=parse_run, required=True)
    ap.add_argument("--config", action="append", default=[], help="NAME=path: --config for run NAME")
    ap.add_argument("--calibrate", action="append", type=parse_calibrate, default=[],
                    help="NAME:P1,P2,...[:EXTRA,...]: after run NAME's generate, its noise floor (see above)")
    ap.add_argument("--no-default-calibrate", action="store_true",
                    help="after the per-perturbation calls, skip the plain `evalkit calibrate RUN`")
    ap.add_argument("--then", action="append", default=[], help="NAME:BACKENDS: generated into run NAME at the end")
    ap.add_argument("--prompts", default=str(REPO / "benchmarks" / "prompts-3.txt"))
    ap.add_argument("--model", default="random:flux-dev", help="random:VARIANT of any family (built once first)")
    ap.add_argument("--device", default="cuda", help="cpu only for a dry run of this script with --model tiny")
    ap.add_argument("--deadline-s", type=float, default=540)
    ap.add_argument("--keep-going", action="store_true",
                    help="at the deadline, leave the step in flight running for the next call (see above)")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `evalkit generate` arguments")
    a = ap.parse_args()
    t0 = time.time()
    out = Path(os.environ.get("OUT", "gpu-out"))
    out.mkdir(parents=True, exist_ok=True)
    runs_root = Path(os.environ.get("EVALKIT_RUNS", "/tmp/evalkit-runs"))
    configs = dict(c.split("=", 1) for c in a.config)
    calibrations = {name: (perts, extras) for name, perts, extras in a.calibrate}
    then = dict(t.split(":", 1) for t in a.then)
    unknown = (set(calibrations) | set(then)) - {r["name"] for r in a.run}
    if unknown:
        raise SystemExit(f"--calibrate or --then names no --run: {sorted(unknown)}")
    meta: dict = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)), "argv": sys.argv[1:],
                  "deadline_s": a.deadline_s}

    def say(msg: str) -> None:
        print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)

    # What this machine can run and why not (`evalkit backends --json`, the H200's own verdicts for rows that cannot
    # run: SM100-only formats, Nunchaku on Hopper, a package not carried), and whether MSLK's int4 kernels load
    # (mslk-cuda carried as a wheel: torchao-int4wo then takes them; an ABI mismatch shows here as an import error).
    probe = subprocess.run([sys.executable, "-m", "evalkit", "backends", "--json", "--device", a.device,
                            "--model", a.model], cwd=REPO, capture_output=True, text=True)
    (out / "backends.json").write_text(probe.stdout or probe.stderr)
    if any("torchao-int4wo" in r["backends"] for r in a.run):
        mslk = subprocess.run([sys.executable, "-c", "import torch; from evalkit.quantizers.torchao import "
                               "mslk_int4_unusable as u; cap = tuple(torch.cuda.get_device_capability()) if "
                               "torch.cuda.is_available() else None; print(u(cap) or 'usable')"], cwd=REPO,
                              capture_output=True, text=True)
        meta["mslk_int4"] = (mslk.stdout.strip() or mslk.stderr.strip()[-400:])
        say(f"MSLK int4 kernels: {meta['mslk_int4']}")

    quanto = None
    if any("quanto-int4" in r["backends"] for r in a.run):
        quanto = subprocess.Popen([sys.executable, "-c", "import time; t=time.time(); from optimum.quanto.library."
                                   "extensions import get_extension as g; g('quanto_cuda').lib; "
                                   "print('quanto_cuda build seconds', round(time.time()-t, 1))"], cwd=REPO)
        say("optimum-quanto kernel build started in the background")
    if a.model.startswith("random:"):  # any family's variant: random:flux-dev, random:qwen-image, ...
        tb = time.time()
        subprocess.run([sys.executable, "-c", "import sys; from evalkit.families.registry import resolve_model as r; "
                        "r(sys.argv[1], 'cuda')", a.model], cwd=REPO, check=True)
        meta["model_build_s"] = round(time.time() - tb, 1)
        say(f"{a.model} ready in {meta['model_build_s']} s")

    evalkit = [sys.executable, "-m", "evalkit"]
    pipes: dict[str, Pipeline] = {}
    for r in a.run:
        run_dir = runs_root / r["name"]
        cmd = [*evalkit, "generate", a.prompts, "--model", a.model, "--device", a.device, "--backends", r["backends"],
               "--out", str(run_dir), "--warmup", str(r["warmup"]), "--gpus", r["gpus"]]
        if r["name"] in configs:
            cmd += ["--config", configs[r["name"]]]
        cmd += a.extra
        steps = [("generate", cmd)]
        perts, extras = calibrations.get(r["name"], ([], []))
        steps += [(f"calibrate:{p}", [*evalkit, "calibrate", str(run_dir), "--perturbations", p]) for p in perts]
        if perts and not a.no_default_calibrate:
            steps.append(("calibrate:default", [*evalkit, "calibrate", str(run_dir)]))
        steps += [(f"calibrate:{p}", [*evalkit, "calibrate", str(run_dir), "--perturbations", p]) for p in extras]
        if r["name"] in then:
            i = cmd.index("--backends") + 1
            steps.append(("generate:then", [*cmd[:i], then[r["name"]], *cmd[i + 1:]]))
        r["steps"] = [{"step": label, "command": c} for label, c in steps]
        env = dict(os.environ)
        if a.device == "cuda":
            # The generate stage sets each worker's CUDA_VISIBLE_DEVICES from --gpus itself; calibrate's workers
            # inherit this one, so every process of the run stays on the run's GPUs.
            env["CUDA_VISIBLE_DEVICES"] = r["gpus"]
        # Beside the run, not in $OUT (emptied before each call): a step left running keeps writing its log.
        runs_root.mkdir(parents=True, exist_ok=True)
        pipes[r["name"]] = Pipeline(r["name"], steps, env, runs_root / f"{r['name']}.stderr.log", run_dir, t0, say)
    for p in pipes.values():
        p.thread.start()

    while any(p.thread.is_alive() for p in pipes.values()) and time.time() - t0 < a.deadline_s:
        time.sleep(2)
    stop = time.time()
    for r in a.run:
        pipe, run_dir = pipes[r["name"]], pipes[r["name"]].run_dir
        was_running = pipe.thread.is_alive()
        left = pipe.detach() if was_running and a.keep_going else None
        if left is None:
            pipe.stop()
        else:
            say(f"run {r['name']}: step {left['step']} left running as pid {left['pid']} (--keep-going)")
        r["steps_run"] = pipe.done
        r["left_running"] = left
        r["rc"] = ("left running" if left else "killed at the deadline") if was_running else \
            (pipe.done[0]["rc"] if pipe.done else None)
        if pipe.log_path.exists():
            shutil.copy(pipe.log_path, out / pipe.log_path.name)
        if was_running and left is None:
            subprocess.run([sys.executable, "-c", f"from evalkit.rundir import write_summary; write_summary({str(run_dir)!r})"],
                           cwd=REPO)
        default = run_dir / "calibration.default.json"
        if default.exists():  # an extra perturbation after it rewrote calibration.json: the defaults' floor is the run's
            shutil.copy(default, run_dir / "calibration.json")
        say(f"run {r['name']}: rc={r['rc']}")
        if (run_dir / "manifest.json").exists():
            tar_run(run_dir, out, {"run": r, "stopped_after_s": round(stop - t0, 1), "cuts": record_cuts(run_dir, stop),
                                   "calibration_cuts": {s.name: record_cuts(s, stop) for s in calibration_runs(run_dir)},
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

"""Issue #14's scale-out benchmark in one device call: the same study on one GPU and on N, then scoring on 1 rank
and on N, each timed end to end; every raw fact goes into one JSON that benchmarks/bench_scale_report.py reads.

On a machine with N GPUs (the wheels installed as benchmarks/README.md says; T0 taken before the install, so the
deadline counts the whole call):

    T0=$(date +%s); <install wheels>; python3 benchmarks/bench_scale.py --gpus 2 --prompts-count 3 \
        --started-epoch $T0 --deadline-s 560

P=3 on 2 GPUs (P=4 on 4) fits a 10-minute call by `--estimate`'s figures (the seed table's): ~61 s build, ~137 s
on N GPUs, ~249 s on one, ~35 s scoring, after ~45 s of wheel install. The default P=6 does not fit one call.

On the CPU (tests, dry runs): `python benchmarks/bench_scale.py --cpu --gpus 2 --prompts-count 3` uses the tiny
model, `--jobs N` instead of `--gpus`, and gloo for `torchrun ... -m evalkit score`.

Steps, in order, each one recorded with its command, wall time, exit code and log tail; at the deadline the step in
flight is killed (its whole process group) and marked cut, and every later step is recorded as not started:
  1. scoring input made in the background (synthetic PNGs, see `make_scoring_run`), while
  2. random:flux-dev is built once (so neither study pays for it);
  3. the study on N GPUs: `evalkit generate PROMPTS --backends B --gpus 0,..,N-1` (evalkit launches torchrun);
  4. the same study on one GPU: CUDA_VISIBLE_DEVICES=0, no --gpus (world size 1);
     N first by default: it is the shorter, and the first run pays any cold cache, which can only understate N's gain;
  5. every PNG of the two studies hashed and compared (byte identity whatever the world size);
  6. `evalkit score` on 1 rank against `torchrun --nproc-per-node N -m evalkit score` on two copies of the scoring
     input, skipped (and said so) when its estimate does not fit before the deadline.
Output under $OUT (at most 8 files come back from a device call): scale.json, runs.tar.gz (each run directory's small
files and every command's log tail); the caller tees the console to $OUT/session.log.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "benchmarks" / "prompts-scale.txt"
STUDY_BACKENDS = "bf16,torchao-int8wo,bnb-nf4,fp8-layerwise"
LOG_TAIL_LINES = 60
SCHEMA = "evalkit.bench-scale/1"
# Seconds kept after the last step for hashing, collecting and the tarball.
FINISH_RESERVE_S = 12.0
# A study step started with less time than this could not even load a backend: recorded as not started instead.
MIN_STEP_S = 20.0

# What the time estimate assumes, from benchmarks/results/flux-dev-random-h200* (H200, 2026-11-28): seconds an image
# after warm-up (fp8-layerwise: the H100's 11.0 s scaled by the two machines' bf16 anchors); a load (5.5-6.3 s); a
# warm-up image (12.0-14.3 s: 3.5 s over a steady one); a worker's start-up and tear-down (its wall minus load,
# warm-up and images: ~9 s); a rank's start before its first worker (11 s; torchrun's start added for N); the
# random:flux-dev build (60.3 and 61.4 s).
EST_IMAGE_S = {"bf16": 9.0, "torchao-int8wo": 11.9, "bnb-nf4": 9.5, "fp8-layerwise": 10.5}
EST_LOAD_S, EST_WARMUP_EXTRA_S, EST_WORKER_START_S = 6.0, 3.5, 9.0
EST_RANK_START_S, EST_TORCHRUN_S, EST_BUILD_S = 11.0, 5.0, 61.0
EST_SCORE_PAIRS_PER_S, EST_SCORE_START_S = 35.0, 12.0


def estimate(prompts: int, gpus: int, backends: list[str], score_pairs: int, warmup: int = 1) -> dict[str, float]:
    """Seconds each step should take on an H200 machine (a plan, not a measurement: the report shows the real ones)."""
    t = [EST_IMAGE_S.get(b, 12.0) for b in backends]
    fixed = [EST_WORKER_START_S + EST_LOAD_S + warmup * (ti + EST_WARMUP_EXTRA_S) for ti in t]
    one = EST_RANK_START_S + sum(f + prompts * ti for f, ti in zip(fixed, t))
    # N GPUs: the better of whole backends (longest first onto the least loaded GPU) and every backend split.
    loads = [0.0] * gpus
    for cost in sorted((f + prompts * ti for f, ti in zip(fixed, t)), reverse=True):
        loads[loads.index(min(loads))] += cost
    split = sum(f + math.ceil(prompts / gpus) * ti for f, ti in zip(fixed, t))
    many = EST_RANK_START_S + EST_TORCHRUN_S + min(max(loads), split)
    score = 2 * (EST_SCORE_START_S + score_pairs / EST_SCORE_PAIRS_PER_S) if score_pairs else 0.0
    return {"build_s": EST_BUILD_S, "study_n_s": round(many, 1), "study_1_s": round(one, 1), "score_s": round(score, 1),
            "total_s": round(EST_BUILD_S + many + one + score + FINISH_RESERVE_S, 1)}


# ------------------------------------------------------------------------------------------------ running steps

class Clock:
    def __init__(self, started_epoch: float, deadline_s: float) -> None:
        self.t0 = started_epoch
        self.deadline = started_epoch + deadline_s

    def now(self) -> float:
        return round(time.time() - self.t0, 1)

    def left(self) -> float:
        return self.deadline - FINISH_RESERVE_S - time.time()

    def say(self, msg: str) -> None:
        print(f"[{self.now():6.1f}s] {msg}", flush=True)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_step(clock: Clock, name: str, cmd: list[str], logs: Path, env_set: dict[str, str] | None = None,
             env_unset: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run one command in its own process group until it ends or the deadline comes (then the group is killed)."""
    env = dict(os.environ)
    for k in env_unset:
        env.pop(k, None)
    env.update(env_set or {})
    log = logs / f"{name}.log"
    clock.say(f"{name}: " + " ".join(cmd))
    step: dict[str, Any] = {"name": name, "command": cmd, "env_set": env_set or {}, "env_unset": list(env_unset),
                            "started_s": clock.now(), "log": log.name}
    t = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        while proc.poll() is None and clock.left() > 0:
            time.sleep(0.5)
        cut = proc.poll() is None
        if cut:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    step.update(wall_s=round(time.perf_counter() - t, 2), rc=proc.returncode, cut=cut, log_tail=tail(log))
    clock.say(f"{name}: {'CUT at the deadline' if cut else f'rc={proc.returncode}'} after {step['wall_s']} s")
    return step


def not_started(name: str, why: str) -> dict[str, Any]:
    return {"name": name, "not_started": why}


def evalkit_supports(option: str, command: str = "generate") -> bool:
    """Whether this tree's CLI has an option (the scale-out code may not be merged yet)."""
    out = subprocess.run([sys.executable, "-m", "evalkit", command, "--help"], cwd=REPO, capture_output=True, text=True)
    return option in out.stdout


# ------------------------------------------------------------------------------------------------ collecting

def _small_file(path: Path) -> Any:
    """A JSON or JSONL file's content (None if it is not readable: a half-written file after a kill)."""
    try:
        text = path.read_text()
        if path.suffix == ".jsonl":
            return [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        return json.loads(text)
    except (OSError, ValueError):
        return None


def collect_run(run_dir: Path) -> dict[str, Any]:
    """The run directory's records as they are on disk (whatever the stage's version names them): the manifest, the
    merge manifest, and every JSON/JSONL file under generation/ (final, shard, unit and partial records)."""
    if not (run_dir / "manifest.json").exists():
        return {"run_dir": str(run_dir), "missing": "no manifest.json"}
    return {"run_dir": str(run_dir), "manifest": _small_file(run_dir / "manifest.json"),
            "merge": _small_file(run_dir / "merge.json") if (run_dir / "merge.json").exists() else None,
            "generation": {p.relative_to(run_dir).as_posix(): _small_file(p)
                           for p in sorted((run_dir / "generation").rglob("*.json*"))}}


def schedule_lines(log_text: str) -> list[str]:
    """What the stage printed about its schedule (the issue asks that the choice and its reason be printed)."""
    return [ln.strip() for ln in log_text.splitlines() if re.search(r"schedul|fixed.cost|makespan", ln, re.I)][:20]


def png_hashes(run_dir: Path) -> dict[str, str]:
    return {p.relative_to(run_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((run_dir / "images").rglob("*.png"))} if (run_dir / "images").is_dir() else {}


def compare_pngs(a: Path, b: Path) -> dict[str, Any]:
    ha, hb = png_hashes(a), png_hashes(b)
    common = sorted(set(ha) & set(hb))
    differ = [k for k in common if ha[k] != hb[k]]
    return {"in_a": len(ha), "in_b": len(hb), "common": len(common), "identical": len(common) - len(differ),
            "differ": differ, "only_in_a": sorted(set(ha) - set(hb)), "only_in_b": sorted(set(hb) - set(ha)),
            "bytes_mean": round(sum((a / k).stat().st_size for k in ha) / len(ha)) if ha else None}


def tar_runs(out: Path, dirs: dict[str, Path], logs: Path) -> None:
    """Each run directory's small files (no PNGs) and every command's log tail, in one tarball."""
    with tarfile.open(out / "runs.tar.gz", "w:gz") as tar:
        for name, d in dirs.items():
            if not d.is_dir():
                continue
            for p in sorted(d.rglob("*")):
                rel = p.relative_to(d).as_posix()
                if p.is_file() and p.suffix in (".json", ".jsonl", ".csv") and not rel.startswith("metrics/cache"):
                    tar.add(p, arcname=f"{name}/{rel}")
                elif p.is_file() and p.suffix == ".log":
                    _add_text(tar, f"{name}/{rel}", tail(p))
        for p in sorted(logs.glob("*.log")):
            _add_text(tar, f"commands/{p.name}", tail(p, 200))


def _add_text(tar: tarfile.TarFile, arcname: str, text: str) -> None:
    import io

    data = (text + "\n").encode()
    info = tarfile.TarInfo(arcname)
    info.size, info.mtime = len(data), int(time.time())
    tar.addfile(info, io.BytesIO(data))


def environment(gpus: int, cpu: bool) -> dict[str, Any]:
    from importlib import metadata

    env: dict[str, Any] = {"host": socket.gethostname(), "python": platform.python_version(),
                           "cpu_count": os.cpu_count(), "gpus_used": gpus, "cpu_mode": cpu, "versions": {}}
    for pkg in ("torch", "diffusers", "transformers", "torchao", "bitsandbytes", "accelerate"):
        try:
            env["versions"][pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            env["versions"][pkg] = None
    if not cpu and shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True)
        env["nvidia_smi"] = q.stdout.strip().splitlines()
    try:
        env["tree_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                            text=True).stdout.strip() or None
    except OSError:
        env["tree_commit"] = None
    return env


# ------------------------------------------------------------------------------------------------ scoring input

SCORING_BACKENDS = ("bf16", "torchao-int8wo", "bnb-nf4")
SCORING_NOTE = ("synthetic images made by benchmarks/bench_scale.py to time scoring (pairs/s) only: smooth random "
                "fields plus noise, candidates = reference + small noise; the metric values mean nothing")


def _synth_pair(args: tuple[str, int, int, int]) -> None:
    """One prompt's images: a reference and per-candidate perturbations (each file distinct, so nothing dedupes)."""
    import numpy as np
    from PIL import Image

    root, index, size, n_backends = args
    rng = np.random.default_rng(index)
    low = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    base = np.asarray(low, dtype=np.int16) + rng.normal(0, 5, (size, size, 3)).astype(np.int16)
    for k, b in enumerate(SCORING_BACKENDS[:n_backends]):
        img = base if k == 0 else base + rng.normal(0, 3, base.shape).astype(np.int16)
        path = Path(root) / "images" / b / f"p{index:04d}_s{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, compress_level=6)


def make_scoring_run(root: Path, pairs: int, size: int, procs: int = 8) -> dict[str, Any]:
    """A run directory in evalkit's contract (its own record builders) holding synthetic PNGs, `pairs` reference/
    candidate pairs over two candidates. Its manifest says what it is: not random weights (score would skip every
    metric), and `model.synthetic_for_throughput` with the note above."""
    from multiprocessing import Pool

    from evalkit.io import atomic_write_json
    from evalkit.prompts import parse_prompts
    from evalkit.records import (build_generation_record, build_manifest, image_entry_for_file, prompt_entry)

    t = time.perf_counter()
    n_prompts = math.ceil(pairs / (len(SCORING_BACKENDS) - 1))
    prompts = parse_prompts("\n".join(f"synthetic scoring image {i}" for i in range(n_prompts)), source="synthetic")
    with Pool(procs) as pool:
        pool.map(_synth_pair, [(str(root), i, size, len(SCORING_BACKENDS)) for i in range(n_prompts)])
    for b in SCORING_BACKENDS:
        images = []
        for i, p in enumerate(prompts):
            src = root / "images" / b / f"p{i:04d}_s{i}.png"
            dst = root / "images" / b / f"{p.id}_s{p.seed}.png"
            src.rename(dst)
            images.append(image_entry_for_file(root, dst.relative_to(root).as_posix(), prompt_id=p.id, seed=p.seed))
        atomic_write_json(root / "generation" / f"{b}.json",
                          build_generation_record(backend=b, status="ok", images=images))
    model = {"spec": "synthetic:scale-bench", "random_weights": False, "synthetic_for_throughput": True,
             "note": SCORING_NOTE}
    manifest = build_manifest(prompts=[prompt_entry(p) for p in prompts], backends=list(SCORING_BACKENDS),
                              run_id="scale-bench-scoring", model=model, created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                              generation={"height": size, "width": size, "synthetic": True})
    atomic_write_json(root / "manifest.json", manifest)
    sizes = [p.stat().st_size for p in (root / "images").rglob("*.png")]
    return {"pairs": n_prompts * (len(SCORING_BACKENDS) - 1), "images": len(sizes), "size_px": size,
            "png_bytes_mean": round(sum(sizes) / len(sizes)), "made_in_s": round(time.perf_counter() - t, 1),
            "note": SCORING_NOTE}


def compare_scores(a: Path, b: Path) -> dict[str, Any]:
    """Largest difference between two scorings of the same images (per-prompt values and means, every metric)."""
    worst, compared = 0.0, 0
    for fa in sorted((a / "metrics").glob("*.json")):
        ra, rb = _small_file(fa), _small_file(b / "metrics" / fa.name)
        if not isinstance(ra, dict) or not isinstance(rb, dict):
            continue
        for name, ma in (ra.get("metrics") or {}).items():
            mb = (rb.get("metrics") or {}).get(name) or {}
            pairs = [(ma.get("mean"), mb.get("mean"))]
            pairs += [(v, (mb.get("per_prompt") or {}).get(k)) for k, v in (ma.get("per_prompt") or {}).items()]
            for x, y in pairs:
                if isinstance(x, (int, float)) and isinstance(y, (int, float)):
                    worst, compared = max(worst, abs(x - y)), compared + 1
    return {"values_compared": compared, "max_abs_diff": worst}


# ------------------------------------------------------------------------------------------------ main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpus", type=int, default=2, help="N: GPUs (ranks on --cpu) of the scaled-out side")
    ap.add_argument("--prompts-count", type=int, default=6, help="P: the first P prompts of benchmarks/prompts-scale.txt")
    ap.add_argument("--backends", default=STUDY_BACKENDS)
    ap.add_argument("--model", default=None, help="default random:flux-dev (tiny with --cpu)")
    ap.add_argument("--cpu", action="store_true", help="dry run on the CPU: tiny model, --jobs N, gloo")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--schedule", default="auto", help="passed to the N-GPU run when the CLI has --schedule")
    ap.add_argument("--order", choices=["n-first", "1-first"], default="n-first")
    ap.add_argument("--started-epoch", type=float, default=None, help="the call's start (date +%%s); default now")
    ap.add_argument("--deadline-s", type=float, default=560.0, help="seconds after --started-epoch to be done by")
    ap.add_argument("--score-pairs", type=int, default=192, help="scoring pairs (0: no scoring step)")
    ap.add_argument("--score-size", type=int, default=None, help="scoring images' side (default 1024; 256 with --cpu)")
    ap.add_argument("--score-metrics", default="ssim,psnr,ms_ssim",
                    help="metrics that need no weight files (add lpips_alex with --weights-dir)")
    ap.add_argument("--weights-dir", default=None)
    ap.add_argument("--work", default=None, help="run directories' parent (default /tmp/evalkit-scale)")
    ap.add_argument("--tree-commit", default=None, help="the commit the tree was copied from (default: git rev-parse)")
    ap.add_argument("--estimate", action="store_true", help="print the time estimate for these settings and exit")
    ap.add_argument("--make-scoring-run", metavar="DIR", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    size = a.score_size or (256 if a.cpu else 1024)
    if a.make_scoring_run:
        info = make_scoring_run(Path(a.make_scoring_run), a.score_pairs, size)
        (Path(a.make_scoring_run) / "made.json").write_text(json.dumps(info))
        return 0
    est = estimate(a.prompts_count, a.gpus, backends, a.score_pairs, a.warmup)
    if a.estimate:
        print(json.dumps(est, indent=1))
        return 0
    clock = Clock(a.started_epoch or time.time(), a.deadline_s)
    out = Path(os.environ.get("OUT", "scale-out"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work or os.environ.get("EVALKIT_RUNS", "/tmp/evalkit-scale"))
    shutil.rmtree(work, ignore_errors=True)
    logs = work / "commands"
    logs.mkdir(parents=True)
    model = a.model or ("tiny" if a.cpu else "random:flux-dev")
    device = "cpu" if a.cpu else "cuda"
    prompts_file = work / f"prompts-{a.prompts_count}.txt"
    lines = [ln for ln in PROMPTS.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not 1 <= a.prompts_count <= len(lines):
        raise SystemExit(f"--prompts-count {a.prompts_count}: {PROMPTS.name} has {len(lines)} prompts")
    prompts_file.write_text("\n".join(lines[:a.prompts_count]) + "\n")
    res: dict[str, Any] = {"schema": SCHEMA, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock.t0)),
                           "started_epoch": clock.t0,
                           "argv": sys.argv[1:] if argv is None else argv, "deadline_s": a.deadline_s,
                           "script_started_s": clock.now(), "model": model, "device": device, "n": a.gpus,
                           "prompts_count": a.prompts_count, "prompts_file": PROMPTS.name, "backends": backends,
                           "warmup": a.warmup, "estimate": est, "environment": environment(a.gpus, a.cpu), "steps": []}
    if a.tree_commit:
        res["environment"]["tree_commit"] = a.tree_commit
    clock.say(f"estimate (s): {est}")

    def save() -> None:
        """After every step: if the call is killed from outside, what was measured so far still comes back."""
        (out / "scale.json").write_text(json.dumps(res, indent=1))

    scoring = work / "score-input"
    synth = None
    if a.score_pairs:
        synth = subprocess.Popen([sys.executable, __file__, "--make-scoring-run", str(scoring), "--score-pairs",
                                  str(a.score_pairs), "--score-size", str(size)], cwd=REPO,
                                 stdout=open(logs / "make-scoring-run.log", "wb"), stderr=subprocess.STDOUT)
    if model == "random:flux-dev":
        res["steps"].append(run_step(clock, "build-model", [sys.executable, "-c", "from evalkit.families.registry import "
                                     "resolve_model as r; r('random:flux1-dev', 'cuda')"], logs))

    gpu_list = ",".join(str(i) for i in range(a.gpus))
    common = [sys.executable, "-m", "evalkit", "generate", str(prompts_file), "--model", model, "--device", device,
              "--backends", ",".join(backends), "--warmup", str(a.warmup)]
    launch = ["--jobs", str(a.gpus)] if a.cpu else ["--gpus", gpu_list]
    has_schedule = evalkit_supports("--schedule")
    res["cli_has_schedule"] = has_schedule
    runs = {"study-n": work / f"study-{a.gpus}", "study-1": work / "study-1"}
    cmds = {"study-n": common + ["--out", str(runs["study-n"])] + launch
            + (["--schedule", a.schedule] if has_schedule else []),
            "study-1": common + ["--out", str(runs["study-1"])] + (["--jobs", "1"] if a.cpu else [])}
    # World size 1 on one GPU: no launcher variables, one visible device.
    envs = {"study-n": ({}, ()), "study-1": ({} if a.cpu else {"CUDA_VISIBLE_DEVICES": "0"},
                                            ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"))}
    for name in (["study-n", "study-1"] if a.order == "n-first" else ["study-1", "study-n"]):
        if clock.left() < MIN_STEP_S:
            res["steps"].append(not_started(name, f"{max(0.0, clock.left()):.0f} s were left before the deadline"))
            continue
        step = run_step(clock, name, cmds[name], logs, envs[name][0], envs[name][1])
        step["schedule_lines"] = schedule_lines((logs / step["log"]).read_text(errors="replace"))
        step["run"] = collect_run(runs[name])
        res["steps"].append(step)
        save()
    res["pngs"] = compare_pngs(runs["study-1"], runs["study-n"])
    clock.say(f"PNGs: {res['pngs']['identical']} of {res['pngs']['common']} common identical "
              f"({res['pngs']['in_a']} in study-1, {res['pngs']['in_b']} in study-n)")

    res["scoring"] = score_step(a, clock, synth, scoring, logs, work, device)
    res["finished_s"] = clock.now()
    save()
    tar_runs(out, {**runs, "score-1": work / "score-1", f"score-{a.gpus}": work / f"score-{a.gpus}"}, logs)
    clock.say(f"wrote {out / 'scale.json'} and {out / 'runs.tar.gz'}")
    return 0


def score_step(a: argparse.Namespace, clock: Clock, synth: subprocess.Popen | None, scoring: Path, logs: Path,
               work: Path, device: str) -> dict[str, Any]:
    """1 rank vs N ranks scoring the same synthetic images (two fresh copies: no cache shared)."""
    if synth is None:
        return {"skipped": "--score-pairs 0"}
    need = 2 * (EST_SCORE_START_S + a.score_pairs / EST_SCORE_PAIRS_PER_S) if not a.cpu else 0.0
    if synth.wait() != 0:
        return {"skipped": "making the scoring input failed: " + tail(logs / "make-scoring-run.log", 5)}
    info = _small_file(scoring / "made.json")
    if clock.left() < need:
        return {"skipped": f"not started: its estimate ({need:.0f} s) does not fit in the {clock.left():.0f} s left",
                "input": info}
    metrics = a.score_metrics + (",lpips_alex" if a.weights_dir and "lpips" not in a.score_metrics else "")
    opts = ["--metrics", metrics, "--device", device, "--quiet"] + (["--weights-dir", a.weights_dir] if a.weights_dir else [])
    one, many = work / "score-1", work / f"score-{a.gpus}"
    for d in (one, many):
        shutil.copytree(scoring, d, ignore=shutil.ignore_patterns("made.json"))
    steps = [run_step(clock, "score-1", [sys.executable, "-m", "evalkit", "score", str(one)] + opts, logs,
                      {} if a.cpu else {"CUDA_VISIBLE_DEVICES": "0"}, ("RANK", "WORLD_SIZE"))]
    if clock.left() > 0:
        steps.append(run_step(clock, f"score-{a.gpus}", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                         f"--nproc-per-node={a.gpus}", "-m", "evalkit", "score",
                                                         str(many)] + opts, logs, {}, ("RANK", "WORLD_SIZE")))
    else:
        steps.append(not_started(f"score-{a.gpus}", "the deadline came first"))
    return {"input": info, "metrics": metrics, "steps": steps, "agreement": compare_scores(one, many)}


if __name__ == "__main__":
    sys.exit(main())

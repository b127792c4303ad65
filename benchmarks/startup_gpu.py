"""A work unit's start-up on a GPU machine, with and without the GPU preload (#25 item 7), side by side.

    python3 benchmarks/startup_gpu.py --out $OUT/startup [--families flux1,qwen-image] [--rounds 2] [--budget-s 480]

1. Probe, per family, in a fresh interpreter: the forkserver's GPU preload (evalkit.generate.worker.gpu_preload)
   of that family's modules, then a forked child that must find CUDA usable (torch's bad-fork flag, and a real
   allocation, which fails with "initialization error" when some library called the driver before the fork).
2. Side by side: `evalkit generate --model tiny:FAMILY --device cuda` over the same backends with
   EVALKIT_GPU_PRELOAD=narrow (the forkserver imports only the core: each unit imports the family's pipeline module,
   transformers and the libraries, and loads the tokenizers) and =full (the default), alternating which goes first
   round by round. Each record's `startup` (evalkit.generate.worker.startup) splits a unit's start-up into spawn,
   setup, CUDA context, imports and tokenizers. Start-up does not depend on the model's size (the imports, the CUDA
   context and the tokenizers are the same at full size), so tiny builds measure it without a 60-s build.

Writes startup-gpu.json and startup-gpu.md (tables) under --out, and each run's generation records.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ("spawn_s", "setup_s", "cuda_context_s", "imports_s", "tokenizers_s", "total_s")

PROBE = r"""
import json, os, sys, time
os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
t0 = time.perf_counter()
from evalkit.generate.worker.run import PRELOAD, gpu_deferred_modules
for m in PRELOAD:
    __import__(m)
core_s = time.perf_counter() - t0
from evalkit.generate.worker import gpu_preload
from evalkit.quantizers.registry import package_available
caps = gpu_preload.nvml_capabilities()
mods = [m for m in gpu_deferred_modules(sys.argv[1]) if package_available(m.split(".")[0])]
import torch, traceback
first_init = []
_lazy = torch.cuda._lazy_init
def _traced_lazy_init(*a, **k):  # where CUDA gets initialized during the preload, if it does
    if not torch.cuda.is_initialized() and not first_init:
        first_init.append("".join(traceback.format_stack()[-9:-1])[-2500:])
    return _lazy(*a, **k)
torch.cuda._lazy_init = _traced_lazy_init
t1 = time.perf_counter()
done = gpu_preload.preload({"modules": mods}, gpu_preload.uniform_capability(caps), lambda line: None)
preload_s = time.perf_counter() - t1
torch.cuda._lazy_init = _lazy
out = {"family": sys.argv[1], "nvml_capabilities": caps, "asked": mods, "imported": done,
       "core_s": round(core_s, 2), "preload_s": round(preload_s, 2),
       "parent_cuda_initialized": torch.cuda.is_initialized(), "first_init_from": first_init[:1]}
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    child = {"bad_fork": bool(torch.cuda._is_in_bad_fork())}
    try:
        t = time.perf_counter()
        x = torch.ones(4, device="cuda") * 2
        child.update(cuda_ok=float(x.sum()) == 8.0, context_s=round(time.perf_counter() - t, 2),
                     capability=list(torch.cuda.get_device_capability()))
    except Exception as e:
        child.update(cuda_ok=False, error=f"{type(e).__name__}: {str(e)[:300]}")
    os.write(w, json.dumps(child).encode())
    os._exit(0)
os.close(w)
data = b""
while chunk := os.read(r, 65536):
    data += chunk
os.waitpid(pid, 0)
out["child"] = json.loads(data or b"{}")
print("PROBE " + json.dumps(out))
"""


def probe(family: str, env: dict[str, str]) -> dict:
    p = subprocess.run([sys.executable, "-c", PROBE, family], capture_output=True, text=True, env=env, cwd=REPO,
                       timeout=300)
    for line in p.stdout.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[6:])
    return {"family": family, "error": (p.stderr or p.stdout)[-1500:], "rc": p.returncode}


def one_run(family: str, mode: str, backends: str, prompts: Path, out: Path, env: dict[str, str],
            device: str = "cuda") -> dict:
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "evalkit", "generate", str(prompts), "--model", f"tiny:{family}",
                        "--device", device, "--backends", backends, "--out", str(out)],
                       capture_output=True, text=True, env={**env, "EVALKIT_GPU_PRELOAD": mode}, cwd=REPO,
                       timeout=600)
    wall = time.perf_counter() - t
    units = []
    for b in backends.split(","):
        f = out / "generation" / f"{b}.json"
        rec = json.loads(f.read_text()) if f.is_file() else {}
        for rank in rec.get("ranks") or []:
            units.append({"backend": b, "status": rec.get("status"), "started_utc": rank.get("started_utc"),
                          "load_time_s": rank.get("load_time_s"), **(rank.get("startup") or {})})
        if not rec.get("ranks"):
            units.append({"backend": b, "status": rec.get("status"), "reason": rec.get("reason")})
    log = out / "logs" / "generate.log"
    gpu_lines = [ln for ln in (log.read_text(errors="replace").splitlines() if log.is_file() else [])
                 if "gpu preload" in ln]
    return {"family": family, "mode": mode, "rc": p.returncode, "wall_s": round(wall, 2), "units": units,
            "gpu_preload_log": gpu_lines, "stderr_tail": p.stderr[-1500:] if p.returncode else ""}


def _med(xs: list) -> float | None:
    xs = [x for x in xs if isinstance(x, (int, float))]
    return round(statistics.median(xs), 2) if xs else None


def tables(result: dict) -> str:
    lines = [f"# A unit's start-up on {result['device']}, {result['date']}", "",
             f"Written by `benchmarks/startup_gpu.py` (tree {result['tree']}); backends {result['backends']}, "
             f"`--model tiny:FAMILY --device {result['device_arg']}`, 2 prompts. narrow = the forkserver imports "
             f"only the core (as before); full = it also imports the family's modules, transformers, the libraries "
             f"and the tokenizers under the NVML capability answer.", "",
             "## Fork safety of the GPU preload", "",
             "| family | modules imported | preload s | parent CUDA initialized | child bad fork | child CUDA ok "
             "| child context s |",
             "|---|---|---:|---|---|---|---:|"]
    for p in result["probes"]:
        c = p.get("child") or {}
        lines.append(f"| {p['family']} | {len(p.get('imported') or [])}/{len(p.get('asked') or [])} | "
                     f"{p.get('preload_s')} | {p.get('parent_cuda_initialized')} | {c.get('bad_fork')} | "
                     f"{c.get('cuda_ok')}{' ' + c['error'] if c.get('error') else ''} | {c.get('context_s')} |")
    lines += ["", "## Start-up per unit (medians over the units after each run's first; seconds)", "",
              "| family | preload | runs | run wall s (median) | first unit total | later units: " +
              " | ".join(PHASES) + " |", "|---|---|---:|---:|---:|" + "---:|" * len(PHASES)]
    for fam in result["families"]:
        for mode in ("narrow", "full"):
            runs = [r for r in result["runs"] if r["family"] == fam and r["mode"] == mode]
            if not runs:
                continue
            first = [min(r["units"], key=lambda u: u.get("started_utc") or "")
                     for r in runs if r["units"]]
            later = [u for r in runs for u in sorted(r["units"], key=lambda u: u.get("started_utc") or "")[1:]]
            lines.append(f"| {fam} | {mode} | {len(runs)} | {_med([r['wall_s'] for r in runs])} | "
                         f"{_med([u.get('total_s') for u in first])} | " +
                         " | ".join(str(_med([u.get(k) for u in later])) for k in PHASES) + " |")
    bad = [f"{r['family']} {r['mode']}: rc {r['rc']}" for r in result["runs"] if r["rc"]]
    bad += [f"{r['family']} {r['mode']} {u['backend']}: {u.get('status')} {u.get('reason') or ''}"
            for r in result["runs"] for u in r["units"] if u.get("status") != "ok"]
    if bad:
        lines += ["", "Not ok:", ""] + [f"- {b}" for b in bad]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--families", default="flux1,qwen-image")
    ap.add_argument("--probe-families", default="flux1,flux2,flux2-klein,qwen-image,z-image,sd3.5,sana,chroma")
    ap.add_argument("--backends", default="bf16,bnb-nf4,torchao-int8wo,gguf-q8_0")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cuda", help="cpu only to try the script out")
    ap.add_argument("--budget-s", type=float, default=480, help="start no run after this many seconds")
    a = ap.parse_args()
    t0 = time.time()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    import torch

    tree = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=REPO).stdout.strip()
    result = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "tree": tree or "(not a git checkout)",
              "torch": torch.__version__, "device_arg": a.device, "backends": a.backends,
              "families": a.families.split(","),
              "probes": [], "runs": []}

    def save() -> None:
        (out / "startup-gpu.json").write_text(json.dumps(result, indent=1))
        (out / "startup-gpu.md").write_text(tables(result))

    for fam in a.probe_families.split(","):
        result["probes"].append(probe(fam, env))
        pr = result["probes"][-1]
        print(fam, "parent CUDA initialized:", pr.get("parent_cuda_initialized"), "child:", pr.get("child"),
              pr.get("error", ""), *(pr.get("first_init_from") or []), flush=True)
        save()
    prompts = REPO / "benchmarks" / "prompts-2.txt"
    work = Path(tempfile.mkdtemp(prefix="startup-"))
    for fam in result["families"]:  # build each tiny model before any timing
        subprocess.run([sys.executable, "-c", "import sys; from evalkit.families.registry import resolve_model as r; "
                        "r(sys.argv[1], sys.argv[2])", f"tiny:{fam}", a.device], env=env, cwd=REPO, check=False)
    for rnd in range(a.rounds):
        for fam in result["families"]:
            for mode in (("narrow", "full") if rnd % 2 == 0 else ("full", "narrow")):
                if time.time() - t0 > a.budget_s:
                    print(f"budget reached: no {fam} {mode} round {rnd}", flush=True)
                    continue
                run_dir = work / f"{fam}-{mode}-{rnd}"
                r = one_run(fam, mode, a.backends, prompts, run_dir, env, a.device)
                r["round"] = rnd
                result["runs"].append(r)
                keep = out / "runs" / run_dir.name / "generation"
                keep.mkdir(parents=True, exist_ok=True)
                for f in (run_dir / "generation").glob("*.json"):
                    shutil.copy(f, keep / f.name)
                print(f"{fam} {mode} round {rnd}: rc {r['rc']} wall {r['wall_s']} s; totals "
                      f"{[u.get('total_s') for u in r['units']]}", flush=True)
                save()
    save()
    print(tables(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

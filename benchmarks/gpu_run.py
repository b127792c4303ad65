"""GPU runs of the generate stage, driven through the real CLI, for the device machine.

    python benchmarks/gpu_run.py tiny  [--backends ...]     every backend and modifier on the tiny model, CUDA
    python benchmarks/gpu_run.py full  --backends ...       full-size FLUX.1-dev architecture, random weights

Each phase writes `<phase>.json` (the run's summary plus per-backend quantization proof) and `<phase>.md`
(a table) to $OUT (or ./gpu-out), and tars the run's small files (manifest, records, logs) beside them.
Results are copied into benchmarks/results/ by hand with the date and device.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TINY_ALL = ("bf16,bnb-4bit,bnb-nf4,bnb-nf4-dq,bnb-8bit,torchao-int4wo,torchao-int8wo,torchao-fp8wo,torchao-int8dq,"
            "torchao-fp8dq,quanto-int8,quanto-fp8,gguf-q2_k,gguf-q4_1,gguf-q8_0,fp8-layerwise,"
            "bf16+offload,bf16+group-offload,bnb-nf4+offload,torchao-int8wo+group-offload,fp8-layerwise+offload,"
            "quanto-int8+offload,gguf-q8_0+group-offload,bnb-8bit+offload,"
            # Slow first uses last, so a budget cut loses the fewest backends: compilation and quanto's int4 kernels.
            "bf16+compile,torchao-int8wo+compile,bnb-nf4+compile+offload,quanto-int4")


def sh(cmd: list[str], **kw) -> int:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, **kw).returncode


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("phase", choices=["tiny", "full"])
    ap.add_argument("--backends")
    ap.add_argument("--prompts", default=str(REPO / "prompts" / "styles.txt"))
    ap.add_argument("--steps", type=int)
    ap.add_argument("--size", type=int)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--budget-s", type=float, default=480,
                    help="stop generating after this long and still write what finished (device calls are capped)")
    ap.add_argument("--name", help="name of the output files and run directory (default: the phase)")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[])
    a = ap.parse_args()
    out = Path(os.environ.get("OUT", "gpu-out"))
    out.mkdir(parents=True, exist_ok=True)
    out_name = a.name or a.phase
    run_dir = Path(os.environ.get("EVALKIT_RUNS", "/tmp/evalkit-runs")) / out_name
    model = "tiny" if a.phase == "tiny" else "random:flux-dev"
    backends = a.backends or (TINY_ALL if a.phase == "tiny" else "bf16")
    cmd = [sys.executable, "-m", "evalkit", "generate", a.prompts, "--model", model, "--device", "cuda",
           "--backends", backends, "--out", str(run_dir), "--warmup", str(a.warmup)]
    if a.steps:
        cmd += ["--steps", str(a.steps)]
    if a.size:
        cmd += ["--height", str(a.size), "--width", str(a.size)]
    cmd += a.extra
    t0 = time.time()
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)
    try:
        rc = proc.wait(timeout=a.budget_s)
    except subprocess.TimeoutExpired:
        import signal

        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = -9
        print(f"budget of {a.budget_s:.0f} s reached: generation stopped; writing what finished", flush=True)
    wall = time.time() - t0
    if rc == -9:
        subprocess.run([sys.executable, "-c", f"from evalkit.rundir import write_summary; write_summary({str(run_dir)!r})"],
                       cwd=REPO)

    summary = json.loads((run_dir / "summary.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    rows = []
    for name in manifest["backends"]:
        rec_path = run_dir / "generation" / f"{name}.json"
        rec = json.loads(rec_path.read_text()) if rec_path.exists() else {}
        q = rec.get("quantization") or {}
        fp = rec.get("footprint") or {}
        mem = rec.get("memory") or {}
        lat = rec.get("latency") or {}
        rows.append({
            "backend": name, "status": rec.get("status"), "reason": rec.get("reason"),
            "components_quantized": q.get("components_quantized"), "quantized_linear_count": q.get("quantized_linear_count"),
            "layer_types": q.get("layer_types"), "footprint_gib": fp.get("total_gib"),
            "load_time_s": rec.get("load_time_s"), "compile_time_s": rec.get("compile_time_s"),
            "prepare_s": (rec.get("prepare") or {}).get("seconds"),
            "after_load_allocated_gib": mem.get("after_load_allocated_gib"),
            "after_load_reserved_gib": mem.get("after_load_reserved_gib"),
            "load_peak_reserved_gib": mem.get("load_peak_reserved_gib"),
            "peak_allocated_gib": mem.get("peak_allocated_gib"), "peak_reserved_gib": mem.get("peak_reserved_gib"),
            "latency_median_s": lat.get("median_s"), "latency_iqr_s": lat.get("iqr_s"), "latency_n": lat.get("n"),
            "image_flags": summary["backends"].get(name, {}).get("image_flags"),
            # bf16 check: steady-state allocated memory vs the bytes of every parameter and buffer.
            "after_load_alloc_over_footprint": (mem["after_load_allocated_gib"] / fp["total_gib"])
            if mem.get("after_load_allocated_gib") and fp.get("total_gib") else None,
        })
    result = {"phase": a.phase, "command": cmd, "rc": rc, "wall_s": wall, "device": manifest["device"],
              "versions": manifest["versions"], "generation": manifest["generation"], "model": manifest["model"],
              "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}
    (out / f"{out_name}.json").write_text(json.dumps(result, indent=1))

    def f(v, d=2):
        return "-" if v is None else f"{v:.{d}f}"

    lines = [f"# {a.phase}: {manifest['model']['spec']} on {manifest['device'].get('name')} "
             f"({manifest['generation']['height']}², {manifest['generation']['num_inference_steps']} steps), "
             f"{result['date_utc']}", "",
             "| backend | status | quantized linears | footprint GiB | load s | after-load alloc / reserved GiB | "
             "load peak reserved GiB | peak alloc / reserved GiB | latency median s | compile s | prepare s | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ql = ", ".join(f"{k}:{v}" for k, v in (r["quantized_linear_count"] or {}).items() if v)
        lines.append(f"| {r['backend']} | {r['status']} | {ql or '-'} | {f(r['footprint_gib'])} | {f(r['load_time_s'], 1)} | "
                     f"{f(r['after_load_allocated_gib'])} / {f(r['after_load_reserved_gib'])} | {f(r['load_peak_reserved_gib'])} | "
                     f"{f(r['peak_allocated_gib'])} / {f(r['peak_reserved_gib'])} | {f(r['latency_median_s'], 3)} | "
                     f"{f(r['compile_time_s'], 1)} | {f(r['prepare_s'], 1)} | {(r['reason'] or '')[:160]} |")
    (out / f"{out_name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    with tarfile.open(out / f"{out_name}-run.tar.gz", "w:gz") as tar:
        for sub in ("manifest.json", "summary.json", "generation", "logs"):
            p = run_dir / sub
            if p.exists():
                tar.add(p, arcname=f"{out_name}/{sub}")
        # A few images of the reference and one quantized backend, as proof they exist.
        for img in sorted((run_dir / "images").glob("*/*.png"))[:12]:
            if img.stat().st_size < 3_000_000:
                tar.add(img, arcname=f"{out_name}/{img.relative_to(run_dir)}")
    return rc


if __name__ == "__main__":
    sys.exit(main())

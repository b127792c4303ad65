"""Why a `+compile` row does not finish: compile one backend's Flux transformer at full width but few blocks, and
write down what torch._dynamo and inductor did (graphs, graph breaks, recompilations and their reasons, time of
the first call and of the steady calls), with a stack dump if it is still compiling at its time limit.

    python3 benchmarks/compile_probe.py --out DIR --backends bf16,torchao-int8wo,torchao-fp8wo,torchao-int4wo \
        [--depth 2:4] [--preset regional] [--timeout-s 150] [--parallel 4] [--torchao-path NAME=DIR ...] \
        [--woq-int8pack off|on|both]

Each (backend, torchao build) is a child process of its own (dynamo's state is per process), run `--parallel` at a
time on the one GPU: the counts are exact, the times are upper bounds when children share the CPU. The weights are
random, saved once and loaded through evalkit's own recipe (`BACKENDS[name].make_config`) with diffusers'
`from_pretrained`, as the worker loads them. The inputs have FLUX.1-dev's shapes at 1024x1024 (4,096 image and 512
text tokens). Regional compile compiles one block of each kind and reuses it for every block, so its time should not
depend on the depth; a time that grows with the depth, or recompilations, say the reuse failed.

Writes DIR/probe.json (one entry per child) and DIR/<child>.log (its stderr, TORCH_LOGS=recompiles,graph_breaks).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> None:
    import faulthandler

    import torch

    # Where it is stuck if it is still compiling near the limit: every thread's Python stack, then again later.
    faulthandler.dump_traceback_later(max(5.0, args.timeout_s - 15), repeat=True)
    from diffusers import FluxTransformer2DModel

    from evalkit.families.flux1 import FAMILY, TRANSFORMER
    from evalkit.generate.worker.compile_options import PRESETS, apply_compile, dynamo_stats, prepare_compile_cache
    from evalkit.quantizers.base import BuildContext
    from evalkit.quantizers.registry import BACKENDS, quantizer_for

    dev = args.device
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    t0 = time.perf_counter()
    out: dict = {"backend": args.backend, "depth": args.depth, "preset": args.preset, "torch": torch.__version__}
    double, single = (int(x) for x in args.depth.split(":"))
    model_dir = Path(args.model_dir) / f"d{double}-s{single}"
    # --device cpu: a dry run of this script on the tiny transformer's widths (no GPU here)
    base = TRANSFORMER if dev == "cuda" else FAMILY.tiny_configs["transformer"]
    cfg = dict(base, num_layers=double, num_single_layers=single)
    lock = model_dir.with_suffix(".building")
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL)  # one child builds, the others wait for it
        os.close(fd)
        torch.manual_seed(0)
        with torch.device(dev):
            FluxTransformer2DModel(**cfg).to(torch.bfloat16).save_pretrained(model_dir / "transformer")
        (model_dir / "done").touch()
    except FileExistsError:
        while not (model_dir / "done").exists():
            time.sleep(1)
    spec = BACKENDS[args.backend]
    ctx = BuildContext(device=dev, capability=torch.cuda.get_device_capability() if dev == "cuda" else None,
                       model_path=str(model_dir), options=dict(spec.options), cache_dir=args.cache, family=FAMILY.key)
    qcfg = quantizer_for(spec).config(spec, FAMILY.denoiser, ctx)
    try:
        import torchao

        out["torchao"] = torchao.__version__
    except ImportError:
        out["torchao"] = None
    # Quantize where the worker does: on the GPU (tinygemm's int4 packing has no CPU kernel).
    model = FluxTransformer2DModel.from_pretrained(model_dir, subfolder="transformer", torch_dtype=torch.bfloat16,
                                                   quantization_config=qcfg,
                                                   device_map=dev if dev == "cuda" else None).to(dev)
    out["load_s"] = time.perf_counter() - t0
    out["weight_types"] = sorted({type(m.weight).__name__ for m in model.modules() if isinstance(m, torch.nn.Linear)})

    class Pipe:  # apply_compile reads the component off a pipeline-like object
        transformer = model

    out["cache"] = prepare_compile_cache(args.cache)
    # --woq-int8pack on: torch's own rewrite of int8 weight-only matmuls to aten._weight_int8pack_mm on CUDA
    out["compile"] = apply_compile(Pipe, replace(PRESETS[args.preset], woq_int8pack=args.woq_int8pack == "on"))
    g = torch.Generator(dev).manual_seed(0)
    img, txt = (4096, 512) if dev == "cuda" else (64, 16)
    bf = torch.bfloat16
    kw = dict(
        hidden_states=torch.randn(1, img, cfg["in_channels"], device=dev, dtype=bf, generator=g),
        encoder_hidden_states=torch.randn(1, txt, cfg["joint_attention_dim"], device=dev, dtype=bf, generator=g),
        pooled_projections=torch.randn(1, cfg["pooled_projection_dim"], device=dev, dtype=bf, generator=g),
        timestep=torch.tensor([1.0], device=dev, dtype=bf),
        img_ids=torch.zeros(img, 3, device=dev), txt_ids=torch.zeros(txt, 3, device=dev),
        guidance=torch.tensor([3.5], device=dev) if cfg.get("guidance_embeds") else None, return_dict=False)
    times = []
    with torch.no_grad():
        for i in range(4):
            sync()
            t = time.perf_counter()
            model(**kw)
            sync()
            times.append(time.perf_counter() - t)
            print(f"call {i}: {times[-1]:.3f} s", file=sys.stderr, flush=True)
    faulthandler.cancel_dump_traceback_later()
    out.update(first_call_s=times[0], steady_call_s=sorted(times[1:])[1], dynamo=dynamo_stats(),
               inductor={k: int(v) for k, v in torch._dynamo.utils.counters.get("inductor", {}).items()},
               total_s=time.perf_counter() - t0)
    Path(args.result).write_text(json.dumps(out, indent=1))


def parent(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for backend in args.backends.split(","):
        for tag, path in [("", None)] + [tuple(x.split("=", 1)) for x in args.torchao_path]:
            if tag and not backend.startswith("torchao"):
                continue
            for woq in (("off", "on") if args.woq_int8pack == "both" else (args.woq_int8pack,)):
                if woq == "on" and args.woq_int8pack == "both" and not backend.startswith("torchao-int8"):
                    continue  # the rewrite only matches int8 weights
                jobs.append((backend, tag, path, woq))
    results, running = [], []

    def start(job):
        backend, tag, path, woq = job
        name = f"{backend}{'@' + tag if tag else ''}-{args.preset}{'-int8pack' if woq == 'on' else ''}-" \
               f"{args.depth.replace(':', 'x')}"
        env = dict(os.environ, TORCH_LOGS="recompiles,graph_breaks", PYTHONUNBUFFERED="1")
        if path:
            env["PYTHONPATH"] = f"{path}:{env.get('PYTHONPATH', '')}"
        cmd = [sys.executable, __file__, "--child", "--device", args.device, "--backend", backend, "--depth", args.depth, "--preset",
               args.preset, "--woq-int8pack", woq, "--timeout-s", str(args.timeout_s), "--model-dir", args.model_dir, "--cache", args.cache,
               "--result", str(out / f"{name}.json")]
        log = open(out / f"{name}.log", "w")
        return name, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True), \
            time.time(), log

    queue = list(jobs)
    while queue or running:
        while queue and len(running) < args.parallel:
            running.append(start(queue.pop(0)))
        time.sleep(1)
        for item in list(running):
            name, proc, started, log = item
            over = time.time() - started > args.timeout_s
            if proc.poll() is None and not over:
                continue
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
            log.close()
            res = out / f"{name}.json"
            entry = json.loads(res.read_text()) if res.exists() else \
                {"name": name, "status": f"killed at the {args.timeout_s:.0f} s limit" if over else f"exit {proc.returncode}"}
            entry.update(name=name, wall_s=round(time.time() - started, 1), status=entry.get("status", "ok"))
            results.append(entry)
            running.remove(item)
            print(json.dumps({k: entry.get(k) for k in ("name", "status", "wall_s", "first_call_s", "steady_call_s",
                                                         "weight_types")}), flush=True)
            if entry.get("dynamo"):
                print("   dynamo:", json.dumps(entry["dynamo"])[:600], flush=True)
    (out / "probe.json").write_text(json.dumps({"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                                "args": vars(args), "results": results}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/compile-probe")
    ap.add_argument("--backends", default="bf16,torchao-int8wo,torchao-fp8wo,torchao-int4wo")
    ap.add_argument("--depth", default="2:4", help="double:single blocks (FLUX.1-dev has 19:38)")
    ap.add_argument("--preset", default="regional")
    ap.add_argument("--timeout-s", type=float, default=150)
    ap.add_argument("--woq-int8pack", choices=("off", "on", "both"), default="off",
                    help="on: let inductor rewrite int8 weight-only matmuls to aten._weight_int8pack_mm (torch's "
                         "choice); off: evalkit's default guard; both: torchao-int8* children run each way")
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--torchao-path", action="append", default=[],
                    help="TAG=DIR: also run each torchao backend with the torchao installed in DIR first on the path")
    ap.add_argument("--model-dir", default="/tmp/compile-probe-model")
    ap.add_argument("--cache", default=os.environ.get("EVALKIT_CACHE", "/tmp/ekc"))
    ap.add_argument("--device", default="cuda", help="cpu: a dry run on the tiny transformer's widths")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--backend")
    ap.add_argument("--result")
    args = ap.parse_args()
    child(args) if args.child else parent(args)


if __name__ == "__main__":
    main()

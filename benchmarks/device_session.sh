#!/usr/bin/env bash
# One device-tool call, as steps (see benchmarks/README.md). Carry .whl (and .gl for `metrics`):
#
#   bash benchmarks/device_session.sh gen SECONDS   full-size backends on random:flux-dev while optimum-quanto's
#                                                   CUDA kernels build in the background, then quanto-int4 on the
#                                                   tiny model; SECONDS is this step's whole budget
#   bash benchmarks/device_session.sh metrics       benchmarks/gpu_metrics.py (LPIPS parity vs lpips.LPIPS, SSIM vs
#                                                   skimage, pairs/s at 1024² vs a naive loop)
#   bash benchmarks/device_session.sh profile       benchmarks/gpu_profile_metrics.py (where the metric time goes)
#   bash benchmarks/device_session.sh metrics-fast  the same, throughput only, after timing SSIM's filter methods
#   bash benchmarks/device_session.sh forkcheck     generate on CUDA through the forkserver, count fallbacks
#   bash benchmarks/device_session.sh probe         which preloaded module initializes CUDA (forkserver safety)
#   bash benchmarks/device_session.sh quanto SECONDS  optimum-quanto's kernel build, then quanto-int4 on the tiny model
#   bash benchmarks/device_session.sh tests         the tests that need CUDA or torchvision (open_clip, gguf on CUDA)
#
# Steps combine: `bash benchmarks/device_session.sh metrics tests`. Everything lands in $OUT (at most 8 files come
# back from a call, so logs go into one session.log).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
LOG=$OUT/session.log
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }

# Install the carried wheels once per machine (a warm machine keeps /tmp/site, and with it quanto's kernel build).
if [ ! -e /tmp/site/.evalkit-wheels ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >>"$LOG" 2>&1 || { say "wheel install failed"; exit 3; }
  touch /tmp/site/.evalkit-wheels
  say "wheels installed"
fi
export PYTHONPATH=/tmp/site:$PWD EVALKIT_CACHE=/tmp/ekc HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >>"$LOG" 2>&1

# optimum-quanto JIT-builds its CUDA kernels on first use (once per install, minutes): start that in the background.
start_quanto_build() {
  ( s=$(date +%s)
    python3 -c "from optimum.quanto.library.extensions import get_extension as g; g('quanto_cuda').lib"
    echo "quanto_cuda build rc=$? seconds=$(( $(date +%s) - s ))" ) >/tmp/quanto_build.log 2>&1 &
  BUILD_PID=$!
  say "quanto kernel build started (pid $BUILD_PID)"
}

step_gen() {
  local budget=$1 start now
  start=$(date +%s)
  # In parallel with the full-size runs; evalkit's quanto-int4 worker then finds the kernels built (or waits on
  # torch's build lock).
  start_quanto_build
  local build=$BUILD_PID
  python3 benchmarks/gpu_run.py full --prompts benchmarks/prompts-2.txt --budget-s $(( budget - 50 )) \
    --backends bf16,fp8-layerwise,torchao-int4wo,quanto-int8,gguf-q8_0,quanto-int4 >>"$LOG" 2>&1
  say "full-size step done"
  now=$(date +%s)
  while kill -0 $build 2>/dev/null && [ $(( now - start )) -lt $(( budget - 30 )) ]; do sleep 5; now=$(date +%s); done
  say "$(tail -n 1 /tmp/quanto_build.log)"
  now=$(date +%s)
  python3 benchmarks/gpu_run.py tiny --name tiny-quanto --budget-s $(( budget - (now - start) - 15 )) \
    --backends bf16,quanto-int4 >>"$LOG" 2>&1
  say "tiny quanto-int4 step done"
  { echo "--- quanto build log (tail)"; tail -n 40 /tmp/quanto_build.log; } >>"$LOG"
}

step_metrics() {
  timeout 300 python3 benchmarks/gpu_metrics.py --weights-dir .gl >>"$LOG" 2>&1
  say "metrics benchmark rc=$?"
}

step_profile() {
  timeout 240 python3 benchmarks/gpu_profile_metrics.py --weights-dir .gl >>"$LOG" 2>&1
  say "metrics profile rc=$?"
}

step_probe() {
  # Which module, imported the way the generate stage's forkserver imports them, initializes CUDA?
  python3 - >>"$LOG" 2>&1 <<'PY'
import importlib, time
import torch
from evalkit.generate.worker import PRELOAD, PRELOAD_NO_GPU
for m in PRELOAD + PRELOAD_NO_GPU:
    t = time.perf_counter()
    try:
        importlib.import_module(m)
    except Exception as e:
        print(f"probe {m}: import failed: {type(e).__name__}: {e}")
        continue
    print(f"probe {m}: {time.perf_counter() - t:.2f}s cuda_initialized={torch.cuda.is_initialized()}")
PY
  say "probe done"
}

step_quanto() {
  local budget=$1 start now
  start=$(date +%s)
  start_quanto_build
  local build=$BUILD_PID
  python3 -c "from evalkit.generate.models import ensure_tiny_pipeline as e; e()" >>"$LOG" 2>&1
  wait $build
  say "$(tail -n 1 /tmp/quanto_build.log)"
  now=$(date +%s)
  python3 benchmarks/gpu_run.py tiny --name tiny-quanto --budget-s $(( budget - (now - start) )) \
    --backends bf16,quanto-int4 >>"$LOG" 2>&1
  say "tiny quanto-int4 step done"
}

step_metrics_fast() {
  timeout 240 python3 benchmarks/gpu_metrics.py --weights-dir .gl --skip-parity --ssim-variants >>"$LOG" 2>&1
  say "metrics (throughput only, SSIM filter variants) rc=$?"
  cp "$OUT/gpu_metrics.json" "$OUT/gpu_metrics_stage_settings.json" 2>/dev/null
  timeout 120 python3 benchmarks/gpu_metrics.py --weights-dir .gl --skip-parity --cudnn-benchmark --batches 32 \
    >>"$LOG" 2>&1
  say "metrics with cuDNN's algorithm search rc=$?"
}

step_forkcheck() {
  # The generate stage's forkserver on a GPU machine: workers must run forked, with no fallback to subprocesses.
  local d=/tmp/evalkit-runs/forkcheck
  python3 -m evalkit generate prompts/styles.txt --model tiny --device cuda --backends bf16,torchao-int8wo \
    --warmup 0 --out $d >>"$LOG" 2>&1
  say "forkcheck rc=$? fallbacks=$(cat $d/logs/*.log | grep -c 'reruns it as a subprocess') statuses=$(python3 -c \
    "import json,glob; print({p.split('/')[-1]: json.load(open(p))['status'] for p in sorted(glob.glob('$d/generation/*.json'))})")"
}

step_tests() {
  timeout 400 python3 -m pytest -q -rs -p no:cacheprovider tests/test_metrics_open_clip.py \
    "tests/test_gguf.py::test_torch_quantizer_is_bit_exact_with_gguf" >>"$LOG" 2>&1
  say "tests rc=$?"
}

while [ $# -gt 0 ]; do
  case $1 in
    gen) step_gen "${2:?gen needs its budget in seconds}"; shift 2 ;;
    metrics) step_metrics; shift ;;
    profile) step_profile; shift ;;
    probe) step_probe; shift ;;
    metrics-fast) step_metrics_fast; shift ;;
    forkcheck) step_forkcheck; shift ;;
    quanto) step_quanto "${2:?quanto needs its budget in seconds}"; shift 2 ;;
    tests) step_tests; shift ;;
    *) say "unknown step $1"; exit 2 ;;
  esac
done
say "session done"

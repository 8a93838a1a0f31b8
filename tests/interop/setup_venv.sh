#!/usr/bin/env bash
# Creates (once) the Python environment of the interop tests, outside the repo:
# real PyTorch and Megatron-Core from PyPI. megatron-core 0.19 ships wheels for
# Python 3.12 only, so a python3.12 must exist (pyenv, Debian trixie, ...).
#   setup_venv.sh -> prints the venv's python path
set -euo pipefail
venv="${MEGABRIDGE_INTEROP_VENV:-$HOME/.cache/megabridge/venv-interop}"
pins=(torch "megatron-core==0.19.2" psutil numpy ml_dtypes safetensors)
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import torch, megatron.core, psutil, ml_dtypes' 2>/dev/null; then
  py=""
  for c in python3.12 "$HOME/.pyenv/versions/3.12"*/bin/python3.12; do
    if command -v "$c" >/dev/null 2>&1; then py="$(command -v "$c")"; break; fi
  done
  [ -n "$py" ] || { echo "interop: needs python3.12 for megatron-core 0.19 (none found)" >&2; exit 1; }
  "$py" -m venv "$venv" >&2
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q "${pins[@]}" >&2
fi
echo "$venv/bin/python"

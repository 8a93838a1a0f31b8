#!/usr/bin/env bash
# Creates (once, then cached) the Python environment of the interop tests, outside the
# repo: the real training stack from PyPI, pinned.
#   torch 2.15.0, megatron-core 0.19.2, transformers 5.12.1 (the version Megatron-Bridge
#   0.6.2 pins), megatron-bridge 0.6.2 installed --no-deps (its full dependency list pulls
#   TransformerEngine, flashinfer, wandb, mlflow, ... none of which its checkpoint import
#   path needs), plus the few packages that path does import (omegaconf, einops, rich) and
#   what the test scripts use (safetensors, numpy, ml_dtypes, psutil).
# megatron-core 0.19 ships wheels for Python 3.12 only: a python3.12 must exist (on PATH,
# pyenv, Debian trixie's python3.12, or MEGABRIDGE_PYTHON312=/path/to/python3.12).
#   setup_venv.sh -> prints the venv's python path
set -euo pipefail
venv="${MEGABRIDGE_INTEROP_VENV:-$HOME/.cache/megabridge/venv-interop2}"
pins=("torch==2.15.0" "megatron-core==0.19.2" "transformers==5.12.1"
      "omegaconf==2.3.0" "einops==0.8.2" rich safetensors numpy ml_dtypes psutil)
nodeps=("megatron-bridge==0.6.2")
stamp="${pins[*]} | --no-deps ${nodeps[*]}"

is_py312() { [ -n "$1" ] && "$1" -c 'import sys, venv; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; }
find_py312() {
  local c
  # a pyenv shim named python3.12 may exist and still fail: run each candidate
  for c in "${MEGABRIDGE_PYTHON312:-}" "$(command -v python3.12 || true)" \
           "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 \
           /usr/bin/python3.12 /usr/local/bin/python3.12 /opt/python*/bin/python3.12; do
    if is_py312 "$c"; then echo "$c"; return 0; fi
  done
  return 1
}

if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.megabridge-pins" 2>/dev/null)" != "$stamp" ] \
   || ! "$venv/bin/python" -c 'from importlib.metadata import version as v
for p in ("torch", "megatron-core", "megatron-bridge", "transformers", "omegaconf", "safetensors"): v(p)' \
        >/dev/null 2>&1; then
  if [ ! -x "$venv/bin/python" ]; then
    py="$(find_py312)" || { echo "interop: needs python3.12 for megatron-core 0.19 (none found;" \
                                 "set MEGABRIDGE_PYTHON312)" >&2; exit 1; }
    mkdir -p "$(dirname "$venv")"
    "$py" -m venv "$venv" >&2
    "$venv/bin/pip" install -q --upgrade pip >&2
  fi
  "$venv/bin/pip" install -q "${pins[@]}" >&2
  "$venv/bin/pip" install -q --no-deps "${nodeps[@]}" >&2
  echo "$stamp" >"$venv/.megabridge-pins"
fi
echo "$venv/bin/python"

#!/usr/bin/env bash
# Prepares a fresh Debian machine and builds megabridge:
#   1. installs the missing Debian packages (apt-get),
#   2. creates the Python test environment in .venv (pip),
#   3. configures and builds into build/.
# Idempotent: a second run only rebuilds what changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

packages=(cmake make g++ pkg-config git
  openmpi-bin libopenmpi-dev libhdf5-openmpi-dev
  libyaml-cpp-dev libfmt-dev nlohmann-json3-dev libcli11-dev libgtest-dev libxxhash-dev libisal-dev zlib1g-dev
  # the local Slurm cluster test (tests/slurm/local_slurm_test.sh; skipped without them)
  slurmctld slurmd slurm-client slurm-wlm-basic-plugins)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then missing+=(python3 python3-venv); fi
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import numpy, h5py, ml_dtypes, xxhash, yaml' 2>/dev/null; then
  echo "setup: creating the Python test environment in .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r tests/requirements.txt
fi

jobs="$(nproc 2>/dev/null || echo 2)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DMEGABRIDGE_TEST_PYTHON="$root/.venv/bin/python" >/dev/null
cmake --build build -j"$jobs"

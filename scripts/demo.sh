#!/usr/bin/env bash
# The main job on the bundled default: converts the tiny Qwen3.5 checkpoint in
# tests/data/qwen35-dense-tiny to Megatron-Core shards (TP2·PP2) with mpirun on
# 4 ranks, then lists where the shards went and a summary.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
mpirun --allow-run-as-root --oversubscribe -np 4 \
  build/apps/megabridge import --config configs/tiny-dense-demo.yaml --overwrite

#!/usr/bin/env bash
# Proof with real readers and writers (ctest -L interop):
#   1. megabridge's torch_dist output loads in torch.distributed.checkpoint (no
#      process group) and in Megatron-Core's dist_checkpointing, equal to values
#      computed independently from the HF fixture;
#   2. torch_dist checkpoints written by real PyTorch DCP and by Megatron-Core,
#      with other chunking, export with megabridge bit-exact to the fixture.
#   run_interop.sh BIN DATA_DIR
set -euo pipefail
bin="$1" data="$2"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="$("$here/setup_venv.sh")"
work="$(mktemp -d "${TMPDIR:-/tmp}/mb-interop-XXXXXX")"
trap 'rm -rf "$work"' EXIT
export PYTHONWARNINGS=ignore
run() { mpirun --allow-run-as-root --oversubscribe -np 2 "$bin" "$@"; }
for fixture in qwen35-dense-tiny qwen35-moe-tiny; do
  hf="$data/$fixture"
  run import --quiet --format torch_dist --hf-path "$hf" --out "$work/$fixture.mb" --tp 2 --pp 2
  "$py" "$here/torch_interop.py" load "$hf" "$work/$fixture.mb"
  for writer in torch mcore; do
    "$py" "$here/torch_interop.py" write "$hf" "$work/$fixture.$writer" "$writer"
    run export --quiet --megatron-path "$work/$fixture.$writer" --hf-path "$work/$fixture.$writer.hf" \
      --hf-config "$hf/config.json"
    "$py" "$here/../integration/compare_hf.py" "$hf" "$work/$fixture.$writer.hf" --any-file-map --no-side-files
    run verify "$hf" "$work/$fixture.$writer" | tail -1
  done
done
echo "OK: interop with torch $("$py" -c 'import torch; print(torch.__version__)') and megatron-core $("$py" -c 'import megatron.core as m; print(m.__version__)')"

#!/usr/bin/env bash
# Proof with the real training stack (ctest -L interop; docs/torch-dist.md):
#   A. Megatron-Bridge 0.6.2's own Qwen3.5-VL model (oracle.py), per layout: its
#      sharded_state_dict() keys, shapes, dtypes and chunks equal megabridge's .metadata;
#      megabridge's checkpoint loads strictly into it, bit-identical to Megatron-Bridge's
#      load_hf_weights; the checkpoint Megatron-Core saves of that model exports with
#      megabridge to the HF fixture (A_log and the GDN norm as Megatron-Bridge's bf16
#      rounding) and verifies. `--dtype model` output matches the model's dtypes too.
#   B. torch.distributed.checkpoint / dist_checkpointing read megabridge's output without a
#      model, against values computed independently from the HF fixture, and checkpoints of
#      the same keys written by PyTorch DCP and by Megatron-Core with other chunking export
#      bit-exact.
#   run_interop.sh BIN DATA_DIR
set -euo pipefail
bin="$1" data="$2"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="$("$here/setup_venv.sh")"
torchrun="$(dirname "$py")/torchrun"
work="$(mktemp -d "${TMPDIR:-/tmp}/mb-interop-XXXXXX")"
trap 'rm -rf "$work"' EXIT
export PYTHONWARNINGS=ignore OMP_NUM_THREADS=1
start=$SECONDS
run() { mpirun --allow-run-as-root --oversubscribe -np 2 "$bin" "$@"; }

# A. The model as the oracle. LAYOUT = name:tp,pp,ep,etp[:model]
oracle() {
  local fixture="$1"; shift
  local hf="$data/$fixture" dir="$work/$fixture" spec name sizes tp pp ep etp extra experts=()
  mkdir -p "$dir"
  for spec in "$@"; do
    IFS=: read -r name sizes extra <<<"$spec"
    IFS=, read -r tp pp ep etp <<<"$sizes"
    run import --quiet --format torch_dist --hf-path "$hf" --out "$dir/$name.mb" \
      --tp "$tp" --pp "$pp" --ep "$ep" --etp "$etp" ${extra:+--dtype "$extra"}
  done
  if ! "$torchrun" --nproc-per-node 2 --master-port "${MB_INTEROP_PORT:-29531}" \
      "$here/oracle.py" "$hf" "$dir" "$@" >"$dir/oracle.log" 2>&1; then
    grep -v -E 'Warning|warn\(' "$dir/oracle.log" | tail -60
    echo "FAILED: the Megatron-Bridge oracle on $fixture"
    exit 1
  fi
  grep '^ok' "$dir/oracle.log"
  [[ "$fixture" == *per-expert* ]] && experts=(--experts per_expert --mtp-experts per_expert)
  for spec in "$@"; do
    name="${spec%%:*}"
    run export --quiet --megatron-path "$dir/$name.mcore" --hf-path "$dir/$name.mcore.hf" \
      --hf-config "$hf/config.json" "${experts[@]}"
    "$py" "$here/compare_mcore_export.py" "$hf" "$dir/$name.mcore.hf"
    # bf16 A_log / norm against HF's fp32: within one bf16 rounding, everything else exact
    run verify --rtol 0.0079 "$hf" "$dir/$name.mcore" | tail -1
  done
}
oracle qwen35-dense-tiny dense-tp1:1,1,1,1 dense-tp2:2,1,1,1 dense-pp2:1,2,1,1
oracle qwen35-moe-tiny moe-tp1:1,1,1,1 moe-ep2:1,1,2,1 moe-tp2-etp2:2,1,1,2 moe-pp2:1,2,1,1 \
  moe-tp1-dtype-model:1,1,1,1:model
oracle qwen35-moe-tiny-per-expert moe-pe-tp1:1,1,1,1 moe-pe-ep2:1,1,2,1
echo "interop A (Megatron-Bridge model as the oracle): $((SECONDS - start)) s"

# B. Readers and writers without a model.
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
echo "OK: interop with torch $("$py" -c 'import torch; print(torch.__version__)'), megatron-core" \
  "$("$py" -c 'import megatron.core as m; print(m.__version__)'), megatron-bridge 0.6.2 in $((SECONDS - start)) s"

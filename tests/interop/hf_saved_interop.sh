#!/usr/bin/env bash
# transformers is the judge of an export (ctest -L interop): checkpoints as
# transformers' save_pretrained writes them (no mtp.* tensor although
# config.json declares MTP; per-expert and fused experts; all BF16) and the
# Qwen3.6 layout go through megabridge import -> export, in both formats and
# several layouts; the export must load with from_pretrained and give the
# original's parameters and logits bit for bit (hf_saved_interop.py).
#   hf_saved_interop.sh BIN DATA_DIR
# The Python with torch and transformers: $MEGABRIDGE_INTEROP_PYTHON, else the
# interop venv (setup_venv.sh).
set -euo pipefail
bin="$1" data="$2"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${MEGABRIDGE_INTEROP_PYTHON:-$("$here/setup_venv.sh")}"
"$py" -c 'import torch, transformers' || {
  echo "interop: $py has no torch/transformers (set MEGABRIDGE_INTEROP_PYTHON)" >&2
  exit 1
}
work="$(mktemp -d "${TMPDIR:-/tmp}/mb-hfsaved-interop-XXXXXX")"
trap 'rm -rf "$work"' EXIT
export PYTHONWARNINGS=ignore TRANSFORMERS_VERBOSITY=error
run() { mpirun --allow-run-as-root --oversubscribe -np 2 "$bin" "$@"; }
cases=(
  "hf-saved/dense hdf5 --tp 2 --pp 2"
  "hf-saved/dense torch_dist --pp 2"
  "hf-saved/moe-per-expert hdf5 --ep 2 --pp 2"
  "hf-saved/moe-per-expert torch_dist --tp 2 --ep 2 --etp 2"
  "hf-saved/moe-fused hdf5 --tp 2 --ep 2"
  "hf-saved/moe-fused torch_dist --ep 2 --pp 2"
  "qwen36-moe-tiny hdf5 --tp 2 --ep 2 --pp 2"
  "qwen36-moe-tiny torch_dist --ep 2"
)
i=0
for c in "${cases[@]}"; do
  read -r fixture format layout <<<"$c"
  i=$((i + 1))
  echo "== $fixture, $format $layout"
  # shellcheck disable=SC2086
  run import --quiet --format "$format" --hf-path "$data/$fixture" --out "$work/$i.meg" $layout 2>/dev/null
  run export --quiet --megatron-path "$work/$i.meg" --hf-path "$work/$i.hf"
  "$py" "$here/hf_saved_interop.py" "$data/$fixture" "$work/$i.hf"
done
echo "OK: ${#cases[@]} import/export round trips load in transformers $("$py" -c 'import transformers; print(transformers.__version__)') with bitwise-equal logits"

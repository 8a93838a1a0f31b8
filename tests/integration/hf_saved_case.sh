#!/usr/bin/env bash
# A checkpoint as transformers' save_pretrained writes it (config.json declares
# an MTP layer, the files hold no mtp.* tensor), end to end at one layout:
#   1. import (hdf5 or torch_dist): exactly one warning line says MTP is left out;
#   2. manifest, hf/config.json and the YAML record the model without MTP
#      (check_mtp_dropped.py, json/yaml only);
#   3. every tensor against the independent reference, told there is no MTP
#      (check_import.py / check_torch_dist.py --no-mtp); megabridge verify;
#   4. export: same tensors, bytes, dtypes and files as the source (one
#      model.safetensors without index stays so, byte for byte), config.json
#      with mtp_num_hidden_layers 0 (compare_hf.py --mtp-dropped); verify;
#      torch_dist: also without its manifest, read with the source config.json;
#   5. reshard to another layout = a direct import there, file by file, and
#      still recorded without MTP.
#   hf_saved_case.sh BIN PYTHON NP FIXTURE_DIR FORMAT "RESHARD FLAGS" [import layout flags...]
set -euo pipefail
bin="$1" python="$2" np="$3" fixture="$4" format="$5" reshard_flags="$6"
shift 6
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/mb-hfsaved-XXXXXX")"
trap 'rm -rf "$work"' EXIT
run() { mpirun --allow-run-as-root --oversubscribe -np "$np" "$bin" "$@"; }

run import --log-level warn --format "$format" --hf-path "$fixture" --out "$work/meg" "$@" 2>"$work/import.log" ||
  { cat "$work/import.log"; exit 1; }
n="$(grep -c 'converting the model without MTP' "$work/import.log" || true)"
[ "$n" = 1 ] || { echo "expected one warning about MTP, got $n:"; cat "$work/import.log"; exit 1; }
grep 'without MTP' "$work/import.log"
"$python" "$here/check_mtp_dropped.py" "$fixture" "$work/meg"

if [ "$format" = hdf5 ]; then
  args=()
  while (($#)); do
    case "$1" in
      --first-stage-layers) args+=(--first "$2"); shift 2 ;;
      --last-stage-layers) args+=(--last "$2"); shift 2 ;;
      *) args+=("$1"); shift ;;
    esac
  done
  "$python" "$here/check_import.py" "$fixture" "$work/meg" --no-mtp "${args[@]}"
else
  "$python" "$here/check_torch_dist.py" "$fixture" "$work/meg" --no-mtp
fi
run verify "$fixture" "$work/meg" | tail -1

run export --quiet --megatron-path "$work/meg" --hf-path "$work/back"
"$python" "$here/compare_hf.py" "$fixture" "$work/back" --mtp-dropped --no-side-files
for f in "$fixture"/*.safetensors; do
  cmp "$f" "$work/back/$(basename "$f")"  # the whole file: header, order, padding
done
run verify "$fixture" "$work/back" | tail -1
if [ "$format" = torch_dist ]; then
  # The same checkpoint as another tool would leave it (no megabridge manifest),
  # read with the source's config.json, which declares MTP: no MTP key, so the
  # model without MTP, exported as such.
  cp -r "$work/meg" "$work/foreign"
  rm "$work/foreign/manifest.json"
  experts=()  # a foreign checkpoint does not know the HF expert layout: say it
  if grep -q 'mlp\.experts\.0\.gate_proj' "$fixture"/*.safetensors; then experts=(--experts per_expert); fi
  run export --quiet --megatron-path "$work/foreign" --hf-path "$work/foreign.hf" \
    --hf-config "$fixture/config.json" "${experts[@]}" 2>"$work/foreign.log"
  grep -q 'holds no MTP key: exporting the model without MTP' "$work/foreign.log"
  "$python" "$here/compare_hf.py" "$fixture" "$work/foreign.hf" --mtp-dropped --any-file-map --no-side-files
fi

# shellcheck disable=SC2086
run reshard --quiet --megatron-path "$work/meg" --out "$work/resharded" $reshard_flags
# shellcheck disable=SC2086
run import --quiet --hf-path "$fixture" --out "$work/direct" $reshard_flags
count=0
for f in "$work"/direct/*.h5; do
  cmp "$f" "$work/resharded/$(basename "$f")"
  count=$((count + 1))
done
test "$(ls "$work"/resharded/*.h5 | wc -l)" -eq "$count"
"$python" "$here/check_mtp_dropped.py" "$fixture" "$work/resharded"
run verify "$fixture" "$work/resharded" | tail -1
echo "OK: $format import without MTP, export byte-identical, reshard = direct import ($count files)"

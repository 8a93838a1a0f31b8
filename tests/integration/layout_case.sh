#!/usr/bin/env bash
# One layout case, end to end:
#   1. import the fixture with mpirun at the layout;
#   2. check every shard against the independent reference (check_import.py);
#   3. megabridge verify HF vs the shards;
#   4. export back to HF and compare with the original, byte for byte
#      (compare_hf.py) and with megabridge verify.
#   layout_case.sh BIN PYTHON NP FIXTURE_DIR [megabridge import flags...]
set -euo pipefail
bin="$1" python="$2" np="$3" fixture="$4"
shift 4
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/mb-layout-XXXXXX")"
trap 'rm -rf "$work"' EXIT
run() { mpirun --allow-run-as-root --oversubscribe -np "$np" "$bin" "$@"; }

run import --quiet --hf-path "$fixture" --out "$work/meg" "$@"
test ! -e "$work/meg.partial" || { echo "staging directory left behind"; exit 1; }
args=()  # the checker spells the layout flags shorter
while (($#)); do
  case "$1" in
    --first-stage-layers) args+=(--first "$2"); shift 2 ;;
    --last-stage-layers) args+=(--last "$2"); shift 2 ;;
    --read-once) shift ;;
    *) args+=("$1"); shift ;;
  esac
done
"$python" "$here/check_import.py" "$fixture" "$work/meg" "${args[@]}"
run verify "$fixture" "$work/meg" | tail -1

run export --quiet --megatron-path "$work/meg" --hf-path "$work/back"
"$python" "$here/compare_hf.py" "$fixture" "$work/back"
run verify "$fixture" "$work/back" | tail -1

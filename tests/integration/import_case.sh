#!/usr/bin/env bash
# One MPI integration case: import a fixture with mpirun at a layout, then check
# every shard against the independent reference (check_import.py).
#   import_case.sh BIN PYTHON NP FIXTURE_DIR [megabridge import flags...]
set -euo pipefail
bin="$1" python="$2" np="$3" fixture="$4"
shift 4
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/mb-import-XXXXXX")"
trap 'rm -rf "$work"' EXIT
mpirun --allow-run-as-root --oversubscribe -np "$np" \
  "$bin" import --quiet --hf-path "$fixture" --out "$work/out" "$@"
test ! -e "$work/out.partial" || { echo "staging directory left behind"; exit 1; }
# The checker takes the same layout flags, spelled shorter.
args=()
while (($#)); do
  case "$1" in
    --first-stage-layers) args+=(--first "$2"); shift 2 ;;
    --last-stage-layers) args+=(--last "$2"); shift 2 ;;
    --dtype) args+=(--dtype "$2"); shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
"$python" "$here/check_import.py" "$fixture" "$work/out" "${args[@]}"

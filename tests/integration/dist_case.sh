#!/usr/bin/env bash
# One torch_dist case: import in torch_dist format at a layout, check the
# checkpoint with the standard library against the independent reference
# (check_torch_dist.py), verify, export and compare with the original byte for
# byte, and reshard it to HDF5 shards that must equal a direct import.
#   dist_case.sh BIN PYTHON NP FIXTURE_DIR [import layout flags...]
set -euo pipefail
bin="$1" python="$2" np="$3" fixture="$4"
shift 4
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/mb-dist-XXXXXX")"
trap 'rm -rf "$work"' EXIT
run() { mpirun --allow-run-as-root --oversubscribe -np "$np" "$bin" "$@"; }

run import --quiet --format torch_dist --hf-path "$fixture" --out "$work/dist" "$@"
"$python" "$here/check_torch_dist.py" "$fixture" "$work/dist"
run verify "$fixture" "$work/dist" | tail -1
run export --quiet --megatron-path "$work/dist" --hf-path "$work/back"
"$python" "$here/compare_hf.py" "$fixture" "$work/back"
run reshard --quiet --megatron-path "$work/dist" --out "$work/resharded" --tp 2 --pp 2
run import --quiet --hf-path "$fixture" --out "$work/direct" --tp 2 --pp 2
for f in "$work"/direct/*.h5; do cmp "$f" "$work/resharded/$(basename "$f")"; done
echo "OK: torch_dist import, verify, export and reshard"

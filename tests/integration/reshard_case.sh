#!/usr/bin/env bash
# Reshard A -> B must give exactly the files a direct import at B gives.
#   reshard_case.sh BIN NP FIXTURE_DIR "A flags" "B flags"
set -euo pipefail
bin="$1" np="$2" fixture="$3" a_flags="$4" b_flags="$5"
work="$(mktemp -d "${TMPDIR:-/tmp}/mb-reshard-XXXXXX")"
trap 'rm -rf "$work"' EXIT
run() { mpirun --allow-run-as-root --oversubscribe -np "$np" "$bin" "$@"; }
# shellcheck disable=SC2086
run import --quiet --hf-path "$fixture" --out "$work/a" $a_flags
# reshard keeps the source's dtypes: it takes the layout flags only.
reshard_flags="$(sed -E 's/--dtype +[^ ]+//' <<<"$b_flags")"
# shellcheck disable=SC2086
run reshard --quiet --megatron-path "$work/a" --out "$work/resharded" $reshard_flags
# shellcheck disable=SC2086
run import --quiet --hf-path "$fixture" --out "$work/direct" $b_flags
n=0
for f in "$work"/direct/*.h5; do
  cmp "$f" "$work/resharded/$(basename "$f")"
  n=$((n + 1))
done
test "$(ls "$work"/resharded/*.h5 | wc -l)" -eq "$n"
run verify "$fixture" "$work/resharded" | tail -1
echo "OK: $n resharded shard files are byte-identical to a direct import"

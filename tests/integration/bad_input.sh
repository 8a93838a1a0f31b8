#!/usr/bin/env bash
# Bad input: every case must fail with exit status 2, an error naming the
# file and the tensor (or field), and nothing written: neither the output
# directory nor its staging directory exists afterwards.
#   bad_input.sh BIN PYTHON FIXTURE_DIR
set -euo pipefail
bin="$1" python="$2" fixture="$3"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/mb-bad-XXXXXX")"
trap 'rm -rf "$work"' EXIT
fails=0

check() {  # check NAME EXPECTED-PATTERN... -- command
  local name="$1"
  shift
  local patterns=()
  while [ "$1" != "--" ]; do patterns+=("$1"); shift; done
  shift
  set +e
  out="$("$@" 2>&1)"
  code=$?
  set -e
  local ok=1
  [ "$code" -eq 2 ] || ok=0
  for p in "${patterns[@]}"; do grep -qF -- "$p" <<<"$out" || ok=0; done
  if [ -e "$work/out" ] || [ -e "$work/out.partial" ]; then ok=0; echo "$name: output left behind"; fi
  if [ "$ok" -eq 1 ]; then
    echo "ok: $name: $(grep -m1 -E 'error' <<<"$out" | cut -c1-200)"
  else
    echo "FAIL: $name (exit $code, wanted 2 and ${patterns[*]}):"
    echo "$out" | head -10
    fails=$((fails + 1))
  fi
  rm -rf "$work/out" "$work/out.partial"
}

import() { mpirun --allow-run-as-root --oversubscribe -np 2 "$bin" import --hf-path "$1" --out "$work/out" --tp 2; }

for case in truncated header_too_long malformed_json overlap out_of_bounds unknown_dtype wrong_shape \
            missing_tensor path_traversal unsupported_arch; do
  read -r file tensor < <("$python" "$here/corrupt_checkpoint.py" "$fixture" "$work/hf_$case" "$case")
  check "$case" "$file" "$tensor" -- import "$work/hf_$case"
done
check "layout_not_divisible" "num_attention_heads = 8 is not divisible by TP = 3" -- \
  mpirun --allow-run-as-root --oversubscribe -np 2 "$bin" import --hf-path "$fixture" --out "$work/out" --tp 3

if [ "$fails" -ne 0 ]; then
  echo "$fails bad-input case(s) failed"
  exit 1
fi
echo "OK: every bad input was refused with a clear error and nothing was written"

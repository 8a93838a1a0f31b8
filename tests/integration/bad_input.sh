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

# torch_dist: a .metadata naming a class outside the checkpoint classes, and
# one whose item offsets point past the end of the data file.
mpirun --allow-run-as-root --oversubscribe -np 2 "$bin" import --quiet --format torch_dist \
  --hf-path "$fixture" --out "$work/dist" --tp 2
export_dist() {
  mpirun --allow-run-as-root --oversubscribe -np 2 "$bin" export --megatron-path "$1" --hf-path "$work/out"
}
cp -r "$work/dist" "$work/dist_evil"
"$python" -c 'import os, pickle, sys; open(sys.argv[1], "wb").write(pickle.dumps({"x": os.system}, protocol=2))' \
  "$work/dist_evil/iter_0000000/.metadata"
check "dist_unknown_class" "dist_evil/iter_0000000/.metadata" "refuses to load global 'posix.system'" -- export_dist "$work/dist_evil"
cp -r "$work/dist" "$work/dist_offsets"
"$python" - "$work/dist_offsets/iter_0000000/.metadata" <<'PY'
import struct, sys
p = sys.argv[1]
data = bytearray(open(p, "rb").read())
key = b"X\x06\x00\x00\x00offset"
pos = data.find(key)
while pos >= 0:
    op = pos + len(key)
    if data[op:op + 1] == b"J":  # a BININT offset: point it 2 GiB into the file
        data[op + 1:op + 5] = struct.pack("<i", 0x7FFF0000)
        break
    pos = data.find(key, op)
assert pos >= 0, "no BININT offset found"
open(p, "wb").write(bytes(data))
PY
check "dist_offset_out_of_range" ".metadata: item" "offsets out of range" -- export_dist "$work/dist_offsets"

if [ "$fails" -ne 0 ]; then
  echo "$fails bad-input case(s) failed"
  exit 1
fi
echo "OK: every bad input was refused with a clear error and nothing was written"

#!/usr/bin/env bash
# An MTP layer with some tensors missing is refused (it is not what
# save_pretrained writes, which drops all of them): import exits non-zero,
# names every missing tensor, and writes nothing. The same checkpoint with
# every mtp.* tensor removed imports without MTP.
#   mtp_partial.sh BIN PYTHON FIXTURE_DIR
set -euo pipefail
bin="$1" python="$2" fixture="$3"
work="$(mktemp -d "${TMPDIR:-/tmp}/mb-mtp-partial-XXXXXX")"
trap 'rm -rf "$work"' EXIT
run() { mpirun --allow-run-as-root --oversubscribe -np 2 "$bin" "$@"; }

# Copies FIXTURE to DST without the tensors whose names match REGEX.
drop() {
  "$python" - "$fixture" "$1" "$2" <<'PY'
import json, os, re, shutil, struct, sys
src, dst, pattern = sys.argv[1:]
shutil.copytree(src, dst)
index = json.load(open(os.path.join(dst, "model.safetensors.index.json")))
for f in sorted(set(index["weight_map"].values())):
    path = os.path.join(dst, f)
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    keep = {k: v for k, v in header.items() if k == "__metadata__" or not re.match(pattern, k)}
    out, blobs, off = {}, [], 0
    for k, v in keep.items():
        if k == "__metadata__":
            out[k] = v
            continue
        b, e = v["data_offsets"]
        blobs.append(data[b:e])
        out[k] = dict(v, data_offsets=[off, off + e - b])
        off += e - b
    h = json.dumps(out).encode()
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
index["weight_map"] = {k: v for k, v in index["weight_map"].items() if not re.match(pattern, k)}
index.pop("metadata", None)
json.dump(index, open(os.path.join(dst, "model.safetensors.index.json"), "w"))
PY
}

drop "$work/partial" '^(mtp\.fc\.weight|mtp\.layers\.0\.self_attn\.k_norm\.weight)$'
if run import --quiet --hf-path "$work/partial" --out "$work/out" 2>"$work/err.log"; then
  echo "FAIL: a partial MTP layer was imported"; exit 1
fi
cat "$work/err.log"
for want in "MTP layer is incomplete" "2 of the 15 mtp.* tensors" "mtp.fc.weight" "mtp.layers.0.self_attn.k_norm.weight"; do
  grep -qF "$want" "$work/err.log" || { echo "FAIL: the error does not say '$want'"; exit 1; }
done
test ! -e "$work/out" -a ! -e "$work/out.partial" || { echo "FAIL: output written"; exit 1; }
# --not-strict does not accept it either.
if run import --quiet --not-strict --hf-path "$work/partial" --out "$work/out" 2>/dev/null; then
  echo "FAIL: --not-strict imported a partial MTP layer"; exit 1
fi

drop "$work/none" '^mtp\.'
run import --quiet --hf-path "$work/none" --out "$work/ok" --pp 2 2>"$work/warn.log"
grep -c "converting the model without MTP" "$work/warn.log" | grep -qx 1
"$python" "$(dirname "$0")/check_import.py" "$work/none" "$work/ok" --pp 2 --no-mtp
echo "OK: partial MTP refused with every missing tensor named; no MTP at all imports without it"

#!/usr/bin/env bash
# Corruption and misuse (issue: export/verify): each case must fail with a
# clear error naming the problem, and leave nothing that looks complete.
#   misuse.sh BIN FIXTURE_DIR MOE_FIXTURE_DIR PYTHON (with h5py)
set -euo pipefail
bin="$1" fixture="$2" moe="$3" py="$4"
work="$(mktemp -d "${TMPDIR:-/tmp}/mb-misuse-XXXXXX")"
trap 'rm -rf "$work"' EXIT
run() { mpirun --allow-run-as-root --oversubscribe -np 2 "$bin" "$@"; }
fails=0

# expect CODE PATTERN -- command...: the command exits with CODE and its
# output matches PATTERN.
expect() {
  local code="$1" pattern="$2"
  shift 3
  set +e
  out="$("$@" 2>&1)"
  got=$?
  set -e
  if [ "$got" -ne "$code" ] || ! grep -qE "$pattern" <<<"$out"; then
    echo "FAIL: $* -> exit $got (want $code), output:"
    echo "$out" | head -20
    echo "(wanted /$pattern/)"
    fails=$((fails + 1))
  else
    echo "ok: $(head -c 120 <<<"$(grep -E "$pattern" <<<"$out" | head -1)")"
  fi
}
no_output() {
  if [ -e "$1" ] || [ -e "$1.partial" ]; then
    echo "FAIL: $1 (or its staging directory) exists after a refused run"
    fails=$((fails + 1))
  fi
}

run import --quiet --hf-path "$fixture" --out "$work/meg" --tp 2 --pp 2
run import --quiet --hf-path "$fixture" --out "$work/meg_tp1" --tp 1 --pp 2

# A shard with one flipped byte in its tensor data.
cp -r "$work/meg" "$work/flipped"
python3 - "$work/flipped/mp_rank_01_001_000.h5" <<'PY'
import sys
p = sys.argv[1]
data = bytearray(open(p, "rb").read())
data[len(data) // 2] ^= 0x40
open(p, "wb").write(data)
PY
expect 1 "mp_rank_01_001_000.h5 is corrupt: its xxh3 checksum" -- run verify "$fixture" "$work/flipped"
expect 2 "mp_rank_01_001_000.h5 is corrupt" -- run export --megatron-path "$work/flipped" --hf-path "$work/x1"
no_output "$work/x1"

# Export and reshard check the checksums as they read (docs/formats.md): a
# tensor's rows are hashed by the ranks that read them, the hash handed from
# rank to rank along the rows (docs/design.md, "Checksums as read"), and the
# metadata between the datasets is checked against the file checksum. Each
# must catch one flipped byte, naming the file (and the dataset where it is in
# one).
# flip FILE DATASET|padding [FRACTION]: flips one byte FRACTION (default 0.5)
# of the way into the dataset, or a zero byte of the alignment padding just
# before a page-aligned dataset.
flip() {
  "$py" - "$@" <<'PY'
import sys
import h5py
path, what = sys.argv[1], sys.argv[2]
fraction = float(sys.argv[3]) if len(sys.argv) > 3 else 0.5
with h5py.File(path, "r") as f:
    regions = sorted((f[n].id.get_offset(), f[n].id.get_storage_size(), n) for n in f
                     if isinstance(f[n], h5py.Dataset) and f[n].id.get_offset() is not None)
data = bytearray(open(path, "rb").read())
if what == "padding":
    at = next(o - 1 for (po, ps, _), (o, s, n) in zip(regions, regions[1:])
              if o % 4096 == 0 and o > po + ps and data[o - 1] == 0)
else:
    o, s, n = next(r for r in regions if r[2].endswith(what))
    at = o + int(s * fraction)
data[at] ^= 0x40
open(path, "wb").write(data)
PY
}
cp -r "$work/meg" "$work/flip_qkv"
flip "$work/flip_qkv/mp_rank_01_001_000.h5" "self_attention.linear_qkv.weight"
expect 2 "mp_rank_01_001_000.h5 is corrupt: dataset '.*linear_qkv.weight'" -- run export --megatron-path "$work/flip_qkv" --hf-path "$work/x1q"
no_output "$work/x1q"
expect 2 "mp_rank_01_001_000.h5 is corrupt" -- run reshard --megatron-path "$work/flip_qkv" --out "$work/r1q" --tp 1 --pp 2
no_output "$work/r1q"
expect 2 "mp_rank_01_001_000.h5 is corrupt" -- run reshard --megatron-path "$work/flipped" --out "$work/r1" --tp 1 --pp 2
no_output "$work/r1"
# A TP1 -> TP2 reshard on 2 ranks: rank 0 reads the first rows of each half
# of linear_fc1 ([gate; up]), rank 1 the others, so the checksum of the
# source's linear_fc1 is one hash handed 0 -> 1 -> 0 -> 1: a flip in any
# rank's rows is caught (by rank 1, which ends the chain), as is one in a
# column-split tensor (linear_fc2, hashed whole by rank 0 from whole rows).
# Export on 2 ranks splits fc1 into gate_proj and up_proj, written by
# different ranks: the same hand-over.
for case in "mlp.linear_fc1.weight 0.1" "mlp.linear_fc1.weight 0.9" "mlp.linear_fc2.weight 0.5"; do
  set -- $case
  d="$work/flip_chain_${1//./_}_$2"
  cp -r "$work/meg_tp1" "$d"
  flip "$d/mp_rank_00_000_000.h5" "layers.0.$1" "$2"
  expect 2 "mp_rank_00_000_000.h5 is corrupt: dataset '.*layers.0.*$1'" -- run reshard --megatron-path "$d" --out "$d.r" --tp 2 --pp 1
  no_output "$d.r"
  expect 2 "mp_rank_00_000_000.h5 is corrupt: dataset '.*layers.0.*$1'" -- run export --megatron-path "$d" --hf-path "$d.x"
  no_output "$d.x"
done
# On one rank the same reshard reads fc1's [gate0; up0] for the tp=0 shard,
# so it reads gate1 (rows 0.25-0.5 of fc1) ahead for the hash, through the
# page cache, where the tp=1 shard's read finds them. A flip there is caught,
# and the debug log shows the read-ahead happened.
d="$work/flip_fill"
cp -r "$work/meg_tp1" "$d"
flip "$d/mp_rank_00_000_000.h5" "layers.0.mlp.linear_fc1.weight" 0.3
expect 2 "mp_rank_00_000_000.h5 is corrupt: dataset '.*layers.0.*mlp.linear_fc1.weight'" -- \
  mpirun --allow-run-as-root -np 1 "$bin" reshard --megatron-path "$d" --out "$d.r" --tp 2 --pp 1
no_output "$d.r"
out="$(mpirun --allow-run-as-root -np 1 "$bin" reshard --megatron-path "$work/meg_tp1" --out "$work/r_fill" --tp 2 --pp 1 --log-level debug 2>&1)" ||
  { echo "FAIL: 1-rank reshard of the intact TP1 checkpoint"; fails=$((fails + 1)); }
if grep -qE "debug: checksums as read: .* [1-9][0-9]* skipped row range\(s\) read ahead" <<<"$out"; then
  echo "ok: $(grep "debug: checksums as read" <<<"$out")"
else
  echo "FAIL: a 1-rank TP1 -> TP2 reshard read no skipped rows ahead:"
  grep "checksums as read" <<<"$out"
  fails=$((fails + 1))
fi
run verify "$fixture" "$work/r_fill" >/dev/null || { echo "FAIL: verify of the 1-rank TP1 -> TP2 reshard"; fails=$((fails + 1)); }
# And unflipped, the hand-over happens (the states are counted) and checks out.
out="$(run reshard --megatron-path "$work/meg_tp1" --out "$work/r_chain" --tp 2 --pp 1 --log-level debug 2>&1)"
if ! grep -qE "rank 1\] debug: checksums as read: [1-9][0-9]* tensor\(s\) checked here, [1-9]" <<<"$out" ||
   ! grep -qE "rank 0\] debug: checksums as read: .* [1-9][0-9]* hash state\(s\) handed on" <<<"$out"; then
  echo "FAIL: a 2-rank TP1 -> TP2 reshard handed no checksum state between the ranks:"
  grep "checksums as read" <<<"$out"
  fails=$((fails + 1))
else
  echo "ok: $(grep "rank 0\] debug: checksums as read" <<<"$out")"
fi
# Rank 0 slowed down (after each tensor it writes) and no wait for states
# (MEGABRIDGE_TEST_HASH_WAIT_S, which both sources honour): rank 1 finds the
# hash states of its links late and finishes them after the conversion, from
# the page cache. A flipped byte in its rows is still caught, and the intact
# checkpoint still converts and verifies.
slow=(env MEGABRIDGE_TEST_DELAY_MS=30@0 MEGABRIDGE_TEST_HASH_WAIT_S=0 mpirun --allow-run-as-root
  --oversubscribe -np 2 -x MEGABRIDGE_TEST_DELAY_MS -x MEGABRIDGE_TEST_HASH_WAIT_S "$bin")
d="$work/flip_late"
cp -r "$work/meg_tp1" "$d"
flip "$d/mp_rank_00_000_000.h5" "layers.0.mlp.linear_fc1.weight" 0.9
expect 2 "mp_rank_00_000_000.h5 is corrupt: dataset '.*layers.0.*mlp.linear_fc1.weight'" -- \
  "${slow[@]}" reshard --megatron-path "$d" --out "$d.r" --tp 2 --pp 1
no_output "$d.r"
late="$("${slow[@]}" reshard --megatron-path "$work/meg_tp1" --out "$work/r_late" --tp 2 --pp 1 --log-level debug 2>&1)" ||
  { echo "FAIL: 2-rank reshard of the intact TP1 checkpoint with a slow rank 0"; fails=$((fails + 1)); }
if grep -qE "rank 1\] debug: checksums as read: .* [1-9][0-9]* link\(s\) finished at the end" <<<"$late"; then
  echo "ok: $(grep "rank 1\] debug: checksums as read" <<<"$late")"
else
  echo "FAIL: with rank 0 slowed down, rank 1 finished no link late:"; grep "checksums as read" <<<"$late"
  fails=$((fails + 1))
fi
run verify "$fixture" "$work/r_late" >/dev/null || { echo "FAIL: verify of the reshard with a slow rank 0"; fails=$((fails + 1)); }
cp -r "$work/meg" "$work/flip_pad"
flip "$work/flip_pad/mp_rank_01_001_000.h5" padding
expect 1 "mp_rank_01_001_000.h5 is corrupt: its xxh3 checksum" -- run verify "$fixture" "$work/flip_pad"
expect 2 "mp_rank_01_001_000.h5 is corrupt: its HDF5 metadata" -- run export --megatron-path "$work/flip_pad" --hf-path "$work/x1p"
no_output "$work/x1p"
expect 2 "mp_rank_01_001_000.h5 is corrupt: its HDF5 metadata" -- run reshard --megatron-path "$work/flip_pad" --out "$work/r1p" --tp 1 --pp 2
no_output "$work/r1p"

# The same for torch_dist (scheme "xxh3-64-distcp-regions"): a flipped byte
# in a tensor chunk's data and one between the chunks (the payload of an
# archive's `version` record), each caught by verify, export and reshard.
# flip_distcp FILE KEY|between [N [AT]]: the regions are found from .metadata
# and the zip records with the independent reader of check_torch_dist.py; KEY
# flips the N-th (from 0) chunk of a key containing KEY, in file order, at the
# fraction AT of its data (default 0.5).
flip_distcp() {
  "$py" - "$(dirname "$0")" "$@" <<'PY'
import io, os, struct, sys, zipfile
sys.path.insert(0, sys.argv[1])
from check_torch_dist import Unpickler, data_region
path, what = sys.argv[2], sys.argv[3]
md = Unpickler(open(os.path.join(os.path.dirname(path), ".metadata"), "rb")).load()
data = bytearray(open(path, "rb").read())
items = sorted((info.offset, info.length, k) for k, info in md.storage_data.items()
               if info.relative_path == os.path.basename(path) and k.offset is not None)
if what == "between":
    off, length, k = items[len(items) // 2]
    z = zipfile.ZipFile(io.BytesIO(bytes(data[off:off + length])))
    zi = z.getinfo(next(n for n in z.namelist() if n.endswith("/version")))
    n, e = struct.unpack("<HH", data[off + zi.header_offset + 26:off + zi.header_offset + 30])
    at = off + zi.header_offset + 30 + n + e
else:
    nth = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    off, length, k = [i for i in items if what in i[2].fqn][nth]
    d, size = data_region(bytes(data[off:off + length]), off)
    at = d + int(size * (float(sys.argv[5]) if len(sys.argv) > 5 else 0.5))
data[at] ^= 0x40
open(path, "wb").write(data)
print(k.fqn, at)
PY
}
run import --quiet --hf-path "$fixture" --out "$work/td" --tp 2 --pp 2 --format torch_dist
cp -r "$work/td" "$work/td_qkv"
flip_distcp "$work/td_qkv/iter_0000000/__1_0.distcp" linear_qkv.weight
expect 1 "__1_0.distcp is corrupt: its xxh3 checksum.*tensor chunk '.*linear_qkv.weight@" -- run verify "$fixture" "$work/td_qkv"
expect 2 "__1_0.distcp is corrupt: tensor chunk '.*linear_qkv.weight@.*' hashes to" -- run export --megatron-path "$work/td_qkv" --hf-path "$work/x1t"
no_output "$work/x1t"
expect 2 "__1_0.distcp is corrupt: tensor chunk '.*linear_qkv.weight@" -- run reshard --megatron-path "$work/td_qkv" --out "$work/r1t" --tp 1 --pp 2
no_output "$work/r1t"
cp -r "$work/td" "$work/td_gap"
flip_distcp "$work/td_gap/iter_0000000/__1_0.distcp" between
expect 1 "__1_0.distcp is corrupt: its xxh3 checksum" -- run verify "$fixture" "$work/td_gap"
expect 2 "__1_0.distcp is corrupt: the bytes between its tensor chunks" -- run export --megatron-path "$work/td_gap" --hf-path "$work/x1g"
no_output "$work/x1g"
expect 2 "__1_0.distcp is corrupt: the bytes between its tensor chunks" -- run reshard --megatron-path "$work/td_gap" --out "$work/r1g" --tp 1 --pp 2
no_output "$work/r1g"
# A row-parallel chunk (linear_fc2) of a TP1 checkpoint resharded to TP2 is
# read as column windows: in whole rows through the page cache, hashed in
# order (docs/formats.md). One rank writing both TP shards, and two ranks
# reading a half each, must both catch a flipped byte in it.
run import --quiet --hf-path "$fixture" --out "$work/td1" --tp 1 --pp 2 --format torch_dist
cp -r "$work/td1" "$work/td1_fc2"
flip_distcp "$work/td1_fc2/iter_0000000/__0_0.distcp" linear_fc2.weight >/dev/null
for np in 1 2; do
  expect 2 "__0_0.distcp is corrupt: tensor chunk '.*linear_fc2.weight@.*' hashes to" -- \
    mpirun --allow-run-as-root --oversubscribe -np $np "$bin" reshard --megatron-path "$work/td1_fc2" --out "$work/r1f$np" --tp 2 --pp 2
  no_output "$work/r1f$np"
done
# An EP2 MoE checkpoint resharded to TP2·ETP2 on two ranks: each rank reads
# half of every expert chunk. A linear_fc1 chunk (rows split) is hashed by
# rank 0 over its half, the state handed to rank 1 for the rest; a
# linear_fc2 chunk (column windows) by one rank from whole rows. A flipped
# byte in either half of either, in two different chunks, is caught.
run import --quiet --hf-path "$moe" --out "$work/tde" --ep 2 --format torch_dist
for flip in "linear_fc1 0 0.25" "linear_fc1 1 0.75" "linear_fc2 0 0.25" "linear_fc2 1 0.75"; do
  read -r key nth at <<<"$flip"
  rm -rf "$work/tde_flip"
  cp -r "$work/tde" "$work/tde_flip"
  flip_distcp "$work/tde_flip/iter_0000000/__1_0.distcp" "experts.experts.$key.weight" "$nth" "$at" >/dev/null
  expect 2 "__1_0.distcp is corrupt: tensor chunk '.*experts.experts.$key.weight@.*' hashes to" -- \
    run reshard --megatron-path "$work/tde_flip" --out "$work/r1e" --tp 2 --etp 2
  no_output "$work/r1e"
done
# Rank 0 slowed down (after each tensor it writes) and no wait for states:
# rank 1 finds the hash states of its links late, reads those bytes through
# the page cache and finishes the links after the conversion, in chunk order. A flipped byte in
# its half is still caught, and the intact checkpoint still converts.
rm -rf "$work/tde_flip"
cp -r "$work/tde" "$work/tde_flip"
flip_distcp "$work/tde_flip/iter_0000000/__1_0.distcp" "experts.experts.linear_fc1.weight" 3 0.75 >/dev/null
expect 2 "__1_0.distcp is corrupt: tensor chunk '.*experts.experts.linear_fc1.weight@.*' hashes to" -- \
  env MEGABRIDGE_TEST_DELAY_MS=30@0 MEGABRIDGE_TEST_HASH_WAIT_S=0 mpirun --allow-run-as-root --oversubscribe -np 2 -x MEGABRIDGE_TEST_DELAY_MS -x MEGABRIDGE_TEST_HASH_WAIT_S "$bin" \
  reshard --megatron-path "$work/tde_flip" --out "$work/r1e" --tp 2 --etp 2
no_output "$work/r1e"
late="$(MEGABRIDGE_TEST_DELAY_MS=30@0 MEGABRIDGE_TEST_HASH_WAIT_S=0 mpirun --allow-run-as-root --oversubscribe -np 2 -x MEGABRIDGE_TEST_DELAY_MS -x MEGABRIDGE_TEST_HASH_WAIT_S "$bin" \
  reshard --megatron-path "$work/tde" --out "$work/r1e" --tp 2 --etp 2 --log-level debug 2>&1)" ||
  { echo "FAIL: reshard of the intact EP2 torch_dist checkpoint with a slow rank 0"; fails=$((fails + 1)); }
if ! grep -Eq "rank 1\] debug: torch_dist checksums as read: .* [1-9][0-9]* link\(s\) finished at the end" <<<"$late"; then
  echo "FAIL: with rank 0 slowed down, rank 1 finished no link late:"; grep "checksums as read" <<<"$late"
  fails=$((fails + 1))
fi
run verify "$moe" "$work/r1e" >/dev/null || { echo "FAIL: verify of the reshard with a slow rank 0"; fails=$((fails + 1)); }
rm -rf "$work/r1e"
run reshard --quiet --megatron-path "$work/tde" --out "$work/r1e" --tp 2 --etp 2 >/dev/null ||
  { echo "FAIL: reshard of the intact EP2 torch_dist checkpoint"; fails=$((fails + 1)); }
run verify "$moe" "$work/r1e" >/dev/null || { echo "FAIL: verify of the EP2 -> TP2·ETP2 reshard"; fails=$((fails + 1)); }
# The intact checkpoint still converts (and verify agrees with the manifest).
run verify "$fixture" "$work/td" >/dev/null || { echo "FAIL: verify of the intact torch_dist checkpoint"; fails=$((fails + 1)); }

# import --resume with torch_dist keeps a committed .distcp whose region
# checksum still matches its record, and writes again one with a flipped byte.
for flip in no yes; do
  rm -rf "$work/tdr" "$work/tdr.partial"
  MEGABRIDGE_TEST_FAIL=1:60 run import --quiet --hf-path "$fixture" --out "$work/tdr" --tp 2 --pp 2 --format torch_dist >/dev/null 2>&1 || true
  if [ ! -f "$work/tdr.partial/iter_0000000/__0_0.distcp" ]; then
    echo "FAIL: the interrupted torch_dist import left no committed __0_0.distcp"; fails=$((fails + 1)); continue
  fi
  if [ "$flip" = yes ]; then  # no .metadata yet: the middle byte of the file
    "$py" -c 'import sys; p = sys.argv[1]; d = bytearray(open(p, "rb").read()); d[len(d) // 2] ^= 0x40; open(p, "wb").write(d)' \
      "$work/tdr.partial/iter_0000000/__0_0.distcp"
  fi
  out="$(run import --resume --hf-path "$fixture" --out "$work/tdr" --tp 2 --pp 2 --format torch_dist 2>&1)" || { echo "FAIL: torch_dist --resume"; fails=$((fails + 1)); continue; }
  if [ "$flip" = no ] && ! grep -q "resume: keeping iter_0000000/__0_0.distcp" <<<"$out"; then
    echo "FAIL: --resume did not keep the intact __0_0.distcp"; fails=$((fails + 1))
  elif [ "$flip" = yes ] && grep -q "resume: keeping iter_0000000/__0_0.distcp" <<<"$out"; then
    echo "FAIL: --resume kept a __0_0.distcp with a flipped byte"; fails=$((fails + 1))
  else
    echo "ok: torch_dist --resume (flipped: $flip)"
  fi
  run verify "$fixture" "$work/tdr" >/dev/null || { echo "FAIL: verify after torch_dist --resume (flipped: $flip)"; fails=$((fails + 1)); }
done

# A missing shard file.
cp -r "$work/meg" "$work/missing"
rm "$work/missing/mp_rank_00_000_000.h5"
expect 2 "mp_rank_00_000_000.h5 is missing" -- run export --megatron-path "$work/missing" --hf-path "$work/x2"
no_output "$work/x2"

# A shard from a different layout put in place of one of ours (with a manifest
# entry that matches it, as if the file had been copied in carefully).
cp -r "$work/meg" "$work/mixed"
cp "$work/meg_tp1/mp_rank_00_001_000.h5" "$work/mixed/mp_rank_00_001_000.h5"
python3 - "$work/mixed" <<'PY'
import json, os, sys
d = sys.argv[1]
m = json.load(open(os.path.join(d, "manifest.json")))
other = json.load(open(os.path.join(d, "..", "meg_tp1", "manifest.json")))
src = {f["path"]: f for f in other["files"]}["mp_rank_00_001_000.h5"]
for f in m["files"]:
    if f["path"] == "mp_rank_00_001_000.h5":
        f["bytes"], f["xxh3"] = src["bytes"], src["xxh3"]
json.dump(m, open(os.path.join(d, "manifest.json"), "w"))
PY
expect 2 "shard from a different layout" -- run export --megatron-path "$work/mixed" --hf-path "$work/x3"
no_output "$work/x3"

# A manifest that does not match the shards (layout edited).
cp -r "$work/meg" "$work/badmanifest"
python3 - "$work/badmanifest/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
m["layout"]["tp"] = 4
json.dump(m, open(sys.argv[1], "w"))
PY
expect 2 "the recorded layout does not match the listed shard files: it does not list mp_rank_02_000_000.h5" -- run export --megatron-path "$work/badmanifest" --hf-path "$work/x4"
no_output "$work/x4"

# Not a megabridge output at all.
expect 2 "has no manifest.json" -- run export --megatron-path "$fixture" --hf-path "$work/x5"
no_output "$work/x5"

# --no-verify-checksums lets a flipped byte through; verify still finds it.
run export --quiet --no-verify-checksums --megatron-path "$work/flipped" --hf-path "$work/x6" || true

# Refuses to replace an existing output unless --overwrite.
expect 2 "already holds files; pass --overwrite" -- run import --hf-path "$fixture" --out "$work/meg" --tp 2
expect 2 "output .*/meg is the same path as --megatron-path" -- run export --megatron-path "$work/meg" --hf-path "$work/meg"

# Bad layouts are refused before any I/O, naming the values.
expect 2 "num_attention_heads = 8 is not divisible by TP = 3" -- run import --hf-path "$fixture" --out "$work/x7" --tp 3
no_output "$work/x7"
expect 2 "EP = 2 needs an MoE model" -- run import --hf-path "$fixture" --out "$work/x8" --ep 2
no_output "$work/x8"

# verify exits non-zero and names what differs.
cp -r "$fixture" "$work/hf_changed"
python3 - "$work/hf_changed" <<'PY'
import json, os, struct, sys
d = sys.argv[1]
idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
f = idx["weight_map"]["model.language_model.norm.weight"]
p = os.path.join(d, f)
data = bytearray(open(p, "rb").read())
n = struct.unpack("<Q", data[:8])[0]
meta = json.loads(data[8:8 + n])["model.language_model.norm.weight"]
data[8 + n + meta["data_offsets"][0] + 6] ^= 0x01
open(p, "wb").write(data)
PY
expect 1 "DIFF +model.language_model.norm.weight: 1 of 64 elements differ, max abs diff .*first at \[3\]" -- run verify "$fixture" "$work/hf_changed"
expect 1 "DIFF +.*language_model.decoder.final_layernorm.weight" -- run verify "$work/hf_changed" "$work/meg"

if [ "$fails" -ne 0 ]; then
  echo "$fails misuse case(s) failed"
  exit 1
fi
echo "OK: every misuse case failed cleanly"

#!/usr/bin/env bash
# Read-once import: every HF byte is read by one owner rank, and the owners
# share the reading. Where ranks need a tensor equally (both halves of a TP
# split, a norm every rank holds) the owner is the rank that owns the fewest
# bytes so far, so at TP2·ETP2, where every tensor is such a tie, each of the
# two ranks reads a good share of the checkpoint (ties to the lowest rank had
# rank 0 read nearly all of it). The converted output is checked by the
# read_once.* layout cases; this checks who read it.
#   read_once_balance.sh BIN FIXTURE_DIR
set -euo pipefail
bin="$1" fixture="$2"
work="$(mktemp -d "${TMPDIR:-/tmp}/mb-ro-XXXXXX")"
trap 'rm -rf "$work"' EXIT

mpirun --allow-run-as-root --oversubscribe -np 2 "$bin" import --hf-path "$fixture" \
  --out "$work/meg" --tp 2 --etp 2 --read-once --log-level debug >"$work/log" 2>&1 ||
  { cat "$work/log"; exit 1; }
python3 - "$fixture" "$work/log" <<'PY' 
import json, re, sys
from pathlib import Path
log = Path(sys.argv[2]).read_text()
units = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
read = {int(r): float(v) * units[u] for r, v, u in
        re.findall(r"\[rank (\d)\] debug: read-once: read ([0-9.]+) (\w+) from storage", log)}
if sorted(read) != [0, 1]:
    sys.exit("FAIL: no per-rank read-once line for both ranks:\n" + log)
# The tensor bytes of the HF checkpoint, from the safetensors headers.
total = 0
for f in Path(sys.argv[1]).glob("*.safetensors"):
    with open(f, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    total += sum(t["data_offsets"][1] - t["data_offsets"][0] for k, t in header.items() if k != "__metadata__")
got = read[0] + read[1]
# Together they read the checkpoint once: its tensor bytes, to the log's
# rounding (0.1 of a unit: 1.7 MiB here, so within 3%).
if not 0.95 * total <= got <= 1.05 * total:
    sys.exit(f"FAIL: the ranks read {got:.0f} bytes together, the checkpoint's tensors are {total}")
for r, b in read.items():
    if b < 0.25 * got:
        sys.exit(f"FAIL: rank {r} read {b:.0f} of {got:.0f} bytes: the reading is not shared")
print(f"OK: rank 0 read {read[0]:.0f}, rank 1 {read[1]:.0f} of {got:.0f} bytes")
PY

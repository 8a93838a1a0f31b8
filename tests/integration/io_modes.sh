#!/usr/bin/env bash
# Direct I/O (O_DIRECT through a read window / append buffer) and buffered I/O
# must give byte-identical checkpoints, both ways and resharded, for layouts
# that read column windows (TP) and expert slabs (EP), as HDF5 and as
# torch_dist; the direct runs' read-ahead queues must have served reads.
#   io_modes.sh BIN FIXTURE_DIR
set -euo pipefail
bin="$1" fixture="$2"
work="$(mktemp -d "${TMPDIR:-/tmp}/mb-io-XXXXXX")"
trap 'rm -rf "$work"' EXIT
run() { mpirun --allow-run-as-root --oversubscribe -np 2 "$bin" "$@"; }

# The test directory must take O_DIRECT, or this compares buffered with buffered.
if ! dd if=/dev/zero of="$work/probe" bs=4096 count=1 oflag=direct status=none 2>/dev/null; then
  echo "SKIP: $work refuses O_DIRECT"
  exit 77
fi

# Each direct run logs (debug) what each rank's source read and how much the
# source's read-ahead queue loaded directly. Both ranks must report, and a
# rank that read anything must have had a good part of it (a quarter at
# least; 0.9-1.2x here, the queue loading alignment padding too) loaded by the
# queue, or only the synchronous fallback was compared. (A quarter, not all:
# a rank that reaches a range before the helper has begun it reads it itself.)
#   quiet_or_log IO: the flags for a run under --io IO
quiet_or_log() { if [ "$1" = direct ]; then echo "--log-level debug"; else echo "--quiet"; fi; }
check_ahead() {  # LOG WHAT
  local lines
  lines=$(grep -E "debug: $2: read [0-9]+ bytes from the source" "$1" || true)
  if [ "$(echo "$lines" | grep -c .)" -ne 2 ]; then
    echo "FAIL: $1 should have one '$2: read ...' line per rank:"; echo "$lines"; exit 1
  fi
  echo "$lines" | awk -v what="$2" '$6 > 0 && 4 * $11 < $6 { print "FAIL: " what ": the queue loaded under a quarter of what was read: " $0; bad = 1 }
    END { exit bad }'
}

# Small buffers: 256 KiB windows, so the fixture's tensors take several loads.
flags="--tp 2 --ep 2 --etp 2 --buffer-mb 8"
n=0
for format in hdf5 torch_dist; do
  for io in direct buffered; do
    # shellcheck disable=SC2086,SC2046
    run import $(quiet_or_log $io) --hf-path "$fixture" --out "$work/$format-$io" --format "$format" \
      --io "$io" $flags 2>"$work/import-$format-$io.log"
  done
  check_ahead "$work/import-$format-direct.log" import
  for f in $(cd "$work/$format-direct" && find . -type f \( -name '*.h5' -o -name '*.distcp' -o -name '.metadata' \)); do
    cmp "$work/$format-direct/$f" "$work/$format-buffered/$f"
    n=$((n + 1))
  done
  # Export both ways (direct reads of torch_dist need --io direct: auto
  # shares the checksum pass's page cache), then the files must match.
  for io in direct buffered; do
    # shellcheck disable=SC2046
    run export $(quiet_or_log $io) --megatron-path "$work/$format-direct" \
      --hf-path "$work/$format-back-$io" --io "$io" 2>"$work/export-$format-$io.log"
  done
  check_ahead "$work/export-$format-direct.log" export
  for f in "$work/$format-back-direct"/*.safetensors; do
    cmp "$f" "$work/$format-back-buffered/$(basename "$f")"
    cmp "$f" "$fixture/$(basename "$f")"
    n=$((n + 1))
  done
  # Reshard to one rank's TP1 (every source shard read by rank 0) both ways.
  for io in direct buffered; do
    # shellcheck disable=SC2046
    run reshard $(quiet_or_log $io) --megatron-path "$work/$format-direct" \
      --out "$work/$format-tp1-$io" --tp 1 --ep 1 --etp 1 --io "$io" 2>"$work/reshard-$format-$io.log"
  done
  check_ahead "$work/reshard-$format-direct.log" reshard
  for f in "$work/$format-tp1-direct"/*.h5; do
    cmp "$f" "$work/$format-tp1-buffered/$(basename "$f")"
    n=$((n + 1))
  done
done
test "$n" -gt 10
echo "OK: $n files byte-identical between --io direct and --io buffered (and the fixture)"

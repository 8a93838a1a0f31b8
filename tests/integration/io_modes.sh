#!/usr/bin/env bash
# Direct I/O (O_DIRECT through a read window / append buffer) and buffered I/O
# must give byte-identical checkpoints, both ways, for layouts that read column
# windows (TP) and expert slabs (EP), as HDF5 and as torch_dist.
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

# Small buffers: 256 KiB windows, so the fixture's tensors take several loads.
flags="--tp 2 --ep 2 --etp 2 --buffer-mb 8"
n=0
for format in hdf5 torch_dist; do
  for io in direct buffered; do
    # shellcheck disable=SC2086
    run import --quiet --hf-path "$fixture" --out "$work/$format-$io" --format "$format" --io "$io" $flags
  done
  for f in $(cd "$work/$format-direct" && find . -type f \( -name '*.h5' -o -name '*.distcp' -o -name '.metadata' \)); do
    cmp "$work/$format-direct/$f" "$work/$format-buffered/$f"
    n=$((n + 1))
  done
  # Export both ways (direct reads of torch_dist need --io direct: auto
  # shares the checksum pass's page cache), then the files must match.
  for io in direct buffered; do
    run export --quiet --megatron-path "$work/$format-direct" --hf-path "$work/$format-back-$io" --io "$io"
  done
  for f in "$work/$format-back-direct"/*.safetensors; do
    cmp "$f" "$work/$format-back-buffered/$(basename "$f")"
    cmp "$f" "$fixture/$(basename "$f")"
    n=$((n + 1))
  done
done
test "$n" -gt 8
echo "OK: $n files byte-identical between --io direct and --io buffered (and the fixture)"

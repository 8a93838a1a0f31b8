#!/usr/bin/env bash
# Export options: expert layout conversion both ways (checked against the
# per-expert fixture, which holds the same values as the fused one), a fresh
# split by --max-shard-size, and a YAML job with flags overriding it.
#   export_options.sh BIN PYTHON DATA_DIR
set -euo pipefail
bin="$1" python="$2" data="$3"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/mb-export-XXXXXX")"
trap 'rm -rf "$work"' EXIT
run() { mpirun --allow-run-as-root --oversubscribe -np 2 "$bin" "$@"; }
fused="$data/qwen35-moe-tiny" per="$data/qwen35-moe-tiny-per-expert"

run import --quiet --hf-path "$fused" --out "$work/meg" --tp 2 --ep 2
run export --quiet --megatron-path "$work/meg" --hf-path "$work/per" --experts per_expert
"$python" "$here/compare_hf.py" "$per" "$work/per" --any-file-map

run import --quiet --hf-path "$per" --out "$work/meg_pe" --ep 4
run export --quiet --megatron-path "$work/meg_pe" --hf-path "$work/fused" --experts fused
"$python" "$here/compare_hf.py" "$fused" "$work/fused" --any-file-map

run export --quiet --megatron-path "$work/meg" --hf-path "$work/small" --max-shard-size 300KB
n="$(ls "$work"/small/*.safetensors | wc -l)"
test "$n" -ge 6 || { echo "expected at least 6 files of at most 300 KB, got $n"; exit 1; }
for f in "$work"/small/*.safetensors; do
  test "$(stat -c %s "$f")" -le 400000 || { echo "$f is larger than the limit allows"; exit 1; }
done
"$python" "$here/compare_hf.py" "$fused" "$work/small" --any-file-map

# A YAML job, with --out and --tp overriding it.
cat > "$work/job.yaml" <<YAML
source: {hf_path: $data/qwen35-dense-tiny}
target: {path: $work/not-used, format: hdf5}
parallel: {tp: 2, pp: 2}
YAML
run import --quiet --config "$work/job.yaml" --out "$work/job_out" --tp 1
test "$(ls "$work"/job_out/*.h5 | wc -l)" -eq 2
test ! -e "$work/not-used"
echo "OK: expert layout conversion, size split and YAML overrides"

#!/usr/bin/env bash
# ThreadSanitizer over the code that runs threads (issue 11, finding 12): the
# copy engine, whose helper thread writes one block while the next is read;
# direct I/O (AppendFile, RegionFile/RegionWriter) and the HDF5 and
# safetensors writers it drives; and export's checksum thread beside the
# conversion. Configures build-tsan/ (RelWithDebInfo, MEGABRIDGE_TSAN=ON,
# CPU only), then
#   1. runs the unit tests of those parts (CopyEngine*, DirectIo*, Hdf5Shard*,
#      CastOverflow*, Safetensors*) under TSan;
#   2. runs real conversions with the TSan binary under mpirun: import at
#      TP2 (2 ranks), export back with direct I/O and the checksum thread,
#      a reshard, and checks the export byte for byte against the fixture.
# Any report fails the script (TSAN_OPTIONS exitcode=66, halt_on_error=1);
# each process writes its reports to build-tsan/tsan-logs/.
#   scripts/test-tsan.sh [gtest filter]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
filter="${1:-CopyEngine*:DirectIo*:Hdf5Shard*:CastOverflow*:Safetensors*:VerifyNonFinite*}"
jobs="$(nproc 2>/dev/null || echo 2)"
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMEGABRIDGE_TSAN=ON -DMEGABRIDGE_CUDA=OFF \
  -DMEGABRIDGE_TEST_PYTHON="$root/.venv/bin/python" >/dev/null
cmake --build build-tsan -j"$jobs" --target megabridge_unit_tests megabridge

logs="$root/build-tsan/tsan-logs"
rm -rf "$logs"
mkdir -p "$logs"
# Open MPI's own threads (progress, PMIx, libevent) are not instrumented:
# ignore_noninstrumented_modules keeps TSan to our code; reports in
# them would be about MPI, not us: scripts/tsan.supp lists what is suppressed.
export TSAN_OPTIONS="halt_on_error=1:exitcode=66:second_deadlock_stack=1:ignore_noninstrumented_modules=1:log_path=$logs/tsan:suppressions=$root/scripts/tsan.supp"

echo "== unit tests ($filter)"
build-tsan/tests/megabridge_unit_tests --gtest_filter="$filter"

echo "== conversions under mpirun"
work="$(mktemp -d "${TMPDIR:-/tmp}/mb-tsan-XXXXXX")"
trap 'rm -rf "$work"' EXIT
fixture="$root/tests/data/qwen35-dense-tiny"
bin="$root/build-tsan/apps/megabridge"
mpi=(mpirun --allow-run-as-root --oversubscribe -np 2 -x TSAN_OPTIONS)
"${mpi[@]}" "$bin" import --quiet --hf-path "$fixture" --out "$work/meg" --tp 2 --buffer-mb 1
"${mpi[@]}" "$bin" export --quiet --megatron-path "$work/meg" --hf-path "$work/hf" --buffer-mb 1 --io direct
"${mpi[@]}" "$bin" reshard --quiet --megatron-path "$work/meg" --out "$work/meg-pp2" --pp 2 --buffer-mb 1
"${mpi[@]}" "$bin" import --quiet --hf-path "$fixture" --out "$work/meg-ro" --tp 2 --read-once --buffer-mb 1
for f in "$fixture"/*.safetensors; do cmp "$f" "$work/hf/$(basename "$f")"; done
if compgen -G "$logs/tsan*" >/dev/null; then
  echo "ThreadSanitizer reports:"
  cat "$logs"/tsan*
  exit 1
fi
echo "ThreadSanitizer: no reports (unit tests: $filter; import, export, reshard, read-once import at 2 ranks)"

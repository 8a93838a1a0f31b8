#!/usr/bin/env bash
# Failures and resume:
#   1. a rank that fails aborts the whole job promptly with its error, non-zero;
#   2. SIGKILL of a rank mid-conversion leaves nothing that looks complete, and
#      --resume finishes bit-identical to an uninterrupted run, keeping the
#      shards that were committed before the kill;
#   3. a full disk (a small tmpfs) gives a clear error and nothing complete.
#   failures.sh BIN FIXTURE_DIR
set -euo pipefail
bin="$1" fixture="$2"
work="$(mktemp -d "${TMPDIR:-/tmp}/mb-fail-XXXXXX")"
cleanup() {
  mountpoint -q "$work/small" 2>/dev/null && umount "$work/small"
  rm -rf "$work"
}
trap cleanup EXIT
mpi=(mpirun --allow-run-as-root --oversubscribe -np 2)

# 1. An injected failure on rank 1 after 3 tensors.
start=$(date +%s)
set +e
out="$(MEGABRIDGE_TEST_FAIL=1:3 timeout 60 "${mpi[@]}" "$bin" import --hf-path "$fixture" --out "$work/fail" --tp 2 2>&1)"
code=$?
set -e
elapsed=$(( $(date +%s) - start ))
[ "$code" -ne 0 ] && [ "$code" -ne 124 ] || { echo "FAIL: job did not fail promptly (exit $code)"; echo "$out"; exit 1; }
grep -q "\[rank 1\] error: .*injected failure on rank 1" <<<"$out" || { echo "FAIL: rank 1's error not shown"; echo "$out"; exit 1; }
[ ! -e "$work/fail" ] || { echo "FAIL: output committed after a failure"; exit 1; }
[ ! -e "$work/fail.partial/manifest.json" ] || { echo "FAIL: a manifest was written"; exit 1; }
echo "ok: a failing rank aborted the job in ${elapsed} s (exit $code) with its error"

# 2. SIGKILL one rank once some shards are committed, then --resume.
"${mpi[@]}" "$bin" import --quiet --hf-path "$fixture" --out "$work/reference" --tp 2 --pp 2
MEGABRIDGE_TEST_DELAY_MS=40 "${mpi[@]}" "$bin" import --quiet --hf-path "$fixture" --out "$work/killed" \
  --tp 2 --pp 2 >"$work/killed.log" 2>&1 &
job=$!
for _ in $(seq 1 300); do
  ls "$work"/killed.partial/*.done >/dev/null 2>&1 && break
  sleep 0.05
done
ls "$work"/killed.partial/*.done >/dev/null 2>&1 || { echo "FAIL: no shard was committed"; exit 1; }
victim="$(pgrep -f "megabridge import --quiet --hf-path $fixture --out $work/killed" | grep -v "^$job\$" | tail -1)"
kill -9 "$victim"
set +e
wait "$job"
code=$?
set -e
[ "$code" -ne 0 ] || { echo "FAIL: the killed job exited 0"; exit 1; }
[ ! -e "$work/killed" ] || { echo "FAIL: output committed after SIGKILL"; exit 1; }
[ ! -e "$work/killed.partial/manifest.json" ] || { echo "FAIL: a manifest exists after SIGKILL"; exit 1; }
echo "ok: SIGKILL of rank pid $victim left only $(ls "$work/killed.partial" | grep -c '\.h5$') committed shard(s) in killed.partial"
log="$("${mpi[@]}" "$bin" import --resume --hf-path "$fixture" --out "$work/killed" --tp 2 --pp 2 2>&1)"
grep -q "resume: keeping" <<<"$log" || { echo "FAIL: --resume kept nothing"; echo "$log"; exit 1; }
for f in "$work"/reference/*.h5; do cmp "$f" "$work/killed/$(basename "$f")"; done
[ ! -e "$work/killed.partial" ] || { echo "FAIL: staging left after resume"; exit 1; }
! ls "$work"/killed/*.done >/dev/null 2>&1 || { echo "FAIL: resume marks left in the output"; exit 1; }
echo "ok: --resume kept $(grep -c 'resume: keeping' <<<"$log") shard(s) and finished bit-identical"

# A resume of a different job is refused.
MEGABRIDGE_TEST_FAIL=0:1 "${mpi[@]}" "$bin" import --quiet --hf-path "$fixture" --out "$work/other" --tp 2 >/dev/null 2>&1 || true
set +e
out="$("${mpi[@]}" "$bin" import --resume --hf-path "$fixture" --out "$work/other" --tp 1 2>&1)"
code=$?
set -e
[ "$code" -eq 2 ] && grep -q "left by a different job" <<<"$out" || { echo "FAIL: foreign partial output accepted"; echo "$out"; exit 1; }
echo "ok: --resume refuses a partial output of another job"

# 3. ENOSPC on a 600 KiB tmpfs (the output needs about 1.3 MB).
mkdir -p "$work/small"
if ! mount -t tmpfs -o size=600k tmpfs "$work/small" 2>/dev/null; then
  echo "SKIP: cannot mount a tmpfs here; the full-disk case was not run"
  exit 77
fi
set +e
out="$("${mpi[@]}" "$bin" import --hf-path "$fixture" --out "$work/small/out" --tp 2 2>&1)"
code=$?
set -e
[ "$code" -ne 0 ] || { echo "FAIL: import into a full filesystem succeeded"; exit 1; }
grep -qiE "no space left on device|disk full" <<<"$out" || { echo "FAIL: no clear disk-full error"; echo "$out" | head; exit 1; }
[ ! -e "$work/small/out" ] || { echo "FAIL: output committed on a full disk"; exit 1; }
echo "ok: a full disk gives: $(grep -m1 -iE 'no space|disk full' <<<"$out" | cut -c1-160)"
echo "OK: failures abort promptly, nothing half-written looks complete, resume is exact"

#!/usr/bin/env bash
# `megabridge run` when a step fails, and --resume (docs/pipelines.md):
#   1. a middle step that cannot start (verify of a missing directory): exit 2
#      naming the step, the later steps not run;
#   2. a rank failing while a middle step converts (MEGABRIDGE_TEST_FAIL=<rank>:<n>@<step>):
#      the job aborts promptly with the rank's error naming the step; nothing
#      of that step or later is committed;
#   3./4. SIGKILL of a rank in the middle step (an import; a reshard), then --resume: the finished step is
#      skipped (one line), the killed import resumes keeping its committed
#      shards, the last step runs; the result is byte-identical to an
#      uninterrupted import and passes the independent reference check;
#   5. a reshard step's --resume after a source shard was rewritten is refused
#      (resume identity, docs/operations.md "What is safe"), its partial output kept.
#   pipeline_failures.sh BIN PYTHON DATA_DIR
set -euo pipefail
bin="$1" python="$2" data="$3"
fixture="$data/qwen35-dense-tiny"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/mb-pipefail-XXXXXX")"
trap 'rm -rf "$work"' EXIT
mpi=(mpirun --allow-run-as-root --oversubscribe -np 2)
fail() { echo "FAIL: $*"; exit 1; }

# --- 1. a middle step that cannot start ------------------------------------------
cat >"$work/stop.yaml" <<YAML
steps:
  - import: {hf_path: $fixture, out: $work/s1, tp: 2}
  - verify: {a: $fixture, b: $work/missing}
  - export: {megatron_path: $work/s1, hf_path: $work/s3}
YAML
set +e
out="$("${mpi[@]}" "$bin" run "$work/stop.yaml" 2>&1)"
code=$?
set -e
[ "$code" -eq 2 ] || { echo "$out"; fail "exit $code, not 2"; }
grep -q "\[2/3 verify\] $work/missing is not a directory" <<<"$out" || { echo "$out"; fail "the step's error"; }
grep -q "\[2/3 verify\] pipeline stopped: step 2/3 (verify) failed with exit code 2; steps 3-3 were not run" <<<"$out" ||
  { echo "$out"; fail "no line naming the failed step"; }
[ -e "$work/s1/manifest.json" ] || fail "step 1 should have been committed"
[ ! -e "$work/s3" ] && [ ! -e "$work/s3.partial" ] || fail "step 3 ran after step 2 failed"
echo "ok: a failing middle step stops the pipeline (exit 2, step named, step 3 not run)"

# --- 2. a rank failing while the middle step converts ---------------------------
cat >"$work/abort.yaml" <<YAML
steps:
  - import: {hf_path: $fixture, out: $work/a1, tp: 2}
  - reshard: {megatron_path: $work/a1, out: $work/a2, pp: 2}
  - export: {megatron_path: $work/a2, hf_path: $work/a3}
YAML
start=$(date +%s)
set +e
out="$(MEGABRIDGE_TEST_FAIL=1:3@2 timeout 120 "${mpi[@]}" "$bin" run "$work/abort.yaml" 2>&1)"
code=$?
set -e
[ "$code" -ne 0 ] && [ "$code" -ne 124 ] || { echo "$out"; fail "the job did not fail promptly (exit $code)"; }
grep -q "\[rank 1\] error: \[2/3 reshard\] .*injected failure on rank 1" <<<"$out" || { echo "$out"; fail "rank 1's error does not name the step"; }
[ -e "$work/a1/manifest.json" ] || fail "step 1 should have been committed"
[ ! -e "$work/a2" ] && [ ! -e "$work/a2.partial/manifest.json" ] || fail "the failed step committed"
[ ! -e "$work/a3" ] && [ ! -e "$work/a3.partial" ] || fail "step 3 ran"
echo "ok: a rank failing in step 2 aborted the job in $(( $(date +%s) - start )) s (exit $code) with its error naming the step"

# kill_mid_step YAML PARTIAL LOG WHAT: runs the pipeline slowed down, SIGKILLs a
# rank once PARTIAL holds a committed shard, and requires a non-zero exit.
kill_mid_step() {
  local yaml="$1" partial="$2" log="$3" what="$4" job victim code
  MEGABRIDGE_TEST_DELAY_MS=40 "${mpi[@]}" "$bin" run "$yaml" >"$log" 2>&1 &
  job=$!
  for _ in $(seq 1 1200); do
    ls "$partial"/*.done >/dev/null 2>&1 && break
    sleep 0.05
  done
  ls "$partial"/*.done >/dev/null 2>&1 || { cat "$log"; fail "$what"; }
  victim="$(pgrep -f "megabridge run $yaml" | grep -v "^$job\$" | tail -1)"
  kill -9 "$victim"
  set +e
  wait "$job"
  code=$?
  set -e
  [ "$code" -ne 0 ] || fail "the killed job exited 0"
}

# --- 3. SIGKILL in the middle step, then --resume ----------------------------------
"${mpi[@]}" "$bin" import --quiet --hf-path "$fixture" --out "$work/reference" --tp 2 --pp 2
cat >"$work/r.yaml" <<YAML
vars: {hf: $fixture}
steps:
  - import: {hf_path: "\${hf}", out: $work/r1}
  - import: {hf_path: "\${hf}", out: $work/r2, tp: 2, pp: 2}
  - verify: {a: "\${hf}", b: $work/r2}
YAML
kill_mid_step "$work/r.yaml" "$work/r2.partial" "$work/killed.log" "step 2 committed no shard"
[ -e "$work/r1/.megabridge-step.json" ] || fail "step 1 should be committed with its stamp"
[ ! -e "$work/r2" ] || fail "step 2 committed after SIGKILL"
kept_before=$(ls "$work"/r2.partial/*.h5 2>/dev/null | wc -l)
log="$("${mpi[@]}" "$bin" run --resume "$work/r.yaml" 2>&1)" || { echo "$log"; fail "--resume failed"; }
grep -q "\[1/3 import\] skipped: $work/r1 is committed and matches this step" <<<"$log" || { echo "$log"; fail "step 1 not skipped"; }
[ "$(grep -c "\] skipped:" <<<"$log")" -eq 1 ] || { echo "$log"; fail "only step 1 may be skipped"; }
grep -qx "\[rank 0\] info: \[2/3 import\] not skipped: $work/r2 is not committed yet" <<<"$log" || { echo "$log"; fail "no line saying why step 2 runs"; }
grep -q "\[2/3 import\] resume: keeping" <<<"$log" || { echo "$log"; fail "step 2 did not resume"; }
grep -q "\[2/3 import\] resuming the partial output" <<<"$log" || { echo "$log"; fail "step 2 started over"; }
grep -q "OK: .* tensors compared, all identical" <<<"$log" || { echo "$log"; fail "step 3 did not run"; }
for f in "$work"/reference/*.h5; do cmp "$f" "$work/r2/$(basename "$f")"; done
"$python" "$here/check_import.py" "$fixture" "$work/r2" --tp 2 --pp 2
echo "ok: after SIGKILL in step 2 (${kept_before} shard(s) committed), --resume skipped step 1, kept $(grep -c 'resume: keeping' <<<"$log") shard(s), finished bit-identical"

# A second --resume has nothing left to convert: both imports are skipped.
log="$("${mpi[@]}" "$bin" run --resume "$work/r.yaml" 2>&1)"
[ "$(grep -c "\] skipped:" <<<"$log")" -eq 2 ] || { echo "$log"; fail "finished steps not skipped"; }
# A changed step is not skipped: without overwrite: true its output is
# refused before anything runs (tests/integration/pipeline_resume.sh has more).
sed -i 's/tp: 2, pp: 2/tp: 2, pp: 2, dtype: fp32/' "$work/r.yaml"
set +e
log="$("${mpi[@]}" "$bin" run --resume "$work/r.yaml" 2>&1)"
code=$?
set -e
[ "$code" -eq 2 ] && grep -qxF "  $work/r.yaml:4: step 2/3 (import) must run again ($work/r2 was committed with other options: dtype is fp32, was not set), but its output $work/r2 already holds files; add \`overwrite: true\` to step 2 to let it replace $work/r2, or remove $work/r2 yourself" <<<"$log" ||
  { echo "$log"; fail "a changed step was skipped (exit $code)"; }
echo "ok: --resume skips only steps whose committed output matches them"

# --- 4. SIGKILL in a reshard after a verify, then --resume --------------------------
"${mpi[@]}" "$bin" import --quiet --hf-path "$fixture" --out "$work/direct-pp4" --pp 4
cat >"$work/k.yaml" <<YAML
steps:
  - import: {hf_path: $fixture, out: $work/k1, tp: 2}
  - verify: {a: $fixture, b: $work/k1}
  - reshard: {megatron_path: $work/k1, out: $work/k2, pp: 4}
  - export: {megatron_path: $work/k2, hf_path: $work/k3}
YAML
kill_mid_step "$work/k.yaml" "$work/k2.partial" "$work/k.log" "the reshard committed no shard"
[ ! -e "$work/k2" ] && [ ! -e "$work/k3" ] || fail "output committed after SIGKILL"
log="$("${mpi[@]}" "$bin" run --resume "$work/k.yaml" 2>&1)" || { echo "$log"; fail "--resume failed"; }
grep -q "\[1/4 import\] skipped: $work/k1 is committed" <<<"$log" || { echo "$log"; fail "step 1 not skipped"; }
# The verify in between always runs; the reshard is the first unfinished output.
grep -q "\[2/4 verify\] megabridge verify $fixture $work/k1\$" <<<"$log" || { echo "$log"; fail "the verify step did not run"; }
grep -q "\[3/4 reshard\] megabridge reshard .* --resume" <<<"$log" || { echo "$log"; fail "the reshard was not resumed"; }
grep -q "\[3/4 reshard\] resume: keeping" <<<"$log" || { echo "$log"; fail "the reshard kept no shard"; }
for f in "$work"/direct-pp4/*.h5; do cmp "$f" "$work/k2/$(basename "$f")"; done
"$python" "$here/compare_hf.py" "$fixture" "$work/k3"
echo "ok: after SIGKILL in the reshard step, --resume kept $(grep -c 'resume: keeping' <<<"$log") shard(s); shards identical to a direct import, export identical to the fixture"

# --- 5. --resume after a source shard changed ---------------------------------------
cat >"$work/c.yaml" <<YAML
steps:
  - reshard: {megatron_path: $work/k1, out: $work/c1, pp: 2}
YAML
set +e
MEGABRIDGE_TEST_FAIL=1:1 "${mpi[@]}" "$bin" run "$work/c.yaml" >"$work/c.log" 2>&1
code=$?
set -e
[ "$code" -ne 0 ] && [ -d "$work/c1.partial" ] && [ ! -e "$work/c1" ] || { cat "$work/c.log"; fail "the injected failure left no partial output (exit $code)"; }
shard="$(ls "$work"/k1/*.h5 | head -1)"
touch -d '2020-01-01' "$shard"  # same bytes, new identity: as a rewrite in place
set +e
log="$("${mpi[@]}" "$bin" run --resume "$work/c.yaml" 2>&1)"
code=$?
set -e
[ "$code" -eq 2 ] || { echo "$log"; fail "--resume after a source change: exit $code"; }
grep -q "\[1/1 reshard\] .*cannot resume $work/c1.partial: source file $(basename "$shard") changed" <<<"$log" ||
  { echo "$log"; fail "no resume-identity error naming the shard"; }
[ -d "$work/c1.partial" ] && [ ! -e "$work/c1" ] || fail "the refused resume touched the partial output"
echo "ok: a pipeline reshard step's --resume is refused after a source shard changed"

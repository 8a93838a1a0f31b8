#!/usr/bin/env bash
# `megabridge run`: multi-step pipelines in one MPI launch (docs/pipelines.md).
#   1. import -> verify -> reshard -> export -> verify on the MoE fixture: the
#      import and the reshard checked tensor by tensor against the independent
#      numpy reference (check_import.py), the export byte for byte against the
#      original (compare_hf.py); log lines name the step; every output carries
#      its step stamp, listed in its ownership record (.megabridge-output.json);
#      a step may overwrite its own output, and may not write inside its input;
#   2. --dry-run: every step expanded, plan summaries, nothing created;
#   3. schema errors: every problem with file:line, exit 2, nothing run;
#   4. --config for verify and reshard (one-step files), flags overriding them;
#   5. the shipped configs/pipelines/*.yaml pass the schema and the command lines.
#   pipeline_run.sh BIN PYTHON DATA_DIR
set -euo pipefail
bin="$1" python="$2" data="$3"
fixture="$data/qwen35-moe-tiny"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/mb-pipeline-XXXXXX")"
trap 'rm -rf "$work"' EXIT
mpi=(mpirun --allow-run-as-root --oversubscribe -np 3)
fail() { echo "FAIL: $*"; exit 1; }

# --- 1. five steps ------------------------------------------------------------
cat >"$work/p.yaml" <<YAML
vars:
  hf: $fixture
  meg: $work/meg
defaults:
  buffer_mb: 1          # tensors stream through a small buffer
steps:
  - import:
      source: {hf_path: "\${hf}"}
      target: {path: "\${meg}", format: hdf5}
      parallel: {tp: 2, pp: 2, ep: 2}
  - verify: {a: "\${hf}", b: "\${meg}"}
  - reshard: {megatron_path: "\${meg}", out: "\${meg}-tp4", tp: 4, ep: 8, etp: 4}
  - export:  {megatron_path: "\${meg}-tp4", hf_path: "\${meg}-hf"}
  - verify:  {a: "\${hf}", b: "\${meg}-hf"}
YAML
"${mpi[@]}" "$bin" run "$work/p.yaml" >"$work/p.log" 2>&1 || { cat "$work/p.log"; fail "the pipeline failed"; }
for s in "1/5 import" "2/5 verify" "3/5 reshard" "4/5 export" "5/5 verify"; do
  grep -q "\[$s\]" "$work/p.log" || { cat "$work/p.log"; fail "no log line names step [$s]"; }
done
grep -q "\[1/5 import\] import done" "$work/p.log" || fail "the import's summary does not name its step"
grep -q "pipeline $work/p.yaml done: 5 step(s)" "$work/p.log" || fail "no pipeline summary"
[ "$(grep -c 'OK: .* tensors compared, all identical' "$work/p.log")" -eq 2 ] || fail "both verify steps must pass"
"$python" "$here/check_import.py" "$fixture" "$work/meg" --tp 2 --pp 2 --ep 2
"$python" "$here/check_import.py" "$fixture" "$work/meg-tp4" --tp 4 --ep 8 --etp 4
"$python" "$here/compare_hf.py" "$fixture" "$work/meg-hf"
for d in meg meg-tp4 meg-hf; do
  "$python" -c '
import json, sys
j = json.load(open(sys.argv[1]))
assert len(j["fingerprint"]) == 16 and j["command"] in ("import", "reshard", "export"), j
' "$work/$d/.megabridge-step.json" || fail "$d has no valid step stamp"
  [ ! -e "$work/$d.partial" ] || fail "$d.partial left behind"
done
echo "ok: import -> verify -> reshard -> export -> verify in one launch, export byte-identical to the fixture"

# --- 1b. a step's output is megabridge's like a command's -------------------------
# Each committed output's ownership record lists the step stamp (else --overwrite
# would refuse the pipeline's own output), a step may overwrite it, and a step
# whose output lies inside its input is refused before anything is created.
for d in meg meg-tp4 meg-hf; do
  "$python" -c '
import json, sys
m = json.load(open(sys.argv[1] + "/.megabridge-output.json"))
assert m["tool"] == "megabridge" and m["command"] in ("import", "reshard", "export"), m
assert m["entries"].get(".megabridge-step.json") == "file", sorted(m["entries"])
' "$work/$d" || fail "$d: its .megabridge-output.json does not list the step stamp"
done
cat >"$work/again.yaml" <<YAML
steps:
  - reshard: {megatron_path: "$work/meg", out: "$work/meg-tp4", tp: 4, ep: 8, etp: 4, overwrite: true}
YAML
"${mpi[@]}" "$bin" run "$work/again.yaml" >"$work/again.log" 2>&1 ||
  { cat "$work/again.log"; fail "overwrite: true refused the pipeline's own output"; }
"$python" "$here/check_import.py" "$fixture" "$work/meg-tp4" --tp 4 --ep 8 --etp 4
cat >"$work/inside.yaml" <<YAML
steps:
  - reshard: {megatron_path: "$work/meg", out: "$work/meg/inside", tp: 4, ep: 8, etp: 4}
YAML
before="$(cd "$work/meg" && find . | sort)"
set +e
out="$("${mpi[@]}" "$bin" run "$work/inside.yaml" 2>&1)"
code=$?
set -e
[ "$code" -eq 2 ] || { echo "$out"; fail "a step writing inside its input: exit $code"; }
grep -q "refusing to write: output .* lies inside --megatron-path\|refusing to write" <<<"$out" || { echo "$out"; fail "no containment error"; }
[ "$before" = "$(cd "$work/meg" && find . | sort)" ] || fail "the input changed"
echo "ok: step outputs carry an ownership record listing their stamp; overwrite: true replaces them; containment holds in a step"

# --- 2. --dry-run ---------------------------------------------------------------
sed "s|$work/meg|$work/dry|g" "$work/p.yaml" >"$work/dry.yaml"
"${mpi[@]}" "$bin" run --dry-run "$work/dry.yaml" >"$work/dry.out" 2>"$work/dry.err" ||
  { cat "$work/dry.out" "$work/dry.err"; fail "--dry-run failed"; }
grep -q "^# \[1/5 import\] (line 7)" "$work/dry.out" || { cat "$work/dry.out"; fail "step 1 not shown"; }
grep -q "^    hf_path: $fixture\$" "$work/dry.out" || fail "vars not expanded in the dry run"
grep -q "^    buffer_mb: 1\$" "$work/dry.out" || fail "defaults not applied in the dry run"
grep -q "^    tp: 4\$" "$work/dry.out" || fail "step 3's keys not shown"
grep -q "balance    busiest rank writes" "$work/dry.out" || { cat "$work/dry.out"; fail "no plan balance for the import"; }
grep -qE "^ +2 +[0-9]+ +[0-9]+ " "$work/dry.out" || { cat "$work/dry.out"; fail "no bytes for rank 2"; }
grep -q "plan: when step 1 has written $work/dry\$" "$work/dry.out" || fail "step 2's input is step 1's output"
grep -q "plan: when step 3 has written $work/dry-tp4\$" "$work/dry.out" || fail "step 4's input is step 3's output"
for d in dry dry.partial dry-tp4 dry-tp4.partial dry-hf dry-hf.partial; do
  [ ! -e "$work/$d" ] || fail "--dry-run created $d"
done
# A dry run of steps whose inputs exist plans them all: the export's rank balance.
cat >"$work/dry2.yaml" <<YAML
steps:
  - reshard: {megatron_path: $work/meg, out: $work/dry2-tp1, pp: 2}
  - export: {megatron_path: $work/meg, hf_path: $work/dry2-hf, max_shard_size: 100KB}
  - verify: {a: $fixture, b: $work/meg}
YAML
"${mpi[@]}" "$bin" run --dry-run "$work/dry2.yaml" >"$work/dry2.out" 2>&1 || { cat "$work/dry2.out"; fail "dry run 2"; }
grep -q "reshard $work/meg (TP2" "$work/dry2.out" || { cat "$work/dry2.out"; fail "no reshard plan"; }
# (what it reads; bench_smoke.sh checks the figure against the HF headers)
grep -qE "storage --io auto: reads .* \([0-9.]+x the source's tensors\) with the ranks on one node" "$work/dry2.out" ||
  { cat "$work/dry2.out"; fail "no reshard storage reads"; }
grep -q "export $work/meg -> $work/dry2-hf: .* tensors in .* files" "$work/dry2.out" || { cat "$work/dry2.out"; fail "no export plan"; }
[ "$(grep -c "rank .* writes .* GiB" "$work/dry2.out")" -eq 6 ] || fail "reshard and export plans: not 3 ranks each"
grep -q "balance: busiest rank" "$work/dry2.out" || fail "export plan: no balance"
grep -q "verify $fixture with $work/meg (hdf5, TP2·PP2·EP2·ETP1): 860 stored tensors through the mapping" "$work/dry2.out" ||
  { cat "$work/dry2.out"; fail "no verify plan"; }
for d in dry2-tp1 dry2-tp1.partial dry2-hf dry2-hf.partial; do
  [ ! -e "$work/$d" ] || fail "dry run 2 created $d"
done
# A missing input is found by the dry run, exit 2.
printf 'steps:\n  - export: {megatron_path: %s/none, hf_path: %s/x}\n' "$work" "$work" >"$work/dry3.yaml"
set +e
out="$("${mpi[@]}" "$bin" run --dry-run "$work/dry3.yaml" 2>&1)"
code=$?
set -e
[ "$code" -eq 2 ] && grep -q "$work/none" <<<"$out" || { echo "$out"; fail "dry run of a missing input: exit $code"; }
echo "ok: --dry-run expands every step, plans what exists, creates nothing"

# --- 3. schema errors, all at once, nothing run -----------------------------------
cat >"$work/bad.yaml" <<YAML
vars:
  root: $work
defaults:
  buffer_mb: 64
  colour: red
steps:
  - import: {hf_path: "$fixture", out: "\${nope}", tp: two}
  - verify: {a: x, b: y, atol: much}
  - convert: {x: 1}
  - import:
      parallel: {tp: 2, ppp: 4}
      hf_path: "\${env:MB_PIPELINE_TEST_UNSET}"
      out: "\${root}/never"
      device: gpu
      overwrite: maybe
  - export: {megatron_path: "\${root}/meg", hf_path: "\${root}/never2", experts: sideways}
  - reshard: {out: "\${root}/never3"}
bogus: 1
YAML
set +e
out="$("${mpi[@]}" "$bin" run "$work/bad.yaml" 2>&1)"
code=$?
set -e
[ "$code" -eq 2 ] || { echo "$out"; fail "bad pipeline: exit $code, not 2"; }
b="$work/bad.yaml"
for want in \
  "10 problem(s) in $b, nothing was run:" \
  "$b:5: defaults: 'colour' is an option of none of the steps" \
  "$b:7: undefined variable '\${nope}' (defined in vars: root)" \
  "$b:7: step 1 (import): 'tp' must be a whole number, not 'two'" \
  "$b:8: step 2 (verify): 'atol' must be a number, not 'much'" \
  "$b:9: step 3: unknown step 'convert' (expected one of: import, plan, synth, export, verify, reshard, bench)" \
  "$b:11: step 4 (import): unknown key 'parallel.ppp' (expected one of: " \
  "$b:12: undefined variable '\${env:MB_PIPELINE_TEST_UNSET}': MB_PIPELINE_TEST_UNSET is not set in the environment" \
  "$b:14: step 4 (import): bad value 'gpu' for 'device' (expected one of: cpu, cuda, auto)" \
  "$b:15: step 4 (import): 'overwrite' must be true or false, not 'maybe'" \
  "$b:18: unknown key 'bogus' at the top level (expected vars, defaults, steps)"; do
  grep -qF -- "$want" <<<"$out" || { echo "$out"; fail "missing: $want"; }
done
[ "$(grep -c "^\[rank" <<<"$out")" -eq 1 ] || { echo "$out"; fail "the errors must come from rank 0, once"; }
# Once the schema is clean, what the command lines refuse is listed the same way.
sed -i -e '/colour/d' -e '/^bogus/d' -e '/convert/d' -e 's/"\${nope}"/"\${root}\/never0"/' -e 's/tp: two/tp: 2/' \
  -e 's/atol: much/atol: 0/' -e 's/, ppp: 4//' -e 's/\${env:MB_PIPELINE_TEST_UNSET}/x/' -e 's/gpu/cpu/' \
  -e 's/maybe/true/' "$work/bad.yaml"
set +e
out="$("${mpi[@]}" "$bin" run "$work/bad.yaml" 2>&1)"
code=$?
set -e
[ "$code" -eq 2 ] || { echo "$out"; fail "bad command lines: exit $code"; }
grep -qF "2 problem(s) in $b, nothing was run:" <<<"$out" || { echo "$out"; fail "command-line problems not counted"; }
grep -qF "$b:14: step 4 (export): " <<<"$out" && grep -q "sideways" <<<"$out" || { echo "$out"; fail "bad expert layout"; }
grep -qF "$b:15: step 5 (reshard): --megatron-path is required" <<<"$out" || { echo "$out"; fail "missing required key"; }
if ls "$work" | grep -q never; then fail "a step ran despite the errors"; fi
echo "ok: schema and command-line errors reported at once with file:line; nothing ran"

# --- 4. --config for verify and reshard; flags override --------------------------
printf 'a: %s\nb: %s\nverify_checksums: false\n' "$fixture" "$work/meg" >"$work/verify.yaml"
"${mpi[@]}" "$bin" verify --config "$work/verify.yaml" | grep -q "all identical" || fail "verify --config"
printf 'source: {megatron_path: %s}\ntarget: {path: %s}\nparallel: {tp: 1, pp: 2}\n' "$work/meg" "$work/rc" >"$work/reshard.yaml"
"${mpi[@]}" "$bin" reshard --quiet --config "$work/reshard.yaml" --pp 4
"$python" "$here/check_import.py" "$fixture" "$work/rc" --pp 4
[ ! -e "$work/rc/.megabridge-step.json" ] || fail "a single command wrote a pipeline stamp"
echo "ok: verify --config, reshard --config with --pp overriding the file"

# --- 5. the shipped pipelines ----------------------------------------------------
for f in "$root"/configs/pipelines/*.yaml; do
  set +e
  out="$(HF_DIR="$work/nowhere" MEGATRON_DIR="$work/nowhere" "$bin" run --dry-run "$f" 2>&1)"
  set -e
  if grep -q "problem(s) in" <<<"$out"; then echo "$out"; fail "$f does not pass the checks"; fi
  grep -q "^# \[1/" <<<"$out" || { echo "$out"; fail "$f: no step shown"; }
done
echo "ok: every configs/pipelines/*.yaml passes the schema and command-line checks"
# The single-job files are one-step pipelines: each passes the same checks under
# `import --config` and gets as far as looking for its checkpoint.
for f in "$root"/configs/*.yaml; do
  set +e
  out="$("$bin" import --config "$f" --hf-path "$work/nowhere" --out "$work/never-$(basename "$f")" 2>&1)"
  code=$?
  set -e
  [ "$code" -eq 2 ] && grep -q "$work/nowhere/config.json" <<<"$out" || { echo "$out"; fail "$f under import --config"; }
done
echo "ok: every configs/*.yaml is read by import --config"

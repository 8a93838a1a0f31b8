#!/usr/bin/env bash
# `megabridge run --resume` skips a finished step only when nothing it
# depends on changed (docs/pipelines.md, "--resume"). On a 3-step pipeline
# (import -> reshard -> export) over a private copy of the dense fixture:
#   1. a finished pipeline's stamps record the sources and the output as the
#      kernel reports them (checked against stat(1) and find(1));
#   2. unchanged: --resume skips every step, one exact line each;
#   3. a source of step 1 touched: step 1 is not skipped, the line names the
#      file with its old and new times; steps 2 and 3 read what step 1 wrote
#      again and are not skipped either (their sources' identity changed);
#   4. step 2's options changed in the YAML: step 1 skipped, step 2 runs again
#      (the line names the option), step 3 runs again because its source did;
#      the result is still bit-identical to the fixture;
#   5. steps that must run again without `overwrite: true`: refused before
#      anything runs, every such step named with its output; nothing changed;
#   6. a committed output touched afterwards: its step is not skipped.
#   pipeline_resume.sh BIN PYTHON DATA_DIR
set -euo pipefail
bin="$1" python="$2" data="$3"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/mb-piperesume-XXXXXX")"
trap 'rm -rf "$work"' EXIT
mpi=(mpirun --allow-run-as-root --oversubscribe -np 2)
fail() { echo "FAIL: $*"; exit 1; }
# The sources are ours to touch: a copy, never the shared fixture.
cp -r "$data/qwen35-dense-tiny" "$work/hf"

# run_resume YAML: `run --resume`; sets $log and $code.
run_resume() {
  set +e
  log="$("${mpi[@]}" "$bin" run --resume "$1" 2>&1)"
  code=$?
  set -e
}
# has LINE: the log holds exactly this line.
has() { grep -qxF -- "$1" <<<"$log" || { echo "$log"; fail "no line: $1"; }; }
# utc EPOCH.NS -> 2026-12-01T18:05:24.123456789Z
utc() { date -u -d "@$1" +%Y-%m-%dT%H:%M:%S.%NZ; }
# skip_line N CMD OUT: the exact line for a skipped step, the counts read off
# the stamp's lists (which test 1 checks against the filesystem).
skip_line() {
  local counts
  counts="$("$python" -c '
import json, sys
s = json.load(open(sys.argv[1] + "/.megabridge-step.json"))
neutral = {"resume", "overwrite", "log_level", "quiet", "buffer_mb", "device", "io"}
print(len([k for k in s["values"] if k not in neutral]), len(s["sources"]), len(s["output"]))' "$3")"
  read -r o s e <<<"$counts"
  echo "[rank 0] info: [$1/3 $2] skipped: $3 is committed and matches this step ($o option(s), $s source(s), $e output entr(ies) unchanged)"
}

cat >"$work/p.yaml" <<YAML
steps:
  - import: {hf_path: $work/hf, out: $work/m1, tp: 2, overwrite: true}
  - reshard: {megatron_path: $work/m1, out: $work/m2, pp: 2, overwrite: true}
  - export: {megatron_path: $work/m2, hf_path: $work/m3, overwrite: true}
YAML

# --- 1. a finished pipeline and what its stamps record ---------------------------
"${mpi[@]}" "$bin" run "$work/p.yaml" >"$work/first.log" 2>&1 || { cat "$work/first.log"; fail "the pipeline failed"; }
"$python" - "$work" <<'PY'
import json, os, sys
work = sys.argv[1]
def ident(p):
    st = os.stat(p)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}
def listing(d):
    out = set()
    for root, dirs, files in os.walk(d):
        for n in dirs + files:
            rel = os.path.relpath(os.path.join(root, n), d)
            if rel not in (".megabridge-step.json", ".megabridge-output.json", ".megabridge-lock"):
                out.add(rel)
    return out
for step, src in (("m1", None), ("m2", "m1"), ("m3", "m2")):
    s = json.load(open(f"{work}/{step}/.megabridge-step.json"))
    # The output: every entry the directory holds, each as stat reports it.
    assert set(s["output"]) == listing(f"{work}/{step}"), (step, sorted(s["output"]), sorted(listing(f"{work}/{step}")))
    for rel, i in s["output"].items():
        assert i == ident(f"{work}/{step}/{rel}"), (step, rel, i)
    # The sources: what the step read, each as stat reports it.
    for p, i in s["sources"].items():
        assert i == ident(p), (step, p, i)
    if src is None:  # the import read the HF directory and every file it uses
        want = {f"{work}/hf"} | {f"{work}/hf/{n}" for n in os.listdir(f"{work}/hf")}
    else:            # a Megatron source: everything in it
        want = {f"{work}/{src}/{r}" for r in listing(f"{work}/{src}")} | {
            f"{work}/{src}/{n}" for n in (".megabridge-step.json", ".megabridge-output.json")}
    assert set(s["sources"]) == want, (step, sorted(set(s["sources"]) ^ want))
print("stamps match stat and the directory listings")
PY
echo "ok: a finished pipeline's stamps record every source and output entry as stat(1) sees them"

# --- 2. unchanged: every step skipped ----------------------------------------------
run_resume "$work/p.yaml"
[ "$code" -eq 0 ] || { echo "$log"; fail "--resume of a finished pipeline: exit $code"; }
has "$(skip_line 1 import "$work/m1")"
has "$(skip_line 2 reshard "$work/m2")"
has "$(skip_line 3 export "$work/m3")"
[ "$(grep -c 'skipped:' <<<"$log")" -eq 3 ] || { echo "$log"; fail "not exactly one line per step"; }
grep -q "pipeline $work/p.yaml done: 3 step(s) in .* s (3 skipped, committed earlier)$" <<<"$log" || { echo "$log"; fail "no summary"; }
! grep -q "megabridge import\|megabridge reshard\|megabridge export" <<<"$log" || { echo "$log"; fail "a step ran"; }
echo "ok: an unchanged pipeline's --resume skips every step, one line each"

# --- 3. a source of step 1 touched ---------------------------------------------------
src="$work/hf/model.safetensors-00002-of-00003.safetensors"
old_m="$(stat -c %.9Y "$src")" old_c="$(stat -c %.9Z "$src")"
cp "$work/m2/.megabridge-step.json" "$work/m2.stamp" && cp "$work/m3/.megabridge-step.json" "$work/m3.stamp"
touch -d '2020-01-01 00:00:00 UTC' "$src"  # the same bytes, as a file rewritten in place
new_c="$(stat -c %.9Z "$src")"
run_resume "$work/p.yaml"
[ "$code" -eq 0 ] || { echo "$log"; fail "--resume after a source changed: exit $code"; }
has "[rank 0] info: [1/3 import] not skipped: since $work/m1 was committed, source $src changed: ctime $(utc "$old_c") -> $(utc "$new_c"), mtime $(utc "$old_m") -> 2020-01-01T00:00:00.000000000Z"
# Steps 2 and 3 are judged after step 1 wrote its output again: the first
# source each stamp lists (in order) now has another identity.
expect_change() {  # N CMD OUT OLD_STAMP: the line, from the old stamp and stat now
  "$python" - "$@" <<'PY'
import datetime, json, os, sys
n, cmd, out, stamp = sys.argv[1:]
had = json.load(open(stamp))["sources"]
def utc(ns):
    return datetime.datetime.fromtimestamp(ns // 10**9, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 10**9:09d}Z"
for path in sorted(had):
    st = os.stat(path)
    now = {"ctime_ns": st.st_ctime_ns, "inode": st.st_ino, "mtime_ns": st.st_mtime_ns, "size": st.st_size}
    diffs = []
    for f in sorted(now):
        if had[path][f] != now[f]:
            a, b = (utc(had[path][f]), utc(now[f])) if f.endswith("_ns") else (had[path][f], now[f])
            diffs.append(f"{f.removesuffix('_ns')} {a} -> {b}")
    if diffs:
        break
print(f"[rank 0] info: [{n}/3 {cmd}] not skipped: since {out} was committed, source {path} changed: " + ", ".join(diffs), end="")
PY
}
l2="$(expect_change 2 reshard "$work/m2" "$work/m2.stamp")"
l3="$(expect_change 3 export "$work/m3" "$work/m3.stamp")"
# Only the first changed source is named; the others are counted.
grep -qF -- "$l2 (and " <<<"$log" || { echo "$log"; fail "no line: $l2 (and ...)"; }
grep -qF -- "$l3 (and " <<<"$log" || { echo "$log"; fail "no line: $l3 (and ...)"; }
for c in import reshard export; do grep -q "\] megabridge $c " <<<"$log" || { echo "$log"; fail "$c did not run"; }; done
! grep -q '\] skipped:' <<<"$log" || { echo "$log"; fail "a step was skipped"; }
"$python" "$here/compare_hf.py" "$work/hf" "$work/m3" >/dev/null
run_resume "$work/p.yaml"
[ "$code" -eq 0 ] && [ "$(grep -c '\] skipped:' <<<"$log")" -eq 3 ] || { echo "$log"; fail "a second --resume did not skip all 3"; }
echo "ok: a touched source of step 1 re-runs step 1, and steps 2 and 3 through their sources' identity"

# --- 4. step 2's options changed -------------------------------------------------------
sed -i 's/pp: 2, overwrite: true/pp: 4, overwrite: true/' "$work/p.yaml"
cp "$work/m3/.megabridge-step.json" "$work/m3.stamp"
run_resume "$work/p.yaml"
[ "$code" -eq 0 ] || { echo "$log"; fail "--resume after an option changed: exit $code"; }
has "$(skip_line 1 import "$work/m1")"
has "[rank 0] info: [2/3 reshard] not skipped: $work/m2 was committed with other options: pp is 4, was 2"
grep -qF -- "$(expect_change 3 export "$work/m3" "$work/m3.stamp")" <<<"$log" || { echo "$log"; fail "step 3's line"; }
grep -q "\[2/3 reshard\] megabridge reshard .*--pp=4" <<<"$log" || { echo "$log"; fail "step 2 did not run with pp 4"; }
grep -q "\[3/3 export\] megabridge export " <<<"$log" || { echo "$log"; fail "step 3 did not run"; }
"$python" -c 'import json,sys; l = json.load(open(sys.argv[1]))["layout"]; assert l["pp"] == 4, l' "$work/m2/manifest.json"
"$python" "$here/compare_hf.py" "$work/hf" "$work/m3" >/dev/null
echo "ok: a changed option re-runs its step and the step reading its output; the export is still bit-identical"

# --- 5. must run again, but no overwrite: refused before anything runs -------------------
sed -e 's/, overwrite: true//' -e 's/pp: 4/pp: 2/' "$work/p.yaml" >"$work/q.yaml"
for d in m1 m2 m3; do cp "$work/$d/.megabridge-step.json" "$work/$d.before"; done
run_resume "$work/q.yaml"
[ "$code" -eq 2 ] || { echo "$log"; fail "exit $code, not 2"; }
has "[rank 0] error: --resume cannot finish $work/q.yaml: 2 step(s) must run again but would have to replace an output; nothing was run:"
has "  $work/q.yaml:3: step 2/3 (reshard) must run again ($work/m2 was committed with other options: pp is 2, was 4), but its output $work/m2 already holds files; add \`overwrite: true\` to step 2 to let it replace $work/m2, or remove $work/m2 yourself"
has "  $work/q.yaml:4: step 3/3 (export) must run again (its source $work/m2 is written again by step 2), but its output $work/m3 already holds files; add \`overwrite: true\` to step 3 to let it replace $work/m3, or remove $work/m3 yourself"
! grep -q "megabridge import\|megabridge reshard\|megabridge export" <<<"$log" || { echo "$log"; fail "a step ran"; }
for d in m1 m2 m3; do cmp "$work/$d/.megabridge-step.json" "$work/$d.before" || fail "$d changed"; done
[ ! -e "$work/m2.partial" ] && [ ! -e "$work/m3.partial" ] || fail "a refused step staged an output"
echo "ok: steps that would replace a committed output without overwrite: true are named; nothing runs"

# --- 6. an output touched after its commit ----------------------------------------------
touch -d '2020-01-01 00:00:00 UTC' "$work/m3/config.json"
run_resume "$work/p.yaml"
[ "$code" -eq 0 ] || { echo "$log"; fail "exit $code"; }
has "$(skip_line 2 reshard "$work/m2")"
grep -q "^\[rank 0\] info: \[3/3 export\] not skipped: since $work/m3 was committed, output entry $work/m3/config.json changed: ctime .* -> .*, mtime .* -> 2020-01-01T00:00:00.000000000Z$" <<<"$log" ||
  { echo "$log"; fail "no line naming the touched output file"; }
echo "$(date +%s)" >"$work/m3/notes.txt"
run_resume "$work/p.yaml"
has "[rank 0] info: [3/3 export] not skipped: since $work/m3 was committed, $work/m3/notes.txt appeared in it (the step did not write it)"
[ "$code" -eq 2 ] && grep -q "holds notes.txt, which megabridge did not write" <<<"$log" || { echo "$log"; fail "a stranger file in the output was not refused (exit $code)"; }
[ -e "$work/m3/notes.txt" ] || fail "the user's file was removed"
echo "ok: an output changed after its commit is not skipped (and a stranger in it is never removed)"

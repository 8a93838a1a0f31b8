#!/usr/bin/env bash
# Issue 11, the findings about numbers, manifests, ranges, messages and lost
# errors (6, 9, 10, 11, 12). Every refused case asserts:
#   - the exit status (non-zero; 2 for refused input),
#   - the first error line names the problem,
#   - nothing outside --out changed: a checksum listing of the working
#     directory (inputs included) is the same before and after, apart from
#     the job's own <out> and <out>.partial (the staging directory, which a
#     failed job may leave for --resume),
#   - no committed output that looks complete (no <out> at all).
#   safety_robust.sh BIN PYTHON FIXTURE_DIR
set -euo pipefail
bin="$1" py="$2" fixture="$3"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
W="$(mktemp -d "${TMPDIR:-/tmp}/mb-safety-XXXXXX")"
trap 'rm -rf "$W"' EXIT
mpi=(mpirun --allow-run-as-root --oversubscribe -np 2)
mb() { "${mpi[@]}" "$bin" "$@"; }
edit() { "$py" "$here/st_edit.py" "$@"; }
fails=0

# Checksums of every file under $W except <out> and <out>.partial (by name).
listing() {
  (cd "$W" && find . \( -path "./$1" -o -path "./$1.partial" \) -prune -o -type f -print0 | sort -z |
    xargs -0 -r sha256sum)
}

# refused NAME OUT EXPECTED_EXIT PATTERN -- COMMAND...
#   EXPECTED_EXIT: a number, or "nz" for any non-zero status.
#   PATTERN: an extended regex the first error line must match (the first
#   line with "error: ", else the first line of output: CLI11's own format).
refused() {
  local name="$1" outname="$2" want="$3" pattern="$4"
  shift 5
  local before after out code first ok=1
  before="$(listing "$outname")"
  set +e
  out="$("$@" 2>&1)"
  code=$?
  set -e
  after="$(listing "$outname")"
  first="$(grep -m1 -E 'error: ' <<<"$out" || true)"
  [ -n "$first" ] || first="$(head -1 <<<"$out")"
  if [ "$want" = nz ]; then [ "$code" -ne 0 ] || ok=0; else [ "$code" -eq "$want" ] || ok=0; fi
  grep -qE -- "$pattern" <<<"$first" || ok=0
  [ "$before" = "$after" ] || { ok=0; echo "$name: files outside $outname changed"; diff <(echo "$before") <(echo "$after") | head; }
  [ ! -e "$W/$outname" ] || { ok=0; echo "$name: $W/$outname was committed"; }
  if [ "$ok" -eq 1 ]; then
    echo "ok: $name (exit $code): $(cut -c1-220 <<<"$first")"
  else
    echo "FAIL: $name (exit $code, wanted $want and /$pattern/ in the first error line):"
    echo "  first error line: $first"
    echo "$out" | head -15
    fails=$((fails + 1))
  fi
  rm -rf "${W:?}/$outname" "${W:?}/$outname.partial"
}

cp -r "$fixture" "$W/hf"
mb import --quiet --hf-path "$W/hf" --out "$W/meg" --tp 2
shard1="$(basename "$(ls "$W"/hf/*.safetensors | head -1)")"
bf16="$(edit first "$W/hf/$shard1" BF16)"

# --- 6. numbers that don't lie -----------------------------------------------
# verify: an Inf (and a NaN) where the original has a finite value differs
# whatever the tolerances, and the DIFF line says so.
for kind in inf nan; do
  cp -r "$W/hf" "$W/hf-$kind"
  bits=7f80; [ "$kind" = nan ] && bits=7fc0
  edit set "$W/hf-$kind/$shard1" "$bf16" 0 "$bits"
  set +e
  out="$(mb verify "$W/hf" "$W/hf-$kind" --rtol 1e9 --atol 1e9 2>&1)"
  code=$?
  set -e
  diffline="$(grep -m1 '^DIFF' <<<"$out" || true)"
  want="max abs diff inf \(1 pair Inf against another value"
  [ "$kind" = nan ] && want="max abs diff nan \(1 pair NaN against a value"
  if [ "$code" -eq 1 ] && grep -qE "$want" <<<"$diffline" && grep -qF "$bf16" <<<"$diffline"; then
    echo "ok: verify --rtol 1e9 finds the $kind: $diffline"
  else
    echo "FAIL: verify --rtol 1e9 with one $kind (exit $code):"; echo "$out" | head; fails=$((fails + 1))
  fi
done

# A bf16 99840 (0x47c3) overflows fp16 (largest finite 65504).
cp -r "$W/hf" "$W/hf-big"
edit set "$W/hf-big/$shard1" "$bf16" 5 47c3
mb import --quiet --hf-path "$W/hf-big" --out "$W/meg-big" --tp 2
# The job stops at the first tensor that overflows, naming it (export: the HF
# tensor; import: the Megatron tensor it feeds) and the count.
overflow="1 element\(s\) overflow to Inf when cast from BF16 to F16 \(e\.g\. 99840"
refused "export --dtype fp16 overflows" hf16 1 "error: exporting $bf16: $overflow at element 5; the largest finite F16 is 65504\): pass --allow-overflow" -- \
  mb export --megatron-path "$W/meg-big" --hf-path "$W/hf16" --dtype fp16
refused "import --dtype fp16 overflows" meg16 1 "error: writing language_model.embedding.word_embeddings.weight of mp_rank_00_000_000.h5: $overflow" -- \
  mb import --hf-path "$W/hf-big" --out "$W/meg16" --tp 2 --dtype fp16
refused "import --dtype fp16 --read-once overflows" meg16 1 "error: language_model.embedding.word_embeddings.weight: 1 element\(s\) overflow to Inf when cast from BF16 to F16" -- \
  mb import --hf-path "$W/hf-big" --out "$W/meg16" --tp 2 --dtype fp16 --read-once
refused "import --dtype fp16 torch_dist overflows" meg16 1 "error: writing language_model.embedding.word_embeddings.weight .*: $overflow" -- \
  mb import --hf-path "$W/hf-big" --out "$W/meg16" --tp 2 --dtype fp16 --format torch_dist
# Allowed explicitly, the value is written as fp16 +Inf.
mb export --quiet --megatron-path "$W/meg-big" --hf-path "$W/hf16" --dtype fp16 --allow-overflow
got="$(edit get "$W/hf16/$shard1" "$bf16" 5)"
if [ "$got" = "7c00 F16" ]; then echo "ok: --allow-overflow writes fp16 +Inf (7c00)"; else
  echo "FAIL: --allow-overflow wrote $got"; fails=$((fails + 1)); fi
rm -rf "$W/hf16"

# --- 9. the manifest is checked against its tensors --------------------------
edit_manifest() {  # edit_manifest DIR PYTHON-STATEMENT (on m)
  "$py" - "$1/manifest.json" "$2" <<'PY'
import json, sys
path, stmt = sys.argv[1], sys.argv[2]
m = json.load(open(path))
exec(stmt)
json.dump(m, open(path, "w"), indent=1)
PY
}
cp -r "$W/meg" "$W/meg-wide"
edit_manifest "$W/meg-wide" 'm["model"]["hf_config"]["text_config"]["hidden_size"] = 128'
hidden="model.hf_config says hidden_size = 128, but the recorded tensors have 64"
refused "export of an edited hidden_size" hf-out 2 "$hidden" -- \
  mb export --megatron-path "$W/meg-wide" --hf-path "$W/hf-out"
refused "verify of an edited hidden_size" none 2 "$hidden" -- mb verify "$W/hf" "$W/meg-wide"
refused "reshard of an edited hidden_size" meg-out 2 "$hidden" -- \
  mb reshard --megatron-path "$W/meg-wide" --out "$W/meg-out" --pp 2
cp -r "$W/meg" "$W/meg-heads"
edit_manifest "$W/meg-heads" 'm["model"]["hf_config"]["text_config"]["num_attention_heads"] = 4'
refused "export of an edited num_attention_heads" hf-out 2 "num_attention_heads = 4, but the recorded tensors have 8" -- \
  mb export --megatron-path "$W/meg-heads" --hf-path "$W/hf-out"
cp -r "$W/meg" "$W/meg-layers"
edit_manifest "$W/meg-layers" 'm["model"]["hf_config"]["text_config"]["num_hidden_layers"] = 4; m["model"]["hf_config"]["text_config"]["layer_types"] = m["model"]["hf_config"]["text_config"]["layer_types"][:4]'
refused "export of an edited num_hidden_layers" hf-out 2 "num_hidden_layers = 4, but the recorded tensors have 8 decoder layers" -- \
  mb export --megatron-path "$W/meg-layers" --hf-path "$W/hf-out"

# --- 10. numeric options are range-checked ------------------------------------
refused "--max-shard-size 99999999999999999999GB" hf-out 2 "max-shard-size: size '99999999999999999999GB' is out of range" -- \
  mb export --megatron-path "$W/meg" --hf-path "$W/hf-out" --max-shard-size 99999999999999999999GB
refused "--max-shard-size inf" hf-out 2 "size 'inf' is out of range" -- \
  mb export --megatron-path "$W/meg" --hf-path "$W/hf-out" --max-shard-size inf
refused "--max-shard-size 1e-30" hf-out 2 "size '1e-30' is out of range" -- \
  mb export --megatron-path "$W/meg" --hf-path "$W/hf-out" --max-shard-size 1e-30
for v in 0 1048577 17592186044416 18446744073709551615 99999999999999999999; do
  refused "import --buffer-mb $v" meg-out 2 "buffer-mb.*$v" -- \
    mb import --hf-path "$W/hf" --out "$W/meg-out" --buffer-mb "$v"
done
refused "export --buffer-mb 17592186044416" hf-out 2 "buffer-mb.*17592186044416" -- \
  mb export --megatron-path "$W/meg" --hf-path "$W/hf-out" --buffer-mb 17592186044416
refused "reshard --buffer-mb 0" meg-out 2 "buffer-mb.*0" -- \
  mb reshard --megatron-path "$W/meg" --out "$W/meg-out" --buffer-mb 0
refused "verify --buffer-mb 0" none 2 "buffer-mb.*0" -- mb verify "$W/hf" "$W/meg" --buffer-mb 0
for opt in "--tp 0" "--pp 0" "--ep 99999999999999999999" "--etp 1048577" "--first-stage-layers 0"; do
  refused "import $opt" meg-out 2 "${opt%% *}.*${opt##* }" -- \
    mb import --hf-path "$W/hf" --out "$W/meg-out" $opt
done
refused "reshard --tp 0" meg-out 2 "tp.*0" -- mb reshard --megatron-path "$W/meg" --out "$W/meg-out" --tp 0
refused "verify --rtol -1" none 2 "--rtol -1 is out of range" -- mb verify "$W/hf" "$W/meg" --rtol -1
refused "verify --atol nan" none 2 "--atol nan is out of range" -- mb verify "$W/hf" "$W/meg" --atol nan
printf 'source: {hf_path: %s}\ntarget: {path: %s}\nbuffer_mb: 17592186044416\n' "$W/hf" "$W/meg-out" >"$W/job.yaml"
refused "job file buffer_mb 2^44" meg-out 2 "job.yaml: buffer_mb 17592186044416 is out of range" -- \
  mb import --config "$W/job.yaml"

printf 'source: {megatron_path: %s}\ntarget: {hf_path: %s, max_shard_size: 1e99GB}\n' "$W/meg" "$W/hf-out" >"$W/export.yaml"
refused "job file max_shard_size 1e99GB" hf-out 2 "export.yaml: target.max_shard_size: size '1e99GB' is out of range" -- \
  mb export --config "$W/export.yaml"

# --- 11. messages that name the real problem ----------------------------------
cp -r "$W/hf" "$W/hf-dup"
edit dup "$W/hf-dup/$shard1"
firstname="$(edit first "$W/hf/$shard1")"
refused "a duplicated header key" meg-out 2 "$shard1: the header lists '$firstname' twice \(a duplicated key\)" -- \
  mb import --hf-path "$W/hf-dup" --out "$W/meg-out" --tp 2
cp -r "$W/meg" "$W/meg-swap"
mv "$W/meg-swap/mp_rank_00_000_000.h5" "$W/meg-swap/tmp.h5"
mv "$W/meg-swap/mp_rank_01_000_000.h5" "$W/meg-swap/mp_rank_00_000_000.h5"
mv "$W/meg-swap/tmp.h5" "$W/meg-swap/mp_rank_01_000_000.h5"
refused "two swapped shard files" hf-out 2 "mp_rank_0[01]_000_000.h5 holds the shard of rank \(tp [01], pp 0, ep 0\), whose file is mp_rank_0[01]_000_000.h5, but its name is that of rank \(tp [01], pp 0, ep 0\): shard files were renamed or swapped" -- \
  mb export --megatron-path "$W/meg-swap" --hf-path "$W/hf-out"
cp -r "$W/meg" "$W/meg-lie"
edit_manifest "$W/meg-lie" 'm["layout"]["tp"] = 1; m["layout"]["pp"] = 2'
refused "a manifest whose layout lies" hf-out 2 "it lists mp_rank_01_000_000.h5 \(1 file in all\) that layout TP1·PP2·EP1·ETP1 does not have, and it does not list mp_rank_00_001_000.h5" -- \
  mb export --megatron-path "$W/meg-lie" --hf-path "$W/hf-out"
set +e
MEGABRIDGE_TEST_FAIL=1:2 mb import --quiet --hf-path "$W/hf" --out "$W/meg-unfinished" --tp 2 >/dev/null 2>&1
set -e
[ -d "$W/meg-unfinished.partial" ] || { echo "FAIL: no staging directory to verify"; fails=$((fails + 1)); }
refused "verify of <out>.partial" none 2 "meg-unfinished.partial is an unfinished output.*resume it" -- \
  mb verify "$W/hf" "$W/meg-unfinished.partial"
rm -rf "$W/meg-unfinished.partial"

# --- 12. no error is lost ------------------------------------------------------
# An export whose rank 1 fails: its error line reaches the user, a last line
# names the per-rank log in the staging directory, and the log holds it.
set +e
out="$(MEGABRIDGE_TEST_FAIL=1:2 mb export --megatron-path "$W/meg" --hf-path "$W/hf-fail" 2>&1)"
code=$?
set -e
logfile="$W/hf-fail.partial/.megabridge-errors/rank-1.log"
if [ "$code" -ne 0 ] && grep -q '\[rank 1\] error: .*injected failure on rank 1' <<<"$out" &&
  grep -qF "[rank 1] error: rank 1 stops the job; this error is also kept in $logfile" <<<"$out" &&
  grep -q 'error: .*injected failure on rank 1' "$logfile" && [ ! -e "$W/hf-fail" ]; then
  echo "ok: a failing rank's error is shown and kept in $(basename "$logfile") (exit $code)"
else
  echo "FAIL: the failing rank's error was not shown or kept (exit $code):"; echo "$out" | head -20
  fails=$((fails + 1))
fi
# A resumed import that then succeeds leaves no error log in its output.
set +e
MEGABRIDGE_TEST_FAIL=1:2 mb import --quiet --hf-path "$W/hf" --out "$W/meg-resumed" --tp 2 >/dev/null 2>&1
set -e
ls "$W"/meg-resumed.partial/.megabridge-errors/rank-1.log >/dev/null || { echo "FAIL: no rank log"; fails=$((fails + 1)); }
mb import --quiet --resume --hf-path "$W/hf" --out "$W/meg-resumed" --tp 2
if [ -e "$W/meg-resumed/.megabridge-errors" ]; then echo "FAIL: error logs committed"; fails=$((fails + 1)); else
  echo "ok: a resumed import commits without the earlier error log"; fi

if [ "$fails" -ne 0 ]; then echo "$fails case(s) failed"; exit 1; fi
echo "all safety cases passed"

#!/usr/bin/env bash
# Issue 11, the path findings: a careless user's typo or a second job must
# never cost data. One case per finding (1, 2, 3, 4, 5, 7, 8); each asserts
# the exit status, the first error line naming the problem, that nothing
# outside --out changed (a listing of names, types and link targets plus a
# sha256 of every file, before and after), and that no output that looks
# complete was committed.
#   safety_paths.sh BIN FIXTURE_DIR
set -euo pipefail
bin="$1" fixture="$2"
work="$(mktemp -d "${TMPDIR:-/tmp}/mb-safety-XXXXXX")"
hold_pid=""
cleanup() {
  [ -n "$hold_pid" ] && kill -9 "$hold_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
mpi=(mpirun --allow-run-as-root --oversubscribe -np 2)
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# Every entry under a directory (name, type, link target), then the sha256 of
# every regular file. The content of an output lock file is left out: it
# records who last held the lock, which is megabridge's own bookkeeping.
snapshot() {
  (cd "$1" && find . -printf '%p %y %l\n' | LC_ALL=C sort &&
    find . -type f ! -name .megabridge-lock -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum)
}

# refused NAME CODE PATTERN DIR -- command...: the command exits with CODE,
# its first error line (verify: its first FILE problem) matches PATTERN
# (grep -E), and DIR is unchanged.
refused() {
  local name="$1" want="$2" pattern="$3" dir="$4"
  shift 5
  local before after out code first
  before="$(snapshot "$dir")"
  set +e
  out="$(timeout 120 "$@" 2>&1)"
  code=$?
  set -e
  after="$(snapshot "$dir")"
  first="$(grep -m1 -E 'error:|^FILE ' <<<"$out" || true)"
  if [ "$code" -ne "$want" ]; then
    fail "$name: exit $code, wanted $want"; echo "$out" | head -15; return
  fi
  if ! grep -qE -- "$pattern" <<<"$first"; then
    fail "$name: first error line does not match /$pattern/: $first"; echo "$out" | head -15; return
  fi
  if [ "$before" != "$after" ]; then
    fail "$name: something outside the output changed:"; diff <(echo "$before") <(echo "$after") | head -20; return
  fi
  echo "ok: $name: $(cut -c1-220 <<<"$first")"
}

# No directory that looks like a finished conversion (a manifest or an index).
not_committed() {
  if [ -e "$1/manifest.json" ] || [ -e "$1/model.safetensors.index.json" ] || [ -e "$1/.megabridge-output.json" ]; then
    fail "$1 looks like a complete output after a refused run"
  fi
}

"${mpi[@]}" "$bin" import --quiet --hf-path "$fixture" --out "$work/ref" --tp 2

# --- 1. An output that equals, contains or lies inside an input ------------
mkdir -p "$work/c1/data/other-run"
cp -r "$fixture" "$work/c1/data/hf"
echo "an unrelated run" >"$work/c1/data/other-run/notes.txt"
cp -r "$work/ref" "$work/c1/meg"
ln -s data/hf "$work/c1/hf-link"
refused "1: import --out data (holding --hf-path data/hf) --overwrite" 2 \
  "refusing to write: output .*/c1/data contains --hf-path .*/c1/data/hf" "$work/c1" -- \
  "${mpi[@]}" "$bin" import --hf-path "$work/c1/data/hf" --out "$work/c1/data" --overwrite --tp 2
refused "1: import --out equal to --hf-path --overwrite" 2 "output .* is the same path as --hf-path" "$work/c1" -- \
  "${mpi[@]}" "$bin" import --hf-path "$work/c1/data/hf" --out "$work/c1/data/hf" --overwrite
refused "1: import --out a symlink to --hf-path" 2 "output .*hf-link \(really .*/data/hf\) is the same path as --hf-path" "$work/c1" -- \
  "${mpi[@]}" "$bin" import --hf-path "$work/c1/data/hf" --out "$work/c1/hf-link" --overwrite
refused "1: import --out inside --hf-path via .." 2 "lies inside --hf-path" "$work/c1" -- \
  "${mpi[@]}" "$bin" import --hf-path "$work/c1/data/hf" --out "$work/c1/data/other-run/../hf/meg"
refused "1: export --hf-path equal to --megatron-path --overwrite" 2 \
  "output .*/c1/meg is the same path as --megatron-path" "$work/c1" -- \
  "${mpi[@]}" "$bin" export --megatron-path "$work/c1/meg" --hf-path "$work/c1/meg" --overwrite
refused "1: export --hf-path containing --megatron-path" 2 "contains --megatron-path" "$work/c1" -- \
  "${mpi[@]}" "$bin" export --megatron-path "$work/c1/meg" --hf-path "$work/c1" --overwrite
refused "1: reshard --out inside --megatron-path" 2 "lies inside --megatron-path" "$work/c1" -- \
  "${mpi[@]}" "$bin" reshard --megatron-path "$work/c1/meg" --out "$work/c1/meg/tp1" --tp 1 --overwrite
refused "1: synth --out holding its --hf-config" 2 "contains --hf-config" "$work/c1" -- \
  "$bin" synth --hf-config "$work/c1/data/hf/config.json" --out "$work/c1/data/hf"
refused "1: bench --dir holding its --hf-config" 2 "--dir .* contains --hf-config" "$work/c1" -- \
  "$bin" bench --hf-config "$work/c1/data/hf/config.json" --dir "$work/c1/data" --layers 1
refused "1: bench --dir with files bench did not write" 2 "already holds files that bench did not write" "$work/c1" -- \
  "$bin" bench --hf-config "$fixture/config.json" --dir "$work/c1/data" --layers 1
[ -f "$work/c1/data/hf/model.safetensors-00001-of-00003.safetensors" ] || fail "1: the HF checkpoint is gone"

# --- 2. Two jobs on the same output ----------------------------------------
# Job A takes the lock and is held there by the test hook; job B must fail at
# once naming A's pid, host and start time, and change nothing.
mkdir -p "$work/c2/hold"
MEGABRIDGE_TEST_HOLD_LOCK="$work/c2/hold" "${mpi[@]}" "$bin" import --quiet --hf-path "$fixture" \
  --out "$work/c2/meg" --tp 2 >"$work/c2/a.log" 2>&1 &
hold_pid=$!
for _ in $(seq 1 1200); do [ -s "$work/c2/hold/locked" ] && break; sleep 0.05; done
if [ ! -s "$work/c2/hold/locked" ]; then
  fail "2: job A never took the lock"; cat "$work/c2/a.log"
else
  apid="$(cat "$work/c2/hold/locked")"
  host="$(hostname)"
  start=$(date +%s%N)
  refused "2: a second import on the same --out" 2 \
    "$work/c2/meg is being written by pid $apid on host $host since 20[0-9-]+T[0-9:]+Z" "$work/c2" -- \
    "${mpi[@]}" "$bin" import --hf-path "$fixture" --out "$work/c2/meg" --tp 2
  echo "   (refused in $(( ($(date +%s%N) - start) / 1000000 )) ms)"
  refused "2: ... with --overwrite" 2 "is being written by pid $apid" "$work/c2" -- \
    "${mpi[@]}" "$bin" import --hf-path "$fixture" --out "$work/c2/meg" --tp 2 --overwrite
  refused "2: ... with --resume" 2 "is being written by pid $apid" "$work/c2" -- \
    "${mpi[@]}" "$bin" import --hf-path "$fixture" --out "$work/c2/meg" --tp 2 --resume
  refused "2: an export into the same directory" 2 "is being written by pid $apid" "$work/c2" -- \
    "${mpi[@]}" "$bin" export --megatron-path "$work/ref" --hf-path "$work/c2/meg"
  [ ! -e "$work/c2/meg" ] || fail "2: an output was committed while job A held the lock"
  touch "$work/c2/hold/release"
  if wait "$hold_pid"; then
    hold_pid=""
    "${mpi[@]}" "$bin" verify --quiet "$fixture" "$work/c2/meg" >/dev/null || fail "2: job A's output does not verify"
    [ ! -e "$work/c2/meg.partial" ] || fail "2: staging left after job A committed"
    echo "ok: 2: job A finished and verifies"
  else
    hold_pid=""
    fail "2: job A failed after the refused jobs"; cat "$work/c2/a.log"
  fi
  # A job killed while it holds the lock leaves its staging; the kernel drops
  # the lock, and the next job removes the dead job's files and succeeds.
  rm -f "$work/c2/hold/locked" "$work/c2/hold/release"
  MEGABRIDGE_TEST_HOLD_LOCK="$work/c2/hold" "${mpi[@]}" "$bin" import --quiet --hf-path "$fixture" \
    --out "$work/c2/meg2" --tp 2 >"$work/c2/a2.log" 2>&1 &
  hold_pid=$!
  for _ in $(seq 1 1200); do [ -s "$work/c2/hold/locked" ] && break; sleep 0.05; done
  kill -9 "$(cat "$work/c2/hold/locked")"
  wait "$hold_pid" || true
  hold_pid=""
  [ -e "$work/c2/meg2.partial/.megabridge-lock" ] || fail "2: the killed job left no staging"
  out="$("${mpi[@]}" "$bin" import --hf-path "$fixture" --out "$work/c2/meg2" --tp 2 2>&1)" ||
    { fail "2: import after a killed job failed"; echo "$out"; }
  grep -q "removed the unfinished output a stopped job left in $work/c2/meg2.partial" <<<"$out" ||
    fail "2: the dead job's staging was not reported as removed"
  cmp -s "$work/c2/meg2/mp_rank_01_000_000.h5" "$work/ref/mp_rank_01_000_000.h5" ||
    fail "2: the import after a killed job differs from the reference"
  echo "ok: 2: a killed job's lock is released; the next job cleans its staging and succeeds"
fi

# --- 3. --resume after the source changed ----------------------------------
mkdir -p "$work/c3"
cp -r "$fixture" "$work/c3/hf"
MEGABRIDGE_TEST_FAIL=1:80 "${mpi[@]}" "$bin" import --quiet --hf-path "$work/c3/hf" --out "$work/c3/meg" \
  --tp 2 --pp 2 >/dev/null 2>&1 && fail "3: the injected failure did not stop the import"
ls "$work"/c3/meg.partial/*.done >/dev/null 2>&1 || fail "3: the interrupted import committed no shard"
# (rank 1 fails in its second shard, after its first, 72 tensors, was committed)
# Rewrite the weights in place: same names, shapes, headers and sizes.
shard="model.safetensors-00002-of-00003.safetensors"
python3 - "$work/c3/hf/$shard" <<'PY'
import json, struct, sys
p = sys.argv[1]
data = bytearray(open(p, "rb").read())
n = struct.unpack("<Q", data[:8])[0]
for i in range(8 + n, len(data), 2):
    data[i] ^= 0x01
open(p, "r+b").write(data)
PY
refused "3: --resume after a source file was rewritten in place" 2 \
  "cannot resume .*/c3/meg.partial: source file $shard changed \(" "$work/c3" -- \
  "${mpi[@]}" "$bin" import --resume --hf-path "$work/c3/hf" --out "$work/c3/meg" --tp 2 --pp 2
[ ! -e "$work/c3/meg" ] || fail "3: an output was committed"
# Without --resume the job starts over and is exact.
"${mpi[@]}" "$bin" import --quiet --hf-path "$work/c3/hf" --out "$work/c3/meg" --tp 2 --pp 2
"${mpi[@]}" "$bin" verify --quiet "$work/c3/hf" "$work/c3/meg" >/dev/null || fail "3: the fresh import does not verify"
echo "ok: 3: without --resume the import starts over and verifies against the new source"

# --- 4. --overwrite and a user's <out>.old; directories that are not ours ---
mkdir -p "$work/c4/meg.old"
echo "my scratch" >"$work/c4/meg.old/notes.txt"
"${mpi[@]}" "$bin" import --quiet --hf-path "$fixture" --out "$work/c4/meg" --tp 2
before="$(cd "$work/c4" && snapshot meg.old)"
"${mpi[@]}" "$bin" import --quiet --hf-path "$fixture" --out "$work/c4/meg" --tp 1 --overwrite ||
  fail "4: --overwrite of our own output failed"
[ "$before" = "$(cd "$work/c4" && snapshot meg.old)" ] || fail "4: the user's meg.old changed"
[ "$(ls "$work/c4" | LC_ALL=C sort | tr '\n' ' ')" = "meg meg.old " ] || fail "4: left beside the output: $(ls "$work/c4")"
[ -e "$work/c4/meg/mp_rank_00_000_000.h5" ] && [ ! -e "$work/c4/meg/mp_rank_01_000_000.h5" ] || fail "4: not replaced"
echo "ok: 4: --overwrite replaced our output and left meg.old alone"
mkdir -p "$work/c4/user"
echo "weights" >"$work/c4/user/model.bin"
refused "4: --overwrite of a directory megabridge did not write" 2 \
  "c4/user was not written by megabridge \(it has no .megabridge-output.json\)" "$work/c4" -- \
  "${mpi[@]}" "$bin" import --hf-path "$fixture" --out "$work/c4/user" --overwrite
echo "mine" >"$work/c4/meg/hf/notes.txt"
refused "4: --overwrite of our output holding a user's file" 2 \
  "c4/meg holds hf/notes.txt, which megabridge did not write" "$work/c4" -- \
  "${mpi[@]}" "$bin" export --megatron-path "$work/ref" --hf-path "$work/c4/meg" --overwrite
not_committed "$work/c4/user"

# --- 5. Only the known side files, only regular files inside the checkpoint --
mkdir -p "$work/c5"
cp -r "$fixture" "$work/c5/hf"
head -c 1048576 /dev/urandom >"$work/c5/hf/pytorch_model.bin"
echo "# readme" >"$work/c5/hf/README.md"
echo "secret" >"$work/c5/secret.txt"
ln -s ../secret.txt "$work/c5/hf/tokenizer.json"
mkfifo "$work/c5/hf/vocab.json"
before="$(snapshot "$work/c5")"
out="$(timeout 120 "${mpi[@]}" "$bin" import --hf-path "$work/c5/hf" --out "$work/c5/meg" --tp 2 2>&1)" ||
  { fail "5: import failed"; echo "$out"; }
[ "$before" = "$(snapshot "$work/c5" | grep -v '^\./meg\b\|  \./meg/')" ] || fail "5: something outside the output changed"
got="$(ls -A "$work/c5/meg/hf" | LC_ALL=C sort | tr '\n' ' ')"
want="chat_template.jinja config.json generation_config.json preprocessor_config.json tokenizer_config.json "
[ "$got" = "$want" ] || fail "5: hf/ holds [$got], wanted [$want]"
grep -q "not copying tokenizer.json: a symlink to $(realpath "$work")/c5/secret.txt, outside the checkpoint" <<<"$out" ||
  fail "5: no warning for the symlink out of the checkpoint"
grep -q "not copying vocab.json: not a regular file" <<<"$out" || fail "5: no warning for the FIFO"
"${mpi[@]}" "$bin" export --quiet --megatron-path "$work/c5/meg" --hf-path "$work/c5/back"
got="$(ls -A "$work/c5/back" | grep -v '\.safetensors$' | LC_ALL=C sort | tr '\n' ' ')"
want=".megabridge-output.json chat_template.jinja config.json generation_config.json model.safetensors.index.json preprocessor_config.json tokenizer_config.json "
[ "$got" = "$want" ] || fail "5: the export holds [$got], wanted [$want]"
echo "ok: 5: only the known side files were carried (not pytorch_model.bin, README.md, the symlink or the FIFO)"

# --- 7. A symlinked --out ----------------------------------------------------
mkdir -p "$work/c7/big"
ln -s big/meg "$work/c7/meg"
cp -r "$fixture" "$work/c7/hf"
before="$(snapshot "$work/c7/hf")"
"${mpi[@]}" "$bin" import --quiet --hf-path "$work/c7/hf" --out "$work/c7/meg" --tp 2
[ -L "$work/c7/meg" ] || fail "7: the symlink was replaced"
[ -f "$work/c7/big/meg/manifest.json" ] || fail "7: the output is not in the link's target"
[ "$(ls -A "$work/c7" | tr '\n' ' ')" = "big hf meg " ] && [ "$(ls -A "$work/c7/big" | tr '\n' ' ')" = "meg " ] ||
  fail "7: staging or aside left: $(ls -A "$work/c7" "$work/c7/big")"
"${mpi[@]}" "$bin" import --quiet --hf-path "$work/c7/hf" --out "$work/c7/meg" --tp 1 --overwrite
[ "$before" = "$(snapshot "$work/c7/hf")" ] || fail "7: the HF input changed"
[ -L "$work/c7/meg" ] && [ "$(readlink "$work/c7/meg")" = "big/meg" ] || fail "7: --overwrite replaced the symlink"
python3 -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["layout"]["tp"] != 1)' "$work/c7/big/meg/manifest.json" ||
  fail "7: --overwrite did not write through the link"
"${mpi[@]}" "$bin" verify --quiet "$fixture" "$work/c7/meg" >/dev/null || fail "7: the output through the link does not verify"
echo "ok: 7: --out through a symlink writes into its target, twice, and the link stays"

# --- 8. A FIFO in place of an input file -------------------------------------
mkdir -p "$work/c8"
cp -r "$fixture" "$work/c8/hf_cfg"
rm "$work/c8/hf_cfg/config.json"
mkfifo "$work/c8/hf_cfg/config.json"
refused "8: a FIFO as config.json" 2 "c8/hf_cfg/config.json is a FIFO \(named pipe\), not a regular file" "$work/c8" -- \
  "${mpi[@]}" "$bin" import --hf-path "$work/c8/hf_cfg" --out "$work/c8/out" --tp 2
cp -r "$fixture" "$work/c8/hf_shard"
rm "$work/c8/hf_shard/model.safetensors-00003-of-00003.safetensors"
mkfifo "$work/c8/hf_shard/model.safetensors-00003-of-00003.safetensors"
refused "8: a FIFO as a safetensors shard" 2 "model.safetensors-00003-of-00003.safetensors is a FIFO" "$work/c8" -- \
  "${mpi[@]}" "$bin" import --hf-path "$work/c8/hf_shard" --out "$work/c8/out" --tp 2
cp -r "$work/ref" "$work/c8/meg"
victim="$(cd "$work/c8/meg" && ls *.h5 | head -1)"
rm "$work/c8/meg/$victim"
mkfifo "$work/c8/meg/$victim"
refused "8: a FIFO as an HDF5 shard (export)" 2 "shard file .*/c8/meg/$victim is a FIFO" "$work/c8" -- \
  "${mpi[@]}" "$bin" export --megatron-path "$work/c8/meg" --hf-path "$work/c8/out"
refused "8: a FIFO as an HDF5 shard (verify)" 1 "shard file .*/c8/meg/$victim is a FIFO" "$work/c8" -- \
  "${mpi[@]}" "$bin" verify "$fixture" "$work/c8/meg"
not_committed "$work/c8/out"

if [ "$fails" -ne 0 ]; then
  echo "$fails safety case(s) failed"
  exit 1
fi
echo "OK: inputs are safe from typos, second jobs, changed sources, FIFOs and symlinks"

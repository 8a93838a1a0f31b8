#!/usr/bin/env bash
# Stress run for intermittent failures (issue 11, finding 12: an export that
# exited 1 with no error line). Each iteration imports a fixture at 4 ranks
# (TP2·PP2, HDF5) and exports it back, while a load generator keeps the disk
# and the CPUs busy beside it. It records, per iteration, the exit status of
# both commands, whether a failing command printed its "[rank N] error:" line
# (a failure without one is a LOST message), whether the rank's error log was
# left in the staging directory, and whether a successful export is byte-
# identical to the original (a silent corruption would show here).
#
#   scripts/stress.sh [ITERATIONS] [WORKDIR]
#     ITERATIONS  default 500
#     WORKDIR     default /tmp/mb-stress; results in WORKDIR/summary.txt,
#                 one line per iteration in WORKDIR/iterations.tsv, the logs
#                 and the partial output of every failure in WORKDIR/failures/.
#   env: MB_BIN (default build/apps/megabridge), MB_FIXTURE (default
#        tests/data/qwen35-dense-tiny), MB_RANKS (4), MB_LAYOUT ("--tp 2 --pp 2"),
#        MB_LOAD (cp | stress-ng | none; default: stress-ng if installed, else cp),
#        MB_DEADLINE (a `date -d` time: stop starting iterations after it).
# Exit status: 0 when every iteration passed, 1 otherwise.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
iters="${1:-500}"
work="${2:-/tmp/mb-stress}"
bin="${MB_BIN:-$root/build/apps/megabridge}"
fixture="${MB_FIXTURE:-$root/tests/data/qwen35-dense-tiny}"
ranks="${MB_RANKS:-4}"
read -r -a layout <<<"${MB_LAYOUT:---tp 2 --pp 2}"
load="${MB_LOAD:-}"
if [ -z "$load" ]; then command -v stress-ng >/dev/null && load=stress-ng || load=cp; fi
deadline=""
[ -n "${MB_DEADLINE:-}" ] && deadline="$(date -d "$MB_DEADLINE" +%s)"
[[ "$iters" =~ ^[0-9]+$ ]] && [ "$iters" -gt 0 ] || { echo "stress: bad iteration count '$iters'" >&2; exit 2; }
[ -x "$bin" ] || { echo "stress: no binary at $bin (build first, or set MB_BIN)" >&2; exit 2; }

mkdir -p "$work/failures"
run="$work/run"
mpi=(mpirun --allow-run-as-root --oversubscribe -np "$ranks")

# The load beside the conversions: a parallel copy of a 256 MiB file in a loop
# (page cache, disk and CPU), or stress-ng's CPU, I/O and VM workers.
load_pids=()
start_load() {
  case "$load" in
    none) ;;
    stress-ng)
      stress-ng --cpu 2 --io 1 --hdd 1 --hdd-bytes 256M --temp-path "$work" --timeout 0 \
        >"$work/load.log" 2>&1 &
      load_pids+=($!)
      ;;
    cp)
      mkdir -p "$work/load"
      [ -f "$work/load/blob" ] || head -c $((256 << 20)) /dev/urandom >"$work/load/blob"
      for k in 1 2; do
        (while :; do cp "$work/load/blob" "$work/load/copy$k" && rm -f "$work/load/copy$k"; done) \
          >/dev/null 2>&1 &
        load_pids+=($!)
      done
      ;;
    *) echo "stress: unknown MB_LOAD '$load'" >&2; exit 2 ;;
  esac
}
stop_load() {
  # The loops first, then the cp each may be running (by parent pid).
  for p in "${load_pids[@]}"; do kill -- "$p" 2>/dev/null; pkill -P "$p" 2>/dev/null; done
  for p in "${load_pids[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$work/load"
}
trap 'stop_load; exit 130' INT TERM
start_load

tsv="$work/iterations.tsv"
printf 'iter\tstep\texit\tseconds\terror_line\trank_log\tbytes_equal\n' >"$tsv"
ok=0 failed=0 lost=0 corrupt=0 done_iters=0
t_start=$(date +%s)

# Runs one step; on failure keeps its log and partial output.
#   step NAME OUT_DIR CMD...
step() {
  local name="$1" outdir="$2"
  shift 2
  local t0=$(date +%s%N) code log="$run/$name.log"
  timeout 300 "$@" >"$log" 2>&1
  code=$?
  local ms=$((($(date +%s%N) - t0) / 1000000))
  local err=- rlog=-
  if [ "$code" -ne 0 ]; then
    failed=$((failed + 1))
    if grep -q '\] error: ' "$log"; then err=yes; else err=NO; lost=$((lost + 1)); fi
    ls "$outdir.partial/.megabridge-errors/"rank-*.log >/dev/null 2>&1 && rlog=yes || rlog=no
    local keep="$work/failures/iter$i-$name"
    mkdir -p "$keep"
    cp "$log" "$keep/"
    [ -d "$outdir.partial" ] && cp -a "$outdir.partial" "$keep/" 2>/dev/null
    echo "stress: iteration $i: $name exited $code (error line: $err, rank log: $rlog); kept in $keep" >&2
  fi
  printf '%s\t%s\t%s\t%d.%03d\t%s\t%s\t-\n' "$i" "$name" "$code" $((ms / 1000)) $((ms % 1000)) "$err" "$rlog" >>"$tsv"
  return "$code"
}

for ((i = 1; i <= iters; i++)); do
  if [ -n "$deadline" ] && [ "$(date +%s)" -ge "$deadline" ]; then
    echo "stress: deadline reached after $done_iters iterations" >&2
    break
  fi
  rm -rf "$run"
  mkdir -p "$run"
  if step import "$run/meg" "${mpi[@]}" "$bin" import --hf-path "$fixture" --out "$run/meg" "${layout[@]}"; then
    if step export "$run/hf" "${mpi[@]}" "$bin" export --megatron-path "$run/meg" --hf-path "$run/hf"; then
      same=yes
      for f in "$fixture"/*.safetensors; do
        cmp -s "$f" "$run/hf/$(basename "$f")" || same=no
      done
      if [ "$same" = yes ]; then
        ok=$((ok + 1))
      else
        corrupt=$((corrupt + 1))
        echo "stress: iteration $i: the export differs from the original" >&2
        cp -a "$run/hf" "$work/failures/iter$i-export-differs" 2>/dev/null
      fi
      printf '%s\tcompare\t-\t-\t-\t-\t%s\n' "$i" "$same" >>"$tsv"
    fi
  fi
  done_iters=$i
  if ((i % 25 == 0)); then
    echo "stress: $i/$iters iterations, $ok passed, $failed failed commands, $lost lost messages, $corrupt corrupt exports ($(($(date +%s) - t_start)) s)" >&2
  fi
done
stop_load
rm -rf "$run"
elapsed=$(($(date +%s) - t_start))
summary="iterations run: $done_iters of $iters (import + export, $ranks ranks, ${layout[*]}, load: $load)
passed: $ok
failed commands: $failed
lost messages (failed with no error line): $lost
exports differing from the original: $corrupt
elapsed: $elapsed s
binary: $bin
finished: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "$summary" | tee "$work/summary.txt"
[ "$ok" -eq "$done_iters" ] && [ "$done_iters" -gt 0 ]

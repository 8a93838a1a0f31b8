#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan, MEGABRIDGE_FUZZ=ON) in
# build-fuzz/ and runs each for a bounded time. Fails if any target crashes,
# leaks, hits undefined behaviour, runs out of memory or times out.
#
#   fuzz/run_fuzzers.sh [seconds_per_target] [target ...]
#
# seconds_per_target defaults to 60; targets default to all four
# (safetensors_header hf_config pickle torch_zip). FUZZ_PARALLEL=N runs N
# targets at once (default 1). Seeds come from fuzz/corpus/<target>/ and
# tests/data/fuzz_regressions/<target>/; new corpus entries, crash inputs and
# logs go to a temporary directory (kept, and printed, when a target fails;
# FUZZ_KEEP=1 keeps it anyway), never into the repository. See docs/fuzzing.md.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

secs="${1:-60}"
[ $# -gt 0 ] && shift
targets=("$@")
((${#targets[@]})) || targets=(safetensors_header hf_config pickle torch_zip)
parallel="${FUZZ_PARALLEL:-1}"

max_len_of() {
  case "$1" in
    safetensors_header) echo 16384 ;;  # the fixtures' headers are ~6 KB
    hf_config) echo 8192 ;;            # config.json ~3.5 KB, trimmed index ~3 KB
    pickle) echo 4096 ;;               # .metadata seeds up to 1.7 KB
    torch_zip) echo 4096 ;;            # torch.save seeds ~1.5 KB
    *) echo "run_fuzzers: unknown target '$1'" >&2; exit 2 ;;
  esac
}
for t in "${targets[@]}"; do max_len_of "$t" >/dev/null; done

# The fuzz build's own packages: clang and its runtimes (libFuzzer, ASan,
# UBSan). The project's libraries come from scripts/setup.sh's list.
packages=(clang libclang-rt-14-dev cmake make pkg-config
  openmpi-bin libopenmpi-dev libhdf5-openmpi-dev
  libyaml-cpp-dev libfmt-dev nlohmann-json3-dev libcli11-dev libxxhash-dev libisal-dev zlib1g-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "run_fuzzers: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

probe="$(mktemp -d "${TMPDIR:-/tmp}/mbfuzz-probe.XXXXXX")"
printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' \
  >"$probe/p.cpp"
if ! clang++ -fsanitize=fuzzer,address,undefined "$probe/p.cpp" -o "$probe/p" 2>"$probe/err"; then
  cat "$probe/err" >&2
  echo "run_fuzzers: clang++ -fsanitize=fuzzer does not link (libclang-rt-*-dev missing?)" >&2
  exit 1
fi
rm -rf "$probe"

jobs="$(nproc 2>/dev/null || echo 2)"
CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMEGABRIDGE_FUZZ=ON \
  -DMEGABRIDGE_BUILD_TESTS=OFF -DMEGABRIDGE_CUDA=OFF >/dev/null
cmake --build build-fuzz -j"$jobs" --target fuzz_all

work="$(mktemp -d "${TMPDIR:-/tmp}/megabridge-fuzz.XXXXXX")"
echo "run_fuzzers: ${#targets[@]} target(s), ${secs} s each, work directory $work"

run_one() {
  local t="$1" d="$work/$1"
  mkdir -p "$d/corpus" "$d/artifacts" "$d/tmp"
  local seeds=("$root/fuzz/corpus/$t")
  [ -d "$root/tests/data/fuzz_regressions/$t" ] && seeds+=("$root/tests/data/fuzz_regressions/$t")
  local rc=0
  # The targets' scratch files go to $d/tmp (TMPDIR).
  TMPDIR="$d/tmp" ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:symbolize=1" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    "$root/build-fuzz/fuzz/fuzz_$t" -max_total_time="$secs" -max_len="$(max_len_of "$t")" \
    -timeout=30 -rss_limit_mb=2560 -print_final_stats=1 -artifact_prefix="$d/artifacts/" \
    "$d/corpus" "${seeds[@]}" >"$d/log" 2>&1 || rc=$?
  echo "$rc" >"$d/rc"
}

pids=()
for t in "${targets[@]}"; do
  run_one "$t" &
  pids+=($!)
  if ((${#pids[@]} >= parallel)); then
    wait "${pids[0]}"
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p"; done

failed=0
for t in "${targets[@]}"; do
  d="$work/$t"
  rc="$(cat "$d/rc")"
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$d/log" | tail -1)"
  cov="$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$d/log" | tail -1)"
  new="$(find "$d/corpus" -type f | wc -l)"
  if [ "$rc" -eq 0 ]; then
    printf 'run_fuzzers: %-20s ok    %s executions, %s, %s new corpus entries\n' "$t" "${execs:-?}" "${cov:-?}" "$new"
  else
    failed=1
    printf 'run_fuzzers: %-20s FAILED (exit %s)\n' "$t" "$rc"
    grep -E '==ERROR|SUMMARY|runtime error|terminate called|what\(\)' "$d/log" | head -10 || true
    ls -1 "$d/artifacts" | sed 's/^/  artifact: /' || true
    echo "  log: $d/log"
  fi
done
if ((failed)); then
  echo "run_fuzzers: FAILED; inputs and logs kept in $work (reproduce: build-fuzz/fuzz/fuzz_<target> <input>)"
  exit 1
fi
if [ "${FUZZ_KEEP:-0}" = 1 ]; then echo "run_fuzzers: kept $work"; else rm -rf "$work"; fi
echo "run_fuzzers: all targets passed"

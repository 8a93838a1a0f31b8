#!/usr/bin/env bash
# The GPU check (docs/cuda.md): one script for a 1-GPU machine (H100/H200,
# x86-64) with the repository copied onto it and no network.
#
#   1. checks the prerequisites and says exactly what is missing;
#   2. builds with CUDA (-DMEGABRIDGE_CUDA=ON) for the GPU's architecture;
#   3. runs the unit tests and the GPU kernel tests (ctest -L gpu) with
#      MEGABRIDGE_REQUIRE_GPU=1, so a missing device fails instead of skipping;
#   4. imports both fixtures with --device cuda and --device cpu, on 1 rank and
#      on 3 ranks sharing the GPU, as HDF5 and as torch_dist, and compares every
#      output file byte for byte (manifest.json without its "created" time);
#      exports and verifies with --device cuda as well;
#   5. runs `megabridge bench` on a small synthetic checkpoint with
#      --device cuda and --device cpu.
#
# Prints everything; with $OUT set, writes $OUT/gpu-check-summary.txt and
# $OUT/gpu-check.log. Exit status: 0 all passed, 1 a check failed (mismatch,
# test failure, build failure), 3 prerequisites missing (the full check could
# not run; the summary says what ran instead).
#
# When the machine lacks the Debian development packages (MPI, HDF5,
# yaml-cpp, ...), the GPU tests can still run from a binary built elsewhere:
#   here:   scripts/gpu-check.sh --prepare-prebuilt build-gpu-prebuilt
#   there:  MB_GPU_PREBUILT=build-gpu-prebuilt scripts/gpu-check.sh
# (the folder holds megabridge_gpu_tests and the few shared libraries it
# needs that a CUDA image may lack; it is ignored by git, so carry it).
#
# MB_GPU_DRY_RUN=1 runs the same steps on a machine without a GPU, with
# --device auto (which falls back to the CPU engine) and without requiring the
# GPU tests to run: it checks the script, not the GPU.
#
# Environment: OUT, MB_GPU_BUILD (build dir, default build-gpu-check),
# MB_GPU_PREBUILT (see above), JOBS (build jobs, default nproc),
# MB_BENCH_CONFIG (default configs/hf/qwen3.5-0.8b.json), MB_BENCH_LAYERS (4),
# MB_BENCH_LAYOUT (default "--tp 2 --pp 2").
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 1

# ---- --prepare-prebuilt DIR (runs on a build machine, not on the GPU one) ----
if [[ "${1:-}" == "--prepare-prebuilt" ]]; then
  dest="${2:?usage: scripts/gpu-check.sh --prepare-prebuilt DIR}"
  build="${MB_BUILD:-build-cuda}"
  if [[ ! -f "$build/CMakeCache.txt" ]]; then
    cmake -S . -B "$build" -DMEGABRIDGE_CUDA=ON -DCMAKE_BUILD_TYPE=Release || exit 1
  fi
  cmake --build "$build" -j"${JOBS:-$(nproc)}" --target megabridge_gpu_tests || exit 1
  rm -rf "$dest" && mkdir -p "$dest/lib"
  cp "$build/tests/megabridge_gpu_tests" "$dest/"
  command -v strip >/dev/null 2>&1 && strip --strip-debug "$dest/megabridge_gpu_tests"
  # Every shared library it loads except the C runtime and the driver.
  ldd "$dest/megabridge_gpu_tests" | awk '$3 ~ /^\// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libgcc_s.so*|libstdc++.so*|libcuda.so*) ;;
      *) cp -L "$lib" "$dest/lib/" ;;
    esac
  done
  echo "prepared $dest ($(du -sh "$dest" | cut -f1)):"
  ls -l "$dest" "$dest/lib"
  exit 0
fi

out_dir="${OUT:-}"
summary_file=/dev/null
if [[ -n "$out_dir" ]]; then
  mkdir -p "$out_dir"
  summary_file="$out_dir/gpu-check-summary.txt"
fi
log="${out_dir:+$out_dir/gpu-check.log}"
log="${log:-$(mktemp "${TMPDIR:-/tmp}/gpu-check-XXXXXX.log")}"
exec > >(tee -a "$log") 2>&1
tee_pid=$!

work="$(mktemp -d "${TMPDIR:-/tmp}/mb-gpu-check-XXXXXX")"
trap 'rm -rf "$work"' EXIT
summary=()
failed=0
t_start=$(date +%s)

note() { printf '\n===== %s =====\n' "$*"; }
record() {  # record PASS|FAIL|SKIP|INFO name [detail]
  summary+=("$(printf '%-5s %s%s' "$1" "$2" "${3:+  ($3)}")")
  [[ "$1" == FAIL ]] && failed=1
  return 0
}
check() {  # check name command...: runs, records PASS or FAIL
  local name="$1"; shift
  local t0=$SECONDS rc=0
  "$@" || rc=$?
  if ((rc == 0)); then record PASS "$name" "$((SECONDS - t0)) s"; return 0; fi
  record FAIL "$name" "exit $rc, $((SECONDS - t0)) s"
  return 1
}
finish() {
  local code="$1"
  note "summary ($(( $(date +%s) - t_start )) s)"
  {
    echo "megabridge GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(hostname)"
    echo "gpu: ${gpu_desc:-unknown}"
    echo "commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$root" diff --quiet 2>/dev/null || echo ' (with local changes)')"
    printf '%s\n' "${summary[@]}"
    echo "exit status: $code"
  } | tee "$summary_file"
  [[ -n "$out_dir" ]] && echo "log: $log; summary: $out_dir/gpu-check-summary.txt"
  exec 1>&- 2>&-
  wait "$tee_pid" 2>/dev/null
  exit "$code"
}

# ---- 1. prerequisites --------------------------------------------------------
note "machine"
uname -a
gpu_desc="$(nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader 2>/dev/null | head -1)"
nvidia-smi -L 2>&1 || true
echo "gpu: ${gpu_desc:-none found}"
command -v nvcc >/dev/null && nvcc --version | tail -2

missing=()
need_cmd() { command -v "$1" >/dev/null 2>&1 || missing+=("$1 (Debian package: $2)"); }
need_pc() { pkg-config --exists "$1" 2>/dev/null || missing+=("$1 (Debian package: $2)"); }
need_file() {
  local what="$1" pkg="$2"; shift 2
  local f
  for f in "$@"; do [[ -e "$f" ]] && return 0; done
  missing+=("$what (Debian package: $pkg)")
}
need_cmd cmake cmake
need_cmd nvcc "the CUDA toolkit"
need_cmd mpirun openmpi-bin
need_cmd mpicc libopenmpi-dev
need_cmd pkg-config pkg-config
if command -v pkg-config >/dev/null 2>&1; then
  need_pc hdf5-openmpi libhdf5-openmpi-dev
  need_pc libxxhash libxxhash-dev
  need_pc libisal libisal-dev
  need_pc zlib zlib1g-dev
fi
need_file "fmt headers" libfmt-dev /usr/include/fmt/format.h /usr/local/include/fmt/format.h
need_file "yaml-cpp" libyaml-cpp-dev /usr/include/yaml-cpp/yaml.h /usr/local/include/yaml-cpp/yaml.h
need_file "nlohmann json" nlohmann-json3-dev /usr/include/nlohmann/json.hpp /usr/local/include/nlohmann/json.hpp
need_file "CLI11" libcli11-dev /usr/include/CLI/CLI.hpp /usr/local/include/CLI/CLI.hpp
need_file "GoogleTest" libgtest-dev /usr/include/gtest/gtest.h /usr/local/include/gtest/gtest.h
dry="${MB_GPU_DRY_RUN:-0}"
gpu_device=cuda
require_gpu=1
if [[ "$dry" == 1 ]]; then
  gpu_device=auto
  require_gpu=0
  echo "MB_GPU_DRY_RUN=1: --device auto, GPU tests may skip (this checks the script, not a GPU)"
elif [[ -z "$gpu_desc" ]]; then
  missing+=("a GPU visible to nvidia-smi")
fi

if ((${#missing[@]})); then
  note "prerequisites MISSING: the full check cannot run on this machine"
  printf '  - %s\n' "${missing[@]}"
  echo "  (no network here, so nothing can be installed: see docs/performance.md, 'GPU check')"
  record SKIP "full check (build, imports, bench)" "missing: $(printf '%s; ' "${missing[@]}")"
  prebuilt="${MB_GPU_PREBUILT:-}"
  if [[ -n "$prebuilt" && -x "$prebuilt/megabridge_gpu_tests" ]]; then
    note "GPU kernel and engine tests from the prebuilt binary in $prebuilt"
    check "GPU kernel + device engine tests (prebuilt, MEGABRIDGE_REQUIRE_GPU=1)" \
      env LD_LIBRARY_PATH="$prebuilt/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" MEGABRIDGE_REQUIRE_GPU=1 \
      "$prebuilt/megabridge_gpu_tests"
  else
    record SKIP "GPU tests" "no prebuilt binary (MB_GPU_PREBUILT; scripts/gpu-check.sh --prepare-prebuilt)"
  fi
  ((failed)) && finish 1
  finish 3
fi

# ---- 2. build -------------------------------------------------------------------
build="${MB_GPU_BUILD:-$root/build-gpu-check}"
arch="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')"
note "build in $build (CUDA architecture ${arch:-default})"
fresh=()
if [[ ! -f "$build/CMakeCache.txt" ]]; then
  fresh=(-DCMAKE_BUILD_TYPE=Release)
  command -v ninja >/dev/null 2>&1 && fresh+=(-G Ninja)
fi
if ! check "configure (MEGABRIDGE_CUDA=ON)" cmake -S "$root" -B "$build" "${fresh[@]}" \
     -DMEGABRIDGE_CUDA=ON ${arch:+-DCMAKE_CUDA_ARCHITECTURES=$arch}; then
  finish 1
fi
check "build" cmake --build "$build" -j"${JOBS:-$(nproc)}" || finish 1
mb="$build/apps/megabridge"

# ---- 3. tests -----------------------------------------------------------------------
in_build() { (cd "$build" && "$@"); }
note "unit tests"
check "ctest -L unit" in_build ctest -L unit -j"${JOBS:-$(nproc)}" --output-on-failure
note "GPU kernel and device engine tests"
check "ctest -L gpu (MEGABRIDGE_REQUIRE_GPU=$require_gpu)" \
  in_build env MEGABRIDGE_REQUIRE_GPU=$require_gpu ctest -L gpu --output-on-failure

# ---- 4. imports: cuda vs cpu, byte for byte -------------------------------------------
export OMPI_MCA_btl_vader_single_copy_mechanism=none  # containers without CMA
mpi() { local np="$1"; shift; mpirun --allow-run-as-root --oversubscribe -np "$np" "$@"; }

# Same files, same bytes; manifest.json compared without its creation time.
same_output() {
  local a="$1" b="$2" f rel bad=0
  if ! diff <(cd "$a" && find . -type f | sort) <(cd "$b" && find . -type f | sort); then
    echo "file lists differ: $a vs $b"; return 1
  fi
  while IFS= read -r rel; do
    if [[ "$(basename "$rel")" == manifest.json ]]; then
      cmp <(grep -v '"created"' "$a/$rel") <(grep -v '"created"' "$b/$rel") || { echo "differs: $rel"; bad=1; }
    else
      cmp "$a/$rel" "$b/$rel" || { echo "differs: $rel"; bad=1; }
    fi
  done < <(cd "$a" && find . -type f | sort)
  ((bad == 0)) && echo "identical: $(cd "$a" && find . -type f | wc -l) files"
  return $bad
}

import_case() {  # import_case name np fixture format flags...
  local name="$1" np="$2" fixture="$3" format="$4"; shift 4
  local dcpu="$work/$name.cpu" dgpu="$work/$name.cuda"
  note "import $name: $np rank(s), $format, $*"
  mpi "$np" "$mb" import --quiet --hf-path "$root/tests/data/$fixture" --out "$dcpu" \
      --format "$format" --device cpu "$@" || return 1
  # --log-level debug: the engine names its device, proving the GPU path ran.
  mpi "$np" "$mb" import --log-level debug --hf-path "$root/tests/data/$fixture" --out "$dgpu" \
      --format "$format" --device "$gpu_device" "$@" > "$work/$name.log" 2>&1 || { cat "$work/$name.log"; return 1; }
  if [[ "$dry" != 1 ]]; then
    grep -m "$np" "copy engine: CUDA device" "$work/$name.log" || { echo "no rank reported a CUDA copy engine"; return 1; }
    # Read-once: the forwarder every rank used (nccl with a GPU per rank, mpi when shared).
    if [[ -n "${expect_forwarder:-}" ]]; then
      [[ "$(grep -c "read-once: forwarding with $expect_forwarder" "$work/$name.log")" == "$np" ]] ||
        { grep "read-once" "$work/$name.log"; echo "not every rank forwarded with $expect_forwarder"; return 1; }
    fi
  fi
  same_output "$dcpu" "$dgpu"
}

round_trip_case() {  # export + verify with --device cuda on an import made above
  local name="$1" np="$2" fixture="$3"
  local meg="$work/$name.cuda"
  note "export and verify $name with --device cuda"
  mpi "$np" "$mb" export --quiet --megatron-path "$meg" --hf-path "$work/$name.back-cpu" --device cpu || return 1
  mpi "$np" "$mb" export --quiet --megatron-path "$meg" --hf-path "$work/$name.back-cuda" --device "$gpu_device" || return 1
  same_output "$work/$name.back-cpu" "$work/$name.back-cuda" || return 1
  mpi "$np" "$mb" verify --device "$gpu_device" "$root/tests/data/$fixture" "$meg" | tail -1 || return 1
  mpi 1 "$mb" verify "$root/tests/data/$fixture" "$work/$name.back-cuda" | tail -1
}

for fixture in qwen35-dense-tiny qwen35-moe-tiny; do
  case "$fixture" in
    *dense*) layout=(--tp 2) short=dense ;;
    *) layout=(--tp 2 --ep 2) short=moe ;;
  esac
  for np in 1 3; do
    for format in hdf5 torch_dist; do
      name="$short.np$np.$format"
      check "import $name cuda == cpu" import_case "$name" "$np" "$fixture" "$format" "${layout[@]}"
    done
  done
  check "export/verify $short (cuda)" round_trip_case "$short.np3.hdf5" 3 "$fixture"
done
# Read-once: NCCL on 1 rank (its own GPU), MPI on 3 ranks sharing the GPU.
expect_forwarder=nccl check "import moe read-once, 1 rank, NCCL, cuda == cpu" \
  import_case moe.np1.read_once 1 qwen35-moe-tiny hdf5 --tp 2 --ep 2 --read-once
expect_forwarder=mpi check "import dense read-once, 3 ranks sharing the GPU, MPI, cuda == cpu" \
  import_case dense.np3.read_once 3 qwen35-dense-tiny hdf5 --tp 2 --read-once
expect_forwarder=mpi check "import moe read-once, 3 ranks sharing the GPU, MPI, cuda == cpu" \
  import_case moe.np3.read_once 3 qwen35-moe-tiny hdf5 --tp 2 --ep 2 --read-once
check "reshard moe with --device cuda == cpu" bash -c '
  set -e
  mpirun --allow-run-as-root --oversubscribe -np 2 "$0" reshard --quiet --megatron-path "$1" --out "$2.cpu" --pp 2 --device cpu
  mpirun --allow-run-as-root --oversubscribe -np 2 "$0" reshard --quiet --megatron-path "$1" --out "$2.cuda" --pp 2 --device "$3"
  cd "$2.cpu" && for f in $(find . -type f ! -name manifest.json); do cmp "$f" "$2.cuda/$f"; done
  echo identical' "$mb" "$work/moe.np3.hdf5.cuda" "$work/reshard" "$gpu_device"

# ---- 5. bench --------------------------------------------------------------------------
bench_cfg="${MB_BENCH_CONFIG:-$root/configs/hf/qwen3.5-0.8b.json}"
bench_layers="${MB_BENCH_LAYERS:-4}"
read -r -a bench_layout <<< "${MB_BENCH_LAYOUT:---tp 2 --pp 2}"
for device in "$gpu_device" cpu; do
  note "bench $device: $(basename "$bench_cfg"), $bench_layers layers, 4 ranks, ${bench_layout[*]}"
  if mpi 4 "$mb" bench --hf-config "$bench_cfg" --layers "$bench_layers" --dir "$work/bench" \
       "${bench_layout[@]}" --device "$device" | tee "$work/bench-$device.txt"; then
    record PASS "bench --device $device" \
      "$(awk '/^(import|export|reshard) +[0-9]/ && !seen[$1]++ {printf "%s%s %s s, %s GB/s, %sx the storage floor", sep, $1, $2, $3, $6; sep="; "}' "$work/bench-$device.txt")"
  else
    record FAIL "bench --device $device"
  fi
  [[ -n "$out_dir" ]] && cp "$work/bench-$device.txt" "$out_dir/" 2>/dev/null
done

((failed)) && finish 1
finish 0

#!/usr/bin/env bash
# The unit tests under AddressSanitizer + UndefinedBehaviorSanitizer, with
# LeakSanitizer on: configures build-asan/ (RelWithDebInfo,
# MEGABRIDGE_SANITIZE=ON, CPU only), builds the unit tests and runs
# `ctest -L unit` there. Any sanitizer report fails the test it happens in.
# Extra arguments go to ctest (e.g. -R Pickle). CI runs it after
# scripts/test.sh (see .ci/run); docs/fuzzing.md describes it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Packages (and the normal build, a no-op when it is up to date).
"$root/scripts/setup.sh"
cd "$root"

# halt_on_error: the first report ends the process, so the test fails.
# LeakSanitizer suppressions (scripts/lsan.supp) cover third-party libraries
# only; leaks in megabridge code are never suppressed.
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
if [ -f "$root/scripts/lsan.supp" ]; then
  export LSAN_OPTIONS="suppressions=$root/scripts/lsan.supp:print_suppressions=0"
fi

jobs="$(nproc 2>/dev/null || echo 2)"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMEGABRIDGE_SANITIZE=ON \
  -DMEGABRIDGE_CUDA=OFF >/dev/null
# Only the unit test binary (and the library it links): the integration tests
# are not run here. Test discovery runs the instrumented binary with the
# options above.
cmake --build build-asan -j"$jobs" --target megabridge_unit_tests
cd build-asan
ctest --output-on-failure -j"$jobs" -L unit "$@"

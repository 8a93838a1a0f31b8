#!/usr/bin/env bash
# The whole test suite: sets up and builds (scripts/setup.sh), then runs every
# ctest test: unit tests, MPI integration tests and the CLI checks.
# Extra arguments go to ctest (e.g. -L unit, -R import).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root/build"
ctest --output-on-failure -j"$(nproc 2>/dev/null || echo 2)" -LE interop "$@"

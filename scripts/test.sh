#!/usr/bin/env bash
# The README's test command: installs, builds, and runs every test with ctest.
# GPU-labelled tests skip visibly on machines without a device.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/build.sh"
build_dir="${TERN_BUILD_DIR:-$root/build}"
cd "$build_dir"
ctest --output-on-failure -j "${TERN_TEST_JOBS:-2}" "$@"

#!/usr/bin/env bash
# The README's test command: installs, builds, and runs every test with ctest.
# GPU-labelled tests skip visibly on machines without a device.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/build.sh"
build_dir="${TERN_BUILD_DIR:-$root/build}"
# Tests see only the programs of scripts/tools.list: one that calls anything
# else fails here, not on a user's fresh machine (which gets exactly the list).
"$root/scripts/check-tools.sh" --link "$build_dir/tool-path"
cd "$build_dir"
PATH="$build_dir/tool-path" ctest --output-on-failure -j "${TERN_TEST_JOBS:-2}" "$@"

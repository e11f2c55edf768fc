#!/usr/bin/env bash
# Installs the system packages (if missing) and builds tern into build/.
# Environment: TERN_BUILD_DIR (default build), TERN_JOBS (default nproc),
# extra CMake arguments are passed through ("$@").
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/install-deps.sh"
build_dir="${TERN_BUILD_DIR:-$root/build}"
# ccache keys relative to the checkout, so fresh clones (CI) reuse the cache.
export CCACHE_BASEDIR="$root" CCACHE_NOHASHDIR=1 CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-8G}"
jobs="${TERN_JOBS:-$(nproc)}"
generator=()
if command -v ninja >/dev/null 2>&1 && [[ ! -f "$build_dir/Makefile" ]]; then
  generator=(-G Ninja)
fi
cmake -S "$root" -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE="${TERN_BUILD_TYPE:-Release}" "$@" >/dev/null
cmake --build "$build_dir" -j "$jobs"

#!/usr/bin/env bash
# Rewrites proto/tern/v1/api.snapshot from the tern.v1 API as compiled
# (tern-api-snapshot), after an addition to the API. The snapshot test
# (tests/proto/api_snapshot_test.cc, `ctest -L proto`) then passes again;
# commit the snapshot with the .proto change. It refuses when the API lost or
# changed an item of the committed snapshot: numbers never change meaning.
#
#   scripts/update-api-snapshot.sh [BUILD_DIR]     (default: build, or $TERN_BUILD_DIR)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-${TERN_BUILD_DIR:-$root/build}}"
if [[ ! -f "$build/build.ninja" ]]; then
  echo "update-api-snapshot.sh: $build is not a configured build directory; run scripts/build.sh" >&2
  exit 2
fi
ninja -C "$build" tern-api-snapshot proto_api_snapshot_test >/dev/null
snapshot="$root/proto/tern/v1/api.snapshot"
new="$(mktemp)"
trap 'rm -f "$new"' EXIT
"$build/proto/tern-api-snapshot" >"$new"
if [[ -f "$snapshot" ]]; then
  # Every old line must still be there (the test's rule, checked before overwriting).
  if ! "$build/tests/proto/proto_api_snapshot_test" \
      --gtest_filter='ApiSnapshotTest.TheCompiledApiKeepsEveryLineOfTheCommittedSnapshot' \
      >"$new.log" 2>&1; then
    cat "$new.log" >&2
    rm -f "$new.log"
    echo "update-api-snapshot.sh: not updated: the API removed or changed items (above)" >&2
    exit 1
  fi
  rm -f "$new.log"
fi
cp "$new" "$snapshot"
echo "wrote $snapshot ($(grep -vc '^#' "$snapshot") items)"

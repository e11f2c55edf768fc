#!/usr/bin/env bash
# Runs tests/web/format_test.mjs with node's test runner; exit 77 (skipped,
# said aloud) without node, which is optional (scripts/tools.list).
set -euo pipefail
command -v node >/dev/null || { echo "SKIP: node is not installed" >&2; exit 77; }
exec node --test "$(dirname "${BASH_SOURCE[0]}")/format_test.mjs"

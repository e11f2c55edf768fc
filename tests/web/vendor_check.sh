#!/usr/bin/env bash
# Checks that the committed web/vendor (uPlot, embedded in ternd beside
# web/src) is what `npm run vendor` copies from the package pinned by
# web/package-lock.json: installs web/'s locked packages with npm ci into
# BUILD_DIR/tests/web/web-npm, copies into a temp dir and compares. Exit 77
# without node or npm.
# usage: vendor_check.sh BUILD_DIR
set -euo pipefail
build="$(cd "${1:?usage: vendor_check.sh BUILD_DIR}" && pwd)"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
web="$here/../../web"
npm_dir="$build/tests/web/web-npm"
bash "$here/../deploy/npm_install.sh" "$npm_dir" "$web"
out="$(mktemp -d "${TMPDIR:-/tmp}/tern-web-vendor.XXXXXX")"
trap 'rm -rf "$out"' EXIT
TERN_WEB_NODE_MODULES="$npm_dir/node_modules" node "$web/vendor.mjs" "$out/vendor" >/dev/null
if ! diff -r "$out/vendor" "$web/vendor"; then
  echo "FAIL: web/vendor is not the locked uPlot: run (cd web && npm ci && npm run vendor) and commit web/vendor"
  exit 1
fi
echo "PASS: web/vendor matches web/package-lock.json"

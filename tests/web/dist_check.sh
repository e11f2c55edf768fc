#!/usr/bin/env bash
# Checks that the committed web/dist (what ternd embeds) is what
# `npm run build` makes from web/src and web/package-lock.json: installs
# web/'s locked packages with npm ci into BUILD_DIR/tests/web/web-npm, builds
# into a temp dir and compares. Exit 77 without node or npm.
# usage: dist_check.sh BUILD_DIR
set -euo pipefail
build="$(cd "${1:?usage: dist_check.sh BUILD_DIR}" && pwd)"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
web="$here/../../web"
npm_dir="$build/tests/web/web-npm"
bash "$here/../deploy/npm_install.sh" "$npm_dir" "$web"
out="$(mktemp -d "${TMPDIR:-/tmp}/tern-web-dist.XXXXXX")"
trap 'rm -rf "$out"' EXIT
TERN_WEB_NODE_MODULES="$npm_dir/node_modules" node "$web/build.mjs" "$out/dist" >/dev/null
if ! diff -r "$out/dist" "$web/dist"; then
  echo "FAIL: web/dist is not what npm run build makes: run (cd web && npm ci && npm run build) and commit web/dist"
  exit 1
fi
echo "PASS: web/dist matches web/src and web/package-lock.json"

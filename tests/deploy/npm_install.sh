#!/usr/bin/env bash
# Installs the npm packages of a test folder into DEST/node_modules with
# `npm ci`, from its committed package-lock.json: by default tests/deploy's
# (kubernetes-models and the Prometheus Operator's and cert-manager's models:
# Kubernetes' schemas as validators, offline); tests/model_io passes its own
# (onnxruntime-node). Quick when DEST already holds this lock's install (a
# stamp with the lock's hash): the tests call it every run.
#   npm_install.sh DEST [PACKAGE_DIR]
# Exit 77 (a visible skip) without node or npm; 1 when npm ci fails (e.g.
# the registry cannot be reached).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${1:?usage: npm_install.sh DEST [PACKAGE_DIR]}"
pkg="${2:-$here}"

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "SKIP: $tool is not installed (Debian: apt-get install nodejs npm), so the tests that need the npm packages of $pkg cannot run"
    exit 77
  fi
done

mkdir -p "$dest"
want="$(sha256sum "$pkg/package-lock.json" | cut -d' ' -f1)"
if [[ -d "$dest/node_modules" && -f "$dest/.installed" && "$(cat "$dest/.installed")" == "$want" ]]; then
  echo "npm packages of $pkg/package-lock.json already in $dest"
  exit 0
fi
cp "$pkg/package.json" "$pkg/package-lock.json" "$dest/"
rm -f "$dest/.installed"
# --ignore-scripts: the packages need none; nothing downloaded runs here.
(cd "$dest" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
echo "$want" > "$dest/.installed"
echo "installed the npm packages of $pkg/package-lock.json in $dest"

#!/usr/bin/env bash
# The deploy/k8s tests (ctest label deploy; tests/deploy/CMakeLists.txt):
#   k8s_test.sh render               ROOT WORK
#   k8s_test.sh schema               ROOT WORK NPM_DIR
#   k8s_test.sh schema-negative      ROOT WORK NPM_DIR
#   k8s_test.sh consistency          ROOT WORK NPM_DIR TERND TERN_AGENT
#   k8s_test.sh consistency-negative ROOT WORK NPM_DIR TERND TERN_AGENT
# ROOT: the checkout; WORK: this test's scratch directory; NPM_DIR: where
# npm_install.sh keeps the npm packages (shared by the tests; ctest's fixture
# deploy_npm installs them first); TERND, TERN_AGENT: the built binaries,
# whose --help the manifests' flags are checked against.
# Every mode renders every overlay (render.sh) first. Exit 77 (a visible
# skip) without kubectl, or without node and npm for the other modes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mode="${1:?usage: k8s_test.sh MODE ROOT WORK [NPM_DIR [TERND TERN_AGENT]]}"
root="${2:?}"
work="${3:?}"
rm -rf "$work"
mkdir -p "$work"

status=0
bash "$here/render.sh" "$root/deploy/k8s" "$work/rendered" >"$work/render.log" 2>&1 || status=$?
cat "$work/render.log"
((status == 0)) || exit "$status"
if [[ "$mode" == render ]]; then
  # Each overlay makes what it is for.
  grep -q '^kind: Deployment' "$work/rendered/cpu.yaml" && grep -q '^  name: tern-agent' "$work/rendered/cpu.yaml" \
    || { echo "FAIL: overlays/cpu has no tern-agent Deployment"; exit 1; }
  grep -q '^kind: DaemonSet' "$work/rendered/cpu.yaml" && { echo "FAIL: overlays/cpu still has a DaemonSet"; exit 1; }
  grep -q '^kind: DaemonSet' "$work/rendered/gpu.yaml" && grep -q 'nvidia.com/gpu:' "$work/rendered/gpu.yaml" \
    || { echo "FAIL: overlays/gpu has no tern-agent DaemonSet with nvidia.com/gpu"; exit 1; }
  grep -q '^  replicas: 2' "$work/rendered/postgres.yaml" && grep -q -- '--db=$(TERN_DB_URL)' "$work/rendered/postgres.yaml" \
    && ! grep -q 'name: ternd-store' "$work/rendered/postgres.yaml" \
    || { echo "FAIL: overlays/postgres has no 2-replica ternd on PostgreSQL without the SQLite volume"; exit 1; }
  grep -q '^kind: ServiceMonitor' "$work/rendered/cpu+all.yaml" && grep -q '^kind: Certificate' "$work/rendered/cpu+all.yaml" \
    || { echo "FAIL: the components add no ServiceMonitor or Certificate"; exit 1; }
  if grep -q 'monitoring.coreos.com\|cert-manager.io' "$work/rendered/cpu.yaml" "$work/rendered/gpu.yaml"; then
    echo "FAIL: an overlay without components needs the Prometheus Operator's or cert-manager's CRDs"; exit 1
  fi
  echo PASS
  exit 0
fi

npm_dir="${4:?NPM_DIR needed for $mode}"
status=0
bash "$here/npm_install.sh" "$npm_dir" || status=$?
((status == 0)) || exit "$status"

args=(--node-modules "$npm_dir/node_modules" --rendered "$work/rendered")
case "$mode" in
  schema) ;;
  schema-negative) args+=(--deploy "$root/deploy" --work "$work") ;;
  consistency|consistency-negative)
    ternd="${5:?TERND needed}"
    agent="${6:?TERN_AGENT needed}"
    "$ternd" --help >"$work/ternd.help"
    "$agent" --help >"$work/tern-agent.help"
    args+=(--root "$root" --help "ternd=$work/ternd.help" --help "tern-agent=$work/tern-agent.help") ;;
  *) echo "k8s_test.sh: unknown mode $mode" >&2; exit 2 ;;
esac
exec node "$here/k8s_test.mjs" "$mode" "${args[@]}"

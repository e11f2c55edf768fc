#!/usr/bin/env bash
# Group commit versus one commit per call, in one run: for each mode, a fresh
# ternd without agents (temp db on the same disk as TMPDIR) gets
# tern_service_load_bench's closed loop at each client count, then another
# fresh ternd gets the queued-depth measurement (one client's SubmitJob p50
# with D jobs queued). Modes alternate per round so that drift of a shared
# machine hits both.
#   bench/service/group_commit.sh [--build build] [--seconds 5]
#       [--levels 1,16,128] [--depths 0,10000,100000] [--rounds 1]
#       [--modes per-call,group]
# Run from the repository root after building ternd and tern_service_load_bench.
set -euo pipefail
build=build seconds=5 levels=1,16,128 depths=0,10000,100000 rounds=1 modes=per-call,group
while [[ $# -gt 0 ]]; do
  case $1 in
    --build) build=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --levels) levels=$2; shift 2 ;;
    --depths) depths=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --modes) modes=$2; shift 2 ;;
    *) echo "group_commit.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
name=group_commit.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

echo "# $(date -u +%FT%TZ) $(uname -n) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)," \
  "commit $(git rev-parse --short HEAD 2>/dev/null || echo ?)"
for round in $(seq "$rounds"); do
  for mode in ${modes//,/ }; do
    if [[ -n $levels ]]; then
      start_ternd --commit-mode "$mode"
      echo; echo "## round $round, --commit-mode $mode: load"
      "$build/bench/service/tern_service_load_bench" --server "$addr" --concurrency "$levels" \
        --seconds "$seconds"
      stop_ternd
    fi
    if [[ -n $depths ]]; then
      start_ternd --commit-mode "$mode"
      echo; echo "## round $round, --commit-mode $mode: queued depth"
      "$build/bench/service/tern_service_load_bench" --server "$addr" --concurrency "" \
        --queued-depths "$depths"
      stop_ternd
    fi
  done
done

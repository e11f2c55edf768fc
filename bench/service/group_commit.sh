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
for bin in server/ternd bench/service/tern_service_load_bench; do
  [[ -x $build/$bin ]] || { echo "group_commit.sh: $build/$bin is not built" >&2; exit 2; }
done
T=$(mktemp -d)
pid=
trap '[[ -n $pid ]] && kill $pid 2>/dev/null; rm -rf "$T"' EXIT

start_ternd() {  # mode -> sets pid, addr
  rm -rf "$T/run" && mkdir -p "$T/run"
  "$build/server/ternd" --listen 127.0.0.1:0 --db "$T/run/ternd.db" --artifact-root "$T/run/art" \
    --checkpoint-root "$T/run/ck" --metrics-listen "" --commit-mode "$1" \
    > "$T/run/out" 2> "$T/run/log" &
  pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$T/run/out" 2>/dev/null && break; sleep 0.1; done
  addr=$(sed -n 's/ternd listening on //p' "$T/run/out")
  [[ -n $addr ]] || { echo "ternd did not start:"; cat "$T/run/log"; exit 1; }
}
stop_ternd() { kill "$pid"; wait "$pid" || true; pid=; }

echo "# $(date -u +%FT%TZ) $(uname -n) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)," \
  "commit $(git rev-parse --short HEAD 2>/dev/null || echo ?)"
for round in $(seq "$rounds"); do
  for mode in ${modes//,/ }; do
    if [[ -n $levels ]]; then
      start_ternd "$mode"
      echo; echo "## round $round, --commit-mode $mode: load"
      "$build/bench/service/tern_service_load_bench" --server "$addr" --concurrency "$levels" \
        --seconds "$seconds"
      stop_ternd
    fi
    if [[ -n $depths ]]; then
      start_ternd "$mode"
      echo; echo "## round $round, --commit-mode $mode: queued depth"
      "$build/bench/service/tern_service_load_bench" --server "$addr" --concurrency "" \
        --queued-depths "$depths"
      stop_ternd
    fi
  done
done

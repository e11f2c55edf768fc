#!/usr/bin/env bash
# SubmitJob at 128 clients (issue 28's target: 5,000/s with p99 <= 10 ms),
# with gRPC keeping 2 idle server threads (its default) or ternd's default
# --rpc-idle-threads, in one run. For each setting and round: a fresh ternd
# without agents (group commit) gets tern_service_load_bench's closed loop
# (no GetJob) and then open-loop runs at each offered --rate (latency counted
# from when each call was due). Also prints ternd's and the load bench's CPU
# time per answered call (both share the machine's cores) and how many
# threads were created system-wide during each closed-loop run
# (ns_last_pid). Settings alternate per round. --rpc WhoAmI times that call
# instead (no store, no spec check): the floor of a unary call through
# ternd's gRPC server on this machine.
#   bench/service/submit_rate.sh [--build build] [--seconds 5] [--clients 128]
#       [--rates 1000,2000,3000,5000] [--idle-threads 2,256] [--rounds 2]
#       [--rpc SubmitJob|WhoAmI]
# Run from the repository root after building ternd and tern_service_load_bench.
set -euo pipefail
build=build seconds=5 clients=128 rates=1000,2000,3000,5000 idle=2,256 rounds=2 rpc=SubmitJob
while [[ $# -gt 0 ]]; do
  case $1 in
    --build) build=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --rates) rates=$2; shift 2 ;;
    --idle-threads) idle=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --rpc) rpc=$2; shift 2 ;;
    *) echo "submit_rate.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
name=submit_rate.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
per_call() { awk -v s="$1" -v n="$2" 'BEGIN { printf "%.3f", n ? s * 1000 / n : 0 }'; }
# bench ARG... -> the load bench's row, then " | ternd CPU | client CPU" (ms
# per answered call; the client shares the machine's cores with ternd).
bench() {
  local cpu0 cpu1 row calls
  cpu0=$(cpu_ticks)
  { TIMEFORMAT='%U %S'; time "$build/bench/service/tern_service_load_bench" --server "$addr" \
      --concurrency "$clients" --seconds "$seconds" --get-per-submit 0 --rpc "$rpc" "$@" \
      > "$T/bench.out" 2> "$T/bench.err"; } 2> "$T/bench.time" || { cat "$T/bench.err"; exit 1; }
  cpu1=$(cpu_ticks)
  row=$(grep "| $rpc |" "$T/bench.out")
  calls=$(awk -F'|' '{ gsub(/ /, "", $4); print $4 }' <<<"$row")
  echo "$row $(per_call "$(awk -v c=$((cpu1 - cpu0)) -v t="$ticks" 'BEGIN { print c / t }')" "$calls") |" \
    "$(per_call "$(awk '{ print $1 + $2 }' "$T/bench.time")" "$calls")"
}

echo "# $(date -u +%FT%TZ) $(uname -n) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)," \
  "commit $(git rev-parse --short HEAD 2>/dev/null || echo ?)"
echo "| round | idle threads | loop | clients | RPC | calls | errors | req/s | p50 ms | p99 ms | max ms | ternd CPU ms per call | client CPU ms per call | threads created |"
echo "|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for round in $(seq "$rounds"); do
  for n in ${idle//,/ }; do
    start_ternd --rpc-idle-threads "$n"
    before=$(cat /proc/sys/kernel/ns_last_pid)
    row=$(bench)
    after=$(cat /proc/sys/kernel/ns_last_pid)
    created=$(( (after - before + $(cat /proc/sys/kernel/pid_max)) % $(cat /proc/sys/kernel/pid_max) ))
    echo "| $round | $n | closed $row | $created |"
    for rate in ${rates//,/ }; do
      echo "| $round | $n | open $rate/s $(bench --rate "$rate") | |"
    done
    stop_ternd
  done
done

#!/usr/bin/env bash
# Many clients submit many small jobs while agents join and leave and ternd is
# killed with SIGKILL twice (issue 28's load test, sized for CI). The clients
# (tern_service_load_bench --submit-jobs) retry a failed call with the same
# idempotency key until it is acknowledged. The agents run a trainer stand-in
# that finishes at once. Afterwards:
#   - every submission was acknowledged, each key with one job id, no id twice;
#   - the store holds exactly those jobs (no job twice, none unacknowledged);
#   - every job reaches SUCCEEDED (none stuck), with a gap-free event log.
# Prints the figures (submission rate, retries, time to drain).
# usage: submit_load_e2e.sh BUILD_DIR [CLIENTS [JOBS]]   (defaults 64, 1500,
# or TERN_SUBMIT_LOAD_CLIENTS and TERN_SUBMIT_LOAD_JOBS: scripts/sanitize.sh
# runs it smaller; the issue's full size is 200 20000)
set -euo pipefail
build="$(cd "${1:?usage: submit_load_e2e.sh BUILD_DIR [CLIENTS [JOBS]]}" && pwd)"
clients=${2:-${TERN_SUBMIT_LOAD_CLIENTS:-64}}
jobs=${3:-${TERN_SUBMIT_LOAD_JOBS:-1500}}
bench="$build/bench/service/tern_service_load_bench"
[[ -x "$bench" ]] || { echo "FAIL: $bench is not built"; exit 1; }
command -v sqlite3 >/dev/null || { echo "SKIP: no sqlite3 command"; exit 77; }
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ternd_listen="127.0.0.1:$(free_port)"  # a restarted ternd listens here again
rdv_port=$(free_port)
rdv_port_max=$((rdv_port + 200))  # one port per running job and agent (stand-ins bind none)
# The lease TTL is short so that a crashed agent's jobs come back soon, but
# not so short that a heartbeat answered late under the submission flood (a
# sanitized build on a loaded 2-core machine) costs an agent its lease.
ternd_flags=(--lease-ttl 10s --restart-backoff 100ms --max-restart-backoff 500ms
             --tick-interval 200ms)
start_ternd

# The trainer stand-in: says it started and finished, exits 0.
cat >"$work/stand-in.sh" <<'SH'
#!/bin/sh
rank=0 world=1
while [ $# -gt 0 ]; do
  case "$1" in
    --rank) rank="$2"; shift 2 ;;
    --world-size) world="$2"; shift 2 ;;
    *) shift ;;
  esac
done
common="\"job\":\"j\",\"rank\":$rank,\"world_size\":$world"
echo "{\"event\":\"started\",$common,\"time\":1.0,\"resumed_from_step\":-1,\"steps_per_epoch\":1,\"device\":\"cpu\"}"
echo "{\"event\":\"finished\",$common,\"time\":2.0,\"fp\":{\"top1\":0.5},\"artifact\":{\"top1\":0.5},\"artifact_path\":\"\",\"artifact_bytes\":0,\"bits_per_weight\":1.6,\"steps\":1}"
exit 0
SH
chmod +x "$work/stand-in.sh"

agents=()
start_stand_in_agent() {  # agent id
  local out="$work/agent-$1.out"
  "$build/worker/agent/tern-agent" --server "$server" --agent-id "$1" --cpu-slots 32 \
    --trainer "$work/stand-in.sh" --workdir "$work/agent-$1" --metrics-listen 127.0.0.1:0 \
    --confine-writes off >"$out" 2>"$work/agent-$1.log" &
  local pid=$!
  process_names[$pid]="tern-agent $1"
  pids=("$pid" "${pids[@]}")
  agents+=("$pid")
  wait_for_line "$out" "metrics on" >/dev/null
}
start_stand_in_agent a1
start_stand_in_agent a2

acks="$work/acks"
: >"$acks"
"$bench" --server "$server" --submit-jobs "$jobs" --concurrency "$clients" --ack-file "$acks" \
  --owner e2e --retry-seconds 90 >"$work/bench.out" 2>&1 &
load=$!
process_names[$load]=load
t0=$(date +%s%N)
wait_acked() {  # count
  for _ in $(seq 1 1200); do
    [[ $(wc -l <"$acks") -ge $1 ]] && return 0
    kill -0 "$load" 2>/dev/null || break
    sleep 0.1
  done
  fail "fewer than $1 acknowledged: $(wc -l <"$acks"); $(cat "$work/bench.out")"
}
restart_ternd() {
  crash "$ternd"
  echo "killed ternd (SIGKILL) at $(wc -l <"$acks") acknowledged"
  start_ternd
}

wait_acked $((jobs / 4))
start_stand_in_agent a3                        # an agent joins
wait_acked $((jobs / 3))
restart_ternd                                   # first crash
wait_acked $((jobs / 2))
shut_down "${agents[0]}" 20                     # a1 leaves (drains)
crash "${agents[1]}"                            # a2 dies
start_stand_in_agent a2                         # and comes back
wait_acked $((2 * jobs / 3))
restart_ternd                                   # second crash
wait "$load" || fail "the load did not complete: $(cat "$work/bench.out")"
t1=$(date +%s%N)
cat "$work/bench.out"

# Every submission acknowledged once per key, and no id for two keys.
[[ $(wc -l <"$acks") -eq $jobs ]] || fail "$(wc -l <"$acks") acknowledgements for $jobs jobs"
[[ $(cut -d' ' -f2 "$acks" | sort -u | wc -l) -eq $jobs ]] || fail "a key acknowledged twice"
[[ $(cut -d' ' -f1 "$acks" | sort -u | wc -l) -eq $jobs ]] || fail "one job id for two keys"

db="$work/ternd.db"
query() { sqlite3 -cmd ".timeout 5000" "$db" "$1"; }
# Exactly the acknowledged jobs are stored.
sort "$acks" >"$work/acked.sorted"
query "SELECT id || ' ' || idempotency_key FROM jobs ORDER BY id" | sort >"$work/stored.sorted"
diff -q "$work/acked.sorted" "$work/stored.sorted" >/dev/null ||
  fail "stored jobs differ from the acknowledged ones: $(diff "$work/acked.sorted" "$work/stored.sorted" | head -5)"

# Every job ends SUCCEEDED; none stuck. The deadline ends before ctest's
# TIMEOUT so that a stuck job is reported with the jobs' states, not killed.
drain_deadline=$(($(date +%s) + ${TERN_SUBMIT_LOAD_DRAIN_SECONDS:-150}))
while :; do
  done_jobs=$(query "SELECT count(*) FROM jobs WHERE state = 'SUCCEEDED'")
  [[ $done_jobs -eq $jobs || $(date +%s) -ge $drain_deadline ]] && break
  sleep 0.25
done
t2=$(date +%s%N)
[[ $done_jobs -eq $jobs ]] ||
  fail "$done_jobs of $jobs SUCCEEDED after $(((t2 - t1) / 1000000)) ms; by state:" \
    "$(query "SELECT state, count(*) FROM jobs GROUP BY state")" \
    "; some unfinished: $(query "SELECT id, state, attempt FROM jobs WHERE state <> 'SUCCEEDED' LIMIT 5")"
# Event logs without gaps: seq runs 1..last_event_seq for every job.
bad=$(query "SELECT count(*) FROM jobs j WHERE last_event_seq <> (SELECT count(*) FROM job_events e
             WHERE e.job_id = j.id) OR last_event_seq <> (SELECT max(seq) FROM job_events e
             WHERE e.job_id = j.id)")
[[ $bad -eq 0 ]] || fail "$bad jobs with gaps in their event log"
restarts=$(query "SELECT count(*) FROM jobs WHERE attempt > 1")
echo "PASS: $clients clients, $jobs jobs: all acknowledged in $(((t1 - t0) / 1000000)) ms," \
  "all SUCCEEDED $(((t2 - t1) / 1000000)) ms later; $restarts jobs ran more than once" \
  "(agents left or ternd restarted)"

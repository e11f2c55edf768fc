#!/usr/bin/env bash
# An agent that advertises an address the other hosts cannot reach (one of
# its own, but not on the shared link: routed nowhere else): the job's ranks
# cannot meet at rank 0's rendezvous there. Each attempt fails at the
# collective timeout with a reason naming the address, and the job ends
# FAILED once its restarts are spent: no hang.
# usage: unreachable_address.sh BUILD_DIR
set -euo pipefail
build="$(cd "${1:?usage: unreachable_address.sh BUILD_DIR}" && pwd)"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
timeout_s=10
mh_host srv 10
mh_host n1 11
mh_host n2 12
bad=10.99.0.1
mh_exec n1 ip addr add "$bad/32" dev lo   # n1's own, routed nowhere else
ternd_flags=(--lease-ttl 4s --tick-interval 250ms --restart-backoff 200ms --max-restart-backoff 1s)
agent_flags=(--shutdown-grace 5 --rpc-timeout 2)
mh_start_ternd srv
mh_start_agent n1 --host "$bad"   # the first agent: rank 0 is placed there
mh_start_agent n2

mh_write_job lost 512 1 "$timeout_s"
sed -i 's/^max_restarts: .*/max_restarts: 1/' "$work/lost.yaml"
start=$(now_ms)
job=$(mh_submit lost)
bound=$(( 2 * (timeout_s + 10) + 10 ))
wait_job "$job" '.state == "JOB_STATE_FAILED" or .state == "JOB_STATE_SUCCEEDED"' "$bound"
ended=$(( $(now_ms) - start ))
jq -e '.state == "JOB_STATE_FAILED"' "$work/job.json" >/dev/null || fail "unexpected end: $(cat "$work/job.json")"
events "$job"
reasons=$(jq -r -s '.[] | select(.state_change.reason.message) | "attempt \(.attempt) \(.state_change.to_state) \(.state_change.reason.code): \(.state_change.reason.message)"' \
          "$work/events-$job.jsonl")
echo "$reasons" | cut -c1-400
final=$(jq -r '"\(.state_reason.code): \(.state_reason.message)"' "$work/job.json")
grep -q "$bad" <<<"$final" || fail "the job's final reason does not name $bad: $final"
mh_check_history "$job"
mh_check_jobs_kept
mh_check_no_split_brain
echo "RESULT unreachable advertised address: 2 attempts, FAILED ${ended} ms after submission (collective timeout ${timeout_s} s): $(tr "\n" " " <<<"$final" | cut -c1-220)"
echo "PASS: job $job FAILED naming $bad, not hanging"

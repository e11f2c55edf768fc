#!/usr/bin/env bash
# The two hosts of a job's ranks cut off from each other, both still
# reaching ternd: the blocked all-reduce fails at the job's collective
# timeout, ternd restarts the job, and once the link between them is back
# the job resumes from its checkpoint and succeeds.
# usage: rank_partition.sh BUILD_DIR
set -euo pipefail
build="$(cd "${1:?usage: rank_partition.sh BUILD_DIR}" && pwd)"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
timeout_s=10   # collective_timeout_seconds (its minimum)
mh_host srv 10
mh_host n1 11
mh_host n2 12
ternd_flags=(--lease-ttl 4s --tick-interval 250ms --restart-backoff 200ms --max-restart-backoff 1s)
agent_flags=(--shutdown-grace 5 --rpc-timeout 2)
mh_start_ternd srv
mh_start_agent n1
mh_start_agent n2

mh_write_job split 3072 1 "$timeout_s"   # 192 steps
job=$(mh_submit split)
wait_job "$job" '.state == "JOB_STATE_RUNNING"' 60
wait_checkpoint "$job" 1 8
fault=$(now_ms)
mh_block n1 n2
echo "n1 and n2 cut off from each other at step $(progress_step "$job" 1) (collective timeout ${timeout_s} s)"
bound=$(( timeout_s + 5 ))
wait_job "$job" '.restarts >= 1' "$bound"
detected=$(( $(now_ms) - fault ))
mh_unblock n1 n2
events "$job"
reason=$(jq -r -s '[.[] | select(.attempt == 1 and .state_change.from_state == "JOB_STATE_RUNNING")
                   | "\(.state_change.reason.code): \(.state_change.reason.message)"] | first // "none"' \
         "$work/events-$job.jsonl")
echo "restart ${detected} ms after the cut (bound ${bound} s): $reason"
grep -qiE "timed out|timeout|deadline" <<<"$reason" ||
  echo "note: the restart reason does not name the timeout: $reason"

wait_job "$job" '.state == "JOB_STATE_SUCCEEDED" or .state == "JOB_STATE_FAILED"' 180
jq -e '.state == "JOB_STATE_SUCCEEDED"' "$work/job.json" >/dev/null || fail "unexpected end: $(cat "$work/job.json")"
mh_check_history "$job"
mh_check_jobs_kept
mh_check_no_split_brain
mh_report "$job" "$fault" 1 "rank hosts cut off from each other (collective timeout ${timeout_s} s)"
echo "PASS: job $job restarted ${detected} ms after its ranks lost each other and SUCCEEDED"

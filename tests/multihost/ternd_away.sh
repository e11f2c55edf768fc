#!/usr/bin/env bash
# ternd's host cut off for longer than the lease TTL plus the agents' shutdown
# grace, then back: the agents' leases
# run out on both sides (their trainers stop; ternd restarts the job), a job
# submitted during the outage is acknowledged, and once the link is back the
# agents reconnect, every acknowledged job is there and both succeed.
# usage: ternd_away.sh BUILD_DIR
set -euo pipefail
build="$(cd "${1:?usage: ternd_away.sh BUILD_DIR}" && pwd)"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ttl=4
grace=5   # the agents' --shutdown-grace: SIGKILL this long after the SIGTERM
# Each agent SIGTERMs its trainer when its lease runs out, at most a TTL after
# the cut, and reaps it at once (its event reports to the unreachable ternd
# go from their own thread: event_outbox.h); the trainer's own lease
# watchdog ends it 2 s after that deadline at the latest. The outage lasts
# past the SIGKILL bound too (TTL + grace), with a second to spare.
outage=$((ttl + grace + 1))
mh_host srv 10
mh_host n1 11
mh_host n2 12
ternd_flags=(--lease-ttl ${ttl}s --tick-interval 250ms --restart-backoff 200ms --max-restart-backoff 1s)
agent_flags=(--shutdown-grace $grace --rpc-timeout 2)
mh_start_ternd srv
mh_start_agent n1
mh_start_agent n2

mh_write_job main 3072 1   # 192 steps
mh_write_job late 256 1    # 16 steps, submitted while ternd is cut off
job=$(mh_submit main)
wait_job "$job" '.state == "JOB_STATE_RUNNING"' 60
wait_checkpoint "$job" 1 8
registered_before=$(grep -c "registered from" "$ternd_log" || true)
fault=$(now_ms)
mh_link srv down
echo "ternd's host cut off at step $(progress_step "$job" 1) for ${outage} s (lease TTL ${ttl} s)"
late=$(mh_submit late)   # ternctl runs on ternd's host: still reachable from there
echo "job $late acknowledged during the outage"
sleep $outage
# Both sides gave up on the lease: the trainers are gone (fenced).
running=$(awk -v j="$job" '$1 == "start" && $3 == j { s[$7] = 1 } $1 == "end" && $3 == j { delete s[$7] }
                          END { for (p in s) print p }' "$ledger")
[[ -z "$running" ]] || fail "trainers of job $job still run ${outage} s into the outage: $running"
mh_link srv up
back=$(now_ms)
for i in $(seq 1 $(( (ttl * 3 + 5) * 10 ))); do
  [[ $(grep -c "registered from" "$ternd_log" || true) -ge $((registered_before + 2)) ]] && break
  [[ $i -eq $(( (ttl * 3 + 5) * 10 )) ]] && fail "the agents did not reconnect: $(grep registered "$ternd_log")"
  sleep 0.1
done
reconnected=$(( $(now_ms) - back ))
echo "both agents reconnected ${reconnected} ms after the link was back"

wait_job "$job" '.state == "JOB_STATE_SUCCEEDED" or .state == "JOB_STATE_FAILED"' 180
jq -e '.state == "JOB_STATE_SUCCEEDED"' "$work/job.json" >/dev/null || fail "job $job ended $(cat "$work/job.json")"
restarts=$(jq -r ".restarts // 0" "$work/job.json")
wait_job "$late" '.state == "JOB_STATE_SUCCEEDED" or .state == "JOB_STATE_FAILED"' 120
jq -e '.state == "JOB_STATE_SUCCEEDED"' "$work/job.json" >/dev/null || fail "job $late ended $(cat "$work/job.json")"
# Nothing committed by attempt 1 after its lease deadline (at most a TTL
# after the cut), before attempt 2 started.
ckdir=$(mh_ctl get "$job" --json | jq -r '.spec.checkpoint.directory')
a2_start=$(awk -v j="$job" '$1 == "start" && $3 == j && $4 == 2 { print $2; exit }' "$ledger")
late_commits=$(find "$ckdir" -name COMMITTED -newermt "@$(( (fault + 999) / 1000 + ttl ))" ! -newermt "@${a2_start%.*}" 2>/dev/null || true)
[[ -z "$late_commits" ]] || fail "checkpoints committed after the lease deadline, before attempt 2 started: $late_commits"
mh_check_history "$job"
mh_check_history "$late"
mh_check_jobs_kept
mh_check_no_split_brain
if [[ $restarts -ge 1 ]]; then
  mh_report "$job" "$fault" 1 "ternd's host away ${outage} s (lease TTL ${ttl} s; agents reconnected ${reconnected} ms after the link returned)"
else
  echo "RESULT ternd's host away: job $job went on without a restart; agents reconnected ${reconnected} ms after the link returned"
fi
echo "PASS: ternd away for ${outage} s: jobs $job ($restarts restarts) and $late SUCCEEDED"

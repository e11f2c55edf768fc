#!/usr/bin/env bash
# Rank 0's host cut off from everyone (its cable pulled) mid-job: its agent's
# lease expires, its trainer fences itself (stops, committing nothing after
# the lease deadline), and the job restarts on the two other hosts from its
# newest committed checkpoint and succeeds. When the cable is back, the old
# agent rejoins and is told that its ranks are gone.
# usage: agent_partition.sh BUILD_DIR
set -euo pipefail
build="$(cd "${1:?usage: agent_partition.sh BUILD_DIR}" && pwd)"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ttl=4
mh_host srv 10
mh_host n1 11
mh_host n2 12
mh_host n3 13
ternd_flags=(--lease-ttl ${ttl}s --tick-interval 250ms --restart-backoff 200ms --max-restart-backoff 1s)
agent_flags=(--shutdown-grace 5 --rpc-timeout 2)
mh_start_ternd srv
mh_start_agent n1
mh_start_agent n2
mh_start_agent n3

mh_write_job part 3072 1   # 192 steps
job=$(mh_submit part)
wait_job "$job" '.state == "JOB_STATE_RUNNING"' 60
wait_checkpoint "$job" 1 8
victim=$(placement "$job" 1 | awk '$1 == 0 { print $2 }')
[[ -n "$victim" ]] || fail "no rank 0 in the ledger"
victim_pid=$(awk -v j="$job" -v h="$victim" '$1 == "start" && $3 == j && $4 == 1 && $6 == h { print $7 }' "$ledger")
checkpoint=$(committed_step "$job" 1)
fault=$(now_ms)
mh_link "$victim" down
echo "cable of $victim (rank 0) pulled at step $(progress_step "$job" 1), newest checkpoint $checkpoint"

# Its trainer must stop by itself at the lease deadline (a lease TTL after
# its last renewal, so at most $ttl s after the cable went), plus the time
# to notice (it polls its lease file) and to exit.
for i in $(seq 1 $(( (ttl + 4) * 10 ))); do
  grep -q "^end .* $victim $victim_pid\$" "$ledger" && break
  [[ $i -eq $(( (ttl + 4) * 10 )) ]] && fail "the trainer on $victim ran on $((ttl + 4)) s after its cable was pulled (lease TTL $ttl s)"
  sleep 0.1
done
fenced=$(awk -v p="$victim_pid" -v f="$fault" '$1 == "end" && $7 == p { printf "%.1f", $2 - f / 1000 }' "$ledger")
stop_line=$(grep -m1 "attempt 1 rank 0/2\] stopping trainer (lease lost)" "${agent_log[$victim]}" || true)
[[ -n "$stop_line" ]] || fail "agent $victim did not stop its trainer for the lost lease"
stop_at=$(date -u -d "$(date -u +%F) $(cut -c2-13 <<<"$stop_line")" +%s%3N)
stopped=$(awk -v s="$stop_at" -v f="$fault" 'BEGIN { printf "%.1f", (s - f) / 1000 }')
echo "the agent on $victim stopped its trainer ${stopped} s after the cable was pulled (lease TTL ${ttl} s), gone after ${fenced} s"

wait_job "$job" '.restarts == 1 and .state == "JOB_STATE_RUNNING"' 60
for i in $(seq 1 300); do
  [[ $(progress_step "$job" 2) -ge 0 ]] && break
  [[ $i -eq 300 ]] && fail "attempt 2 made no progress"
  sleep 0.2
done
placed=$(placement "$job" 2)
grep -q " $victim\$" <<<"$placed" && fail "attempt 2 placed on the cut-off host $victim: $placed"
echo "attempt 2 runs on $(echo $placed | tr '\n' ' ')"

# Nothing committed by the fenced attempt after its lease deadline.
ckdir=$(jq -r '.spec.checkpoint.directory' "$work/job.json")
a2_start=$(awk -v j="$job" '$1 == "start" && $3 == j && $4 == 2 { print $2; exit }' "$ledger")
late=$(find "$ckdir" -name COMMITTED -newermt "@$(( (fault + 999) / 1000 + ttl ))" ! -newermt "@${a2_start%.*}" 2>/dev/null || true)
[[ -z "$late" ]] || fail "checkpoints committed after the lease deadline, before attempt 2 started: $late"

before=$(grep -c "agent $victim registered from" "$ternd_log" || true)
mh_link "$victim" up
back=$(now_ms)
for i in $(seq 1 $(( (ttl * 3 + 5) * 10 ))); do
  [[ $(grep -c "agent $victim registered from ${mh_ip[$victim]}" "$ternd_log" || true) -gt $before ]] && break
  [[ $i -eq $(( (ttl * 3 + 5) * 10 )) ]] && fail "agent $victim did not rejoin after the cable was back"
  sleep 0.1
done
rejoined=$(( $(now_ms) - back ))
# Its ranks are gone for it too: it stopped them at the lease deadline and
# rejoined without them, or it rejoined listing them and ternd ordered them
# killed as stale (no attempt-1 rank of the job is expected any more).
rejoin=$(grep "agent $victim registered from" "$ternd_log" | tail -n 1)
if grep -q "(0 ranks running)" <<<"$rejoin"; then
  grep -q "lost (not renewed within the lease TTL): stopping trainers" "${agent_log[$victim]}" ||
    fail "agent $victim rejoined without its rank but never stopped it for the lost lease"
  told="rejoined with 0 ranks: it had stopped its rank at the lease deadline"
else
  for i in $(seq 1 100); do
    told=$(grep "kill order for job $job attempt 1" "${agent_log[$victim]}" | tail -n 1 || true)
    [[ -n "$told" ]] && break
    [[ $i -eq 100 ]] && fail "agent $victim rejoined with its old rank and was not told to kill it: $rejoin"
    sleep 0.1
  done
fi
echo "agent $victim rejoined ${rejoined} ms after the cable was back; $told"

wait_job "$job" '.state == "JOB_STATE_SUCCEEDED" or .state == "JOB_STATE_FAILED"' 180
jq -e '.state == "JOB_STATE_SUCCEEDED" and .restarts == 1' "$work/job.json" >/dev/null ||
  fail "unexpected end: $(cat "$work/job.json")"
mh_check_history "$job"
mh_check_jobs_kept
mh_check_no_split_brain
mh_report "$job" "$fault" 1 "agent host cut off (lease TTL ${ttl} s; its agent stopped its trainer ${stopped} s after the cut, gone at ${fenced} s; rejoined ${rejoined} ms after the link returned)"
echo "PASS: job $job survived its rank 0 host being cut off"

#!/usr/bin/env bash
# Fault injection end to end: one 2-rank CPU job through the real service
# while its processes are killed with SIGKILL (no chance to clean up), each
# at a moment of the test's choosing:
#   0. ternd right after acknowledging a submission: the job is there after
#      the restart, and the same idempotency key returns it, not a second job;
#   1. one trainer rank: the job restarts (RANK_LOST) and resumes from its
#      newest committed checkpoint, not from step 0;
#   2. ternd while the job trains: the trainers keep running, the agent
#      re-registers with the restarted ternd (same database and port), and
#      the job goes on without a restart;
#   3. ternd frozen (SIGSTOP) past the lease TTL, as a network partition
#      looks to the agent: the trainers stop (fencing), and once ternd runs
#      again the job restarts and resumes from its checkpoint;
#   4. the agent frozen past its lease, then thawed: its trainers stop by
#      themselves at the lease deadline, ternd restarts the job, and the new
#      attempt, on the same agent, resumes from the checkpoint;
#   5. the agent: its trainers die with it, the lease expires, the job
#      restarts and, once an agent is back, resumes from its checkpoint;
#   6. the agent drained (SIGTERM, as Kubernetes stops a pod; not a fault):
#      its trainers commit a checkpoint at the step they reached, the job
#      restarts without using a restart (RANK_PREEMPTED) and, once an agent
#      is back, resumes from exactly that step (the requeue already names it).
# The job must then SUCCEED with 4 restarts, a `ternctl watch` started before
# the first fault must follow it to the end, the event history must be in
# order, and the artifact must download.
# usage: chaos_e2e.sh BUILD_DIR
set -euo pipefail
build="$(cd "${1:?usage: chaos_e2e.sh BUILD_DIR}" && pwd)"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ternd_listen="127.0.0.1:$(free_port)"  # a restarted ternd listens here again
# A lease TTL short enough for a quick test, long enough for an instrumented
# (scripts/sanitize.sh) ternd to restart and the agent to reconnect within it.
ternd_flags=(--lease-ttl 8s --restart-backoff 200ms --max-restart-backoff 1s)
agent_flags=(--agent-id chaos-node)  # a node name: the same after a restart
start_service

# Steps of a 2-rank job: 2048 images / (2 ranks x 16) = 64 steps per epoch,
# 1024 in all: long enough to outlast the faults below.
cat >"$work/job.yaml" <<'YAML'
name: chaos
model: {arch: resnet20, width_multiplier: 0.25}
dataset: {kind: idx, path: /usr/share/datasets/fashion-mnist, max_train_examples: 2048, max_eval_examples: 128}
quantization: {method: hla}
optimization: {epochs: 16, batch_size: 16}
checkpoint: {every_steps: 8}
events: {progress_every_steps: 2}
resources: {ranks: 2, device_kind: cpu}
max_restarts: 6
YAML

job_json() { "${ternctl[@]}" get "$job" --json >"$work/job.json" 2>"$work/get.err"; }
# Waits (up to 120 s) until the job's JSON satisfies the jq filter $2.
wait_job() {
  for _ in $(seq 1 1200); do
    if job_json && jq -e "$2" "$work/job.json" >/dev/null; then return 0; fi
    sleep 0.1
  done
  fail "timed out waiting for $1: $(cat "$work/job.json" "$work/get.err" 2>/dev/null)"
}
events() { "${ternctl[@]}" logs "$job" --json >"$work/events.jsonl"; }
# Newest step checkpointed in attempt $1 (-1: none yet).
committed_step() {
  events
  jq -s --argjson a "$1" '[.[] | select(.attempt == $a and .checkpoint_committed)
                           | .checkpoint_committed.step] | max // -1' "$work/events.jsonl"
}
wait_checkpoint() {  # attempt, minimum step
  for _ in $(seq 1 1200); do
    [[ $(committed_step "$1") -ge $2 ]] && return 0
    sleep 0.1
  done
  fail "attempt $1 committed no checkpoint at step >= $2"
}
# The step attempt $1 resumed from (its AttemptStarted event; 0: a fresh
# start), waiting up to 60 s for the event.
resumed_step() {
  for _ in $(seq 1 600); do
    events
    local step
    step=$(jq -s --argjson a "$1" '[.[] | select(.attempt == $a and .attempt_started)
                                   | .attempt_started.resumed_from_step // 0] | first // empty' \
           "$work/events.jsonl")
    [[ -n "$step" ]] && { echo "$step"; return 0; }
    sleep 0.1
  done
  fail "attempt $1 has no attempt_started event"
}
# Newest step attempt $1 reported progress at (-1: none yet).
progress_step() {
  events
  jq -s --argjson a "$1" '[.[] | select(.attempt == $a and .progress) | .progress.step]
                          | max // -1' "$work/events.jsonl"
}
# Reason code of attempt $1's move to RESTARTING.
restart_reason() {
  events
  jq -r -s --argjson a "$1" '[.[] | select(.attempt == $a
                                        and .state_change.to_state == "JOB_STATE_RESTARTING")
                             | .state_change.reason.code] | first // "none"' "$work/events.jsonl"
}
# Fails unless attempt $1 moved to RESTARTING for one of the reasons $2...;
# sets `reason`.
check_reason() {
  local attempt=$1 want
  shift
  reason=$(restart_reason "$attempt")
  for want in "$@"; do [[ "$reason" == "$want" ]] && return 0; done
  fail "attempt $attempt ended with $reason, not $*"
}
# Fails unless attempt $1 resumed from a checkpoint no older than step $2.
check_resumed() {
  resumed=$(resumed_step "$1")
  [[ "$resumed" -ge "$2" && "$resumed" -gt 0 ]] ||
    fail "attempt $1 resumed from step $resumed, not from the checkpoint at step $2 or later"
}
# Whether process $1 runs (a zombie, which a frozen parent has not reaped,
# does not).
running() {
  local state
  state=$(sed -E 's/^.*\) (.).*$/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n "$state" && "$state" != Z ]]
}
# Waits up to $1 seconds until none of the processes $3... runs; else fails
# with "$2".
wait_gone() {
  local seconds=$1 what=$2 pid i
  shift 2
  for pid in "$@"; do
    for i in $(seq 1 $((seconds * 10))); do
      running "$pid" || break
      [[ $i -eq $((seconds * 10)) ]] && fail "$what (pid $pid)"
      sleep 0.1
    done
  done
}
trainers() { pgrep -P "$agent" -f tern-trainer | sort || true; }

# 0. ternd killed right after it acknowledged a submission.
job=$("${ternctl[@]}" submit "$work/job.yaml" --idempotency-key chaos-1)
crash "$ternd"
start_ternd
again=$("${ternctl[@]}" submit "$work/job.yaml" --idempotency-key chaos-1)
[[ "$again" == "$job" ]] || fail "the same idempotency key after a crash gave job $again, not $job"
[[ $("${ternctl[@]}" list --json | jq -s 'length') -eq 1 ]] || fail "expected one job after the crash"
echo "0. ternd SIGKILLed after acknowledging job $job: still there after the restart, no duplicate"

"${ternctl[@]}" watch "$job" >"$work/watch.out" 2>"$work/watch.log" &
watcher=$!

# 1. One trainer rank killed after the first checkpoint.
wait_job "RUNNING" '.state == "JOB_STATE_RUNNING"'
wait_checkpoint 1 8
victim=$(trainers | tail -n 1)
[[ -n "$victim" ]] || fail "no trainer to kill"
kill -KILL "$victim"
wait_job "restart 1" '.restarts == 1 and .state == "JOB_STATE_RUNNING"'
checkpoint=$(committed_step 1)
wait_checkpoint 2 $((checkpoint + 8))
check_resumed 2 "$checkpoint"
check_reason 1 RANK_LOST
# The cause, not the symptom: the survivor's failed all-reduce (exit 6) may be
# reported first, but the restart names the rank that was killed.
restart_message=$(jq -r -s '[.[] | select(.attempt == 1
                                     and .state_change.to_state == "JOB_STATE_RESTARTING")
                            | .state_change.reason.message] | first // ""' "$work/events.jsonl")
[[ "$restart_message" == *"killed by signal 9"* ]] ||
  fail "attempt 1's restart does not name the killed rank: $restart_message"
echo "1. trainer $victim SIGKILLed: job restarted, resumed from step $resumed (newest checkpoint event: $checkpoint)"

# 2. ternd killed while the job trains; restarted on the same database and port.
before=$(trainers)
[[ $(wc -l <<<"$before") -eq 2 ]] || fail "expected 2 trainers, got: $before"
job_json
step=$(jq -r '.progress.step // 0' "$work/job.json")
crash "$ternd"
sleep 0.5
start_ternd
up=$(date +%s%N)
for i in $(seq 1 100); do
  grep -q "agent chaos-node registered from .* (2 ranks running)" "$ternd_log" && break
  [[ $i -eq 100 ]] && fail "the agent did not rejoin the restarted ternd with its 2 trainers"
  sleep 0.1
done
rejoined_ms=$(( ($(date +%s%N) - up) / 1000000 ))
wait_job "progress after ternd's restart" ".progress.step > $((step + 8)) and .state == \"JOB_STATE_RUNNING\""
[[ $(jq -r .restarts "$work/job.json") -eq 1 ]] || fail "ternd's restart restarted the job: $(cat "$work/job.json")"
[[ "$(trainers)" == "$before" ]] || fail "the trainers changed across ternd's restart: $before -> $(trainers)"
echo "2. ternd SIGKILLed at step $step and restarted: the agent rejoined within ${rejoined_ms} ms with the same trainers, job at step $(jq .progress.step "$work/job.json"), no restart"

# 3. ternd frozen past the lease TTL: the trainers must stop (at their
# agent-lease deadline, or stopped by the agent), and the job go on once
# ternd runs again.
wait_checkpoint 2 $((resumed + 8))
checkpoint=$(committed_step 2)
fenced=$(trainers)
kill -STOP "$ternd"
start=$(date +%s)
( wait_gone 15 "a trainer ran on 15 s after ternd froze (lease TTL 8 s)" $fenced ) ||
  { kill -CONT "$ternd"; exit 1; }
fenced_after=$(( $(date +%s) - start ))
kill -CONT "$ternd"
wait_job "restart 2" '.restarts == 2 and .state == "JOB_STATE_RUNNING"'
check_resumed 3 "$checkpoint"
check_reason 2 AGENT_LEASE_EXPIRED RANK_LOST
echo "3. ternd frozen: the trainers stopped after ${fenced_after} s (lease TTL 8 s); after the thaw ($reason) the job resumed from step $resumed"

# 4. The agent frozen past its lease, then thawed. Its trainers must stop by
# themselves at the lease deadline (their agent-lease file is no longer
# renewed), before the thaw.
frozen=$(trainers)
checkpoint=$(committed_step 3)
kill -STOP "$agent"
start=$(date +%s)
( wait_gone 15 "a trainer of the frozen agent ran on 15 s after the freeze (lease TTL 8 s)" \
    $frozen ) || { kill -CONT "$agent"; exit 1; }
fenced_after=$(( $(date +%s) - start ))
wait_job "lease expiry of the frozen agent" '.state == "JOB_STATE_RESTARTING" or .state == "JOB_STATE_QUEUED"'
kill -CONT "$agent"
wait_job "restart 3" '.restarts == 3 and .state == "JOB_STATE_RUNNING"'
check_resumed 4 "$checkpoint"
check_reason 3 AGENT_LEASE_EXPIRED
echo "4. agent frozen past its lease: its trainers stopped by themselves after ${fenced_after} s; after the thaw the job resumed from step $resumed"

# 5. The agent killed: its trainers must die with it (PR_SET_PDEATHSIG), the
# lease expire, and the job resume once an agent is back.
wait_checkpoint 4 $((resumed + 8))
attempt4=$(trainers)
crash "$agent"
wait_gone 5 "a trainer outlived its SIGKILLed agent by 5 s" $attempt4
wait_job "lease expiry" '.state == "JOB_STATE_RESTARTING" or .state == "JOB_STATE_QUEUED"'
checkpoint=$(committed_step 4)
start_agent
wait_job "restart 4" '.restarts == 4 and .state == "JOB_STATE_RUNNING"'
check_resumed 5 "$checkpoint"
check_reason 4 AGENT_LEASE_EXPIRED
echo "5. agent SIGKILLed: trainers gone, lease expired, job resumed from step $resumed (newest checkpoint event: $checkpoint)"

# 6. The agent drained: SIGTERM, exit 0 once its trainers have stopped at a
# checkpoint of the step they reached (not the last periodic one).
wait_checkpoint 5 $((resumed + 8))
before=$(committed_step 5)
drain_start=$(date +%s%N)
shut_down "$agent" 20
drain_ms=$(( ($(date +%s%N) - drain_start) / 1000000 ))
reported=$(progress_step 5)
check_reason 5 RANK_PREEMPTED
start_agent
# The stop's checkpoint is what the next attempt finds on disk.
drained=$(resumed_step 6)
[[ $drained -ge $reported && $drained -gt $before ]] ||
  fail "attempt 6 resumed from step $drained: not a checkpoint taken by the drain (attempt 5 reported step $reported, its newest checkpoint before the drain was $before)"
# And ternd knew that step when it requeued the job: every rank's `stopped`
# line reaches it before that rank's exit, the first of which requeues.
requeue=$(jq -r -s '[.[] | select(.attempt == 6 and .state_change.reason.code == "REQUEUED")
                     | .state_change.reason.message] | first // ""' "$work/events.jsonl")
[[ "$requeue" == *"resuming from step $drained" ]] ||
  fail "attempt 6's requeue says '$requeue', not that it resumes from step $drained"
job_json
[[ $(jq -r .restarts "$work/job.json") -eq 4 ]] || fail "the drain used a restart: $(cat "$work/job.json")"
echo "6. agent drained (SIGTERM, exited after ${drain_ms} ms): attempt 6 resumed from step $drained (attempt 5 last reported $reported) without using a restart"

# 7. The job ends well, the watcher followed it, the history is in order.
status=0
wait "$watcher" || status=$?
[[ $status -eq 0 ]] || fail "ternctl watch exited $status: $(tail -n 5 "$work/watch.log")"
job_json
jq -e '.state == "JOB_STATE_SUCCEEDED" and .restarts == 4 and .result.ternary_top1 > 0' \
  "$work/job.json" >/dev/null || fail "unexpected end: $(cat "$work/job.json")"
events
jq -s -e '[.[].sequence | tonumber] as $s | $s == ($s | sort) and ($s | unique | length) == ($s | length)' \
  "$work/events.jsonl" >/dev/null || fail "event sequence numbers out of order or repeated"
jq -s -e '[.[].attempt] as $a | $a == ($a | sort)' "$work/events.jsonl" >/dev/null ||
  fail "events of an earlier attempt after a later one"
"${ternctl[@]}" fetch "$job" -o "$work/chaos.tern" >/dev/null || fail "fetch failed"
echo "7. job $job SUCCEEDED after 4 restarts (top-1 $(jq .result.ternary_top1 "$work/job.json")), watch followed it, artifact fetched"

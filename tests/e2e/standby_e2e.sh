#!/usr/bin/env bash
# Two ternd on one PostgreSQL store (issue 28): ternd A leads, ternd B is a
# standby; two tern-agents and the clients are given both addresses. While
# clients submit a load of small jobs (tern_service_load_bench --submit-jobs,
# retrying with the same idempotency key) and two real tiny training jobs run
# with checkpoints, A is killed with SIGKILL. Measured and printed: how long
# until B leads (its /readyz answers 200). Afterwards:
#   - every acknowledged submission is stored exactly once (and nothing else);
#   - every job reaches a final state (the load SUCCEEDED, none stuck);
#   - the training jobs SUCCEEDED, resuming from a checkpoint where they were
#     restarted;
#   - no job ran two copies at once: the stand-in trainers log start and end
#     times per job and attempt, and no two intervals of one job overlap;
#   - A, restarted, is a standby (/readyz 503, NOT_LEADER naming B).
# Needs PostgreSQL's server programs (scripts/pg-test-server.sh) and psql,
# required lines of scripts/tools.list: it fails without them.
# usage: standby_e2e.sh BUILD_DIR [JOBS]   (default 400, or TERN_STANDBY_E2E_JOBS)
# The issue's full size: TERN_STANDBY_E2E_CLIENTS=200 TERN_STANDBY_E2E_SLOTS=32
#   TERN_STANDBY_E2E_DRAIN_SECONDS=1200 standby_e2e.sh BUILD_DIR 20000
# (defaults: 8 clients, 8 slots per agent, 150 s for every job to end).
set -euo pipefail
build="$(cd "${1:?usage: standby_e2e.sh BUILD_DIR [JOBS]}" && pwd)"
jobs=${2:-${TERN_STANDBY_E2E_JOBS:-400}}
clients=${TERN_STANDBY_E2E_CLIENTS:-8}
slots=${TERN_STANDBY_E2E_SLOTS:-8}
drain_seconds=${TERN_STANDBY_E2E_DRAIN_SECONDS:-150}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bench="$build/bench/service/tern_service_load_bench"
[[ -x "$bench" ]] || { echo "FAIL: $bench is not built"; exit 1; }
# All three are required lines of scripts/tools.list: missing, the test fails.
command -v psql >/dev/null || { echo "FAIL: no psql (Debian package postgresql-client)"; exit 1; }
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null ||
  { echo "FAIL: no PostgreSQL server programs (Debian package postgresql)"; exit 1; }
command -v jq >/dev/null || { echo "FAIL: no jq"; exit 1; }
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The PostgreSQL server: a short directory (the socket path limit), stopped
# and removed at exit after lib.sh's cleanup of the processes.
pgdir="$(mktemp -d /tmp/tern-pg-e2e.XXXXXX)"
url=$(bash "$root/scripts/pg-test-server.sh" start "$pgdir" | tail -1)
exit_hooks+=("bash '$root/scripts/pg-test-server.sh' stop '$pgdir' >/dev/null 2>&1")
psql_q() { psql "$url" -v ON_ERROR_STOP=1 -Atqc "$1"; }

rdv_port=$(free_port)
rdv_port_max=$((rdv_port + 200))
port_a=$(free_port)
port_b=$(free_port)
a="127.0.0.1:$port_a"
b="127.0.0.1:$port_b"
servers="$a,$b"
mkdir -p "$work/shared"
ttl=3s
# One ternd on address $1 (name $2); the pid in ternd_pid, its metrics
# address in ternd_metrics.
start_one() {  # address name
  local out="$work/ternd-$2.out" log="$work/ternd-$2.log"
  [[ -f "$out" ]] && out="$work/ternd-$2-again.out" log="$work/ternd-$2-again.log"
  "$build/server/ternd" --db "$url" --listen "$1" --advertise-address "$1" \
    --leader-lease-ttl "$ttl" --metrics-listen 127.0.0.1:0 \
    --rendezvous-key-file "$work/shared/rendezvous-key" \
    --rendezvous-port-min "$rdv_port" --rendezvous-port-max "$rdv_port_max" \
    --artifact-root "$work/shared/artifacts" --checkpoint-root "$work/shared/checkpoints" \
    --lease-ttl 10s --restart-backoff 100ms --max-restart-backoff 500ms --tick-interval 200ms \
    >"$out" 2>"$log" &
  ternd_pid=$!
  pids+=("$ternd_pid")
  process_names[$ternd_pid]="ternd $2"
  wait_for_line "$out" "listening on" >/dev/null
  ternd_metrics=$(wait_for_line "$out" "metrics on")
}
readyz() { curl -s -o /dev/null -w '%{http_code}' "http://$1/readyz" || true; }
wait_ready() {  # metrics address, seconds
  for _ in $(seq 1 $(($2 * 20))); do
    [[ $(readyz "$1") == 200 ]] && return 0
    sleep 0.05
  done
  return 1
}

start_one "$a" A
pid_a=$ternd_pid metrics_a=$ternd_metrics
wait_ready "$metrics_a" 20 || fail "ternd A does not lead"
start_one "$b" B
pid_b=$ternd_pid metrics_b=$ternd_metrics
sleep 1
[[ $(readyz "$metrics_b") == 503 ]] || fail "standby B is ready: $(readyz "$metrics_b")"
echo "ternd A leads on $a; B is a standby on $b"

# The agents' trainer: the real tern-trainer for the training jobs (label
# kind=train in their spec), else a stand-in that logs its interval, says it
# started and finished, and exits 0.
cat >"$work/trainer.sh" <<SH
#!/bin/bash
# Shell builtins only, but for sleep: at the full size (20,000 jobs) the
# forks of the stand-ins were what bound the machine.
spec= prev= rank=0 world=1
for arg in "\$@"; do
  case "\$prev" in
    --spec) spec="\$arg" ;;
    --rank) rank="\$arg" ;;
    --world-size) world="\$arg" ;;
  esac
  prev="\$arg"
done
if [[ "\$(<"\$spec")" =~ \"kind\":\ *\"train\" ]]; then
  exec "$build/worker/trainer/tern-trainer" "\$@"
fi
job="\${spec%/*}" job="\${job%/*}" job="\${job##*/}"
attempt="\${spec##*-}" attempt="\${attempt%.json}"
start="\${EPOCHREALTIME/./}"
sleep 0.3
common="\\"job\\":\\"j\\",\\"rank\\":\$rank,\\"world_size\\":\$world"
echo "{\\"event\\":\\"started\\",\$common,\\"time\\":1.0,\\"resumed_from_step\\":-1,\\"steps_per_epoch\\":1,\\"device\\":\\"cpu\\"}"
echo "{\\"event\\":\\"finished\\",\$common,\\"time\\":2.0,\\"fp\\":{\\"top1\\":0.5},\\"artifact\\":{\\"top1\\":0.5},\\"artifact_path\\":\\"\\",\\"artifact_bytes\\":0,\\"bits_per_weight\\":1.6,\\"steps\\":1}"
echo "\$job \$attempt \$start \${EPOCHREALTIME/./}" >>"$work/intervals"
exit 0
SH
chmod +x "$work/trainer.sh"
: >"$work/intervals"

for id in a1 a2; do
  "$build/worker/agent/tern-agent" --server "$servers" --agent-id "$id" --cpu-slots "$slots" \
    --trainer "$work/trainer.sh" --workdir "$work/agent-$id" --metrics-listen 127.0.0.1:0 \
    --confine-writes off >"$work/agent-$id.out" 2>"$work/agent-$id.log" &
  pids=("$!" "${pids[@]}")
  process_names[$!]="tern-agent $id"
  wait_for_line "$work/agent-$id.out" "metrics on" >/dev/null
done
ternctl=("$build/cli/ternctl" --server "$servers" --owner e2e --timeout 20)

# Two real tiny training jobs, each until its first checkpoint before the load.
cat >"$work/train.yaml" <<'YAML'
model: {arch: resnet20, width_multiplier: 0.25}
dataset: {kind: idx, path: /usr/share/datasets/fashion-mnist, max_train_examples: 512, max_eval_examples: 64}
quantization: {method: hla}
optimization: {epochs: 3, batch_size: 16}
checkpoint: {every_steps: 8}
events: {progress_every_steps: 2}
resources: {ranks: 1, device_kind: cpu}
max_restarts: 4
labels: {kind: train}
YAML
train1=$("${ternctl[@]}" submit "$work/train.yaml" --idempotency-key train-1)
train2=$("${ternctl[@]}" submit "$work/train.yaml" --idempotency-key train-2)
echo "training jobs $train1 $train2"
for job in "$train1" "$train2"; do
  for i in $(seq 1 300); do
    # Captured, not piped: under pipefail, grep -q quitting at the first
    # match failed ternctl's later writes (SIGPIPE) once the log outgrew the
    # pipe, and so every check.
    logs=$("${ternctl[@]}" logs "$job" --json 2>/dev/null || true)
    grep -q checkpoint_committed <<<"$logs" && break
    [[ $i -eq 300 ]] && fail "job $job committed no checkpoint within a minute"
    sleep 0.2
  done
done

acks="$work/acks"
: >"$acks"
"$bench" --server "$servers" --submit-jobs "$jobs" --concurrency "$clients" --ack-file "$acks" \
  --owner e2e --retry-seconds 90 >"$work/bench.out" 2>&1 &
load=$!
process_names[$load]=load
wait_acked() {  # count
  for _ in $(seq 1 1200); do
    [[ $(wc -l <"$acks") -ge $1 ]] && return 0
    kill -0 "$load" 2>/dev/null || break
    sleep 0.1
  done
  fail "fewer than $1 acknowledged: $(wc -l <"$acks"); $(cat "$work/bench.out")"
}
wait_acked $((jobs / 4))
crash "$pid_a"
killed=$(date +%s%N)
echo "killed ternd A (SIGKILL) at $(wc -l <"$acks") acknowledged"
wait_ready "$metrics_b" 30 || fail "standby B did not take over within 30 s"
took=$((($(date +%s%N) - killed) / 1000000))
echo "FAILOVER: ternd B leads ${took} ms after A was killed (leader lease TTL $ttl)"

wait "$load" || fail "the load did not complete: $(cat "$work/bench.out")"
cat "$work/bench.out"

# Every submission acknowledged once per key, no id for two keys, and the
# store holds exactly those (plus the two training jobs).
[[ $(wc -l <"$acks") -eq $jobs ]] || fail "$(wc -l <"$acks") acknowledgements for $jobs jobs"
[[ $(cut -d' ' -f2 "$acks" | sort -u | wc -l) -eq $jobs ]] || fail "a key acknowledged twice"
[[ $(cut -d' ' -f1 "$acks" | sort -u | wc -l) -eq $jobs ]] || fail "one job id for two keys"
{ cat "$acks"; echo "$train1 train-1"; echo "$train2 train-2"; } | sort >"$work/acked.sorted"
psql_q "SELECT id || ' ' || idempotency_key FROM jobs" | sort >"$work/stored.sorted"
# Job ids are shown as ternctl prints them; compare the keys and counts.
diff <(cut -d' ' -f2 "$work/acked.sorted" | sort) <(cut -d' ' -f2 "$work/stored.sorted" | sort) \
  >/dev/null || fail "stored jobs differ from the acknowledged ones"
[[ $(psql_q "SELECT count(*) FROM jobs") -eq $((jobs + 2)) ]] || fail "jobs stored twice"

# Every job ends; the load's SUCCEEDED, the training jobs too.
deadline=$(($(date +%s) + drain_seconds))
while :; do
  open=$(psql_q "SELECT count(*) FROM jobs WHERE state NOT IN ('SUCCEEDED','FAILED','CANCELLED')")
  [[ $open -eq 0 || $(date +%s) -ge $deadline ]] && break
  sleep 0.5
done
[[ $open -eq 0 ]] || fail "$open jobs not final: $(psql_q "SELECT state, count(*) FROM jobs GROUP BY state")"
echo "DRAINED: every job final $(($(date +%s) - deadline + drain_seconds)) s after the last acknowledgement"
bad=$(psql_q "SELECT count(*) FROM jobs WHERE state <> 'SUCCEEDED'")
[[ $bad -eq 0 ]] || fail "$bad jobs did not succeed: $(psql_q "SELECT id, state FROM jobs WHERE state <> 'SUCCEEDED' LIMIT 5")"
for job in "$train1" "$train2"; do
  "${ternctl[@]}" logs "$job" --json >"$work/events-$job.jsonl"
  attempts=$(jq -s '[.[] | .attempt] | max' "$work/events-$job.jsonl")
  resumed=$(jq -s '[.[] | select(.attempt_started) | .attempt_started.resumed_from_step // 0] | max' \
    "$work/events-$job.jsonl")
  echo "training job $job: SUCCEEDED after $attempts attempt(s), resumed from step $resumed"
  if [[ $attempts -gt 1 && $resumed -le 0 ]]; then
    fail "job $job restarted from step 0, not from its checkpoint"
  fi
done

# No two copies of one job at once: per job, intervals sorted by start must
# not overlap.
overlaps=$(sort -k1,1 -k3,3n "$work/intervals" |
  awk '$1 == job && $3 < end { n++ } { if ($1 != job || $4 > end) end = $4; job = $1 } END { print n + 0 }')
[[ $overlaps -eq 0 ]] || fail "$overlaps stand-in runs overlapped another run of the same job"
# The training trainers: one attempt's events never follow a later attempt's start.
for job in "$train1" "$train2"; do
  jq -s -e 'reduce .[] as $e ({max: 0, ok: true};
              if ($e.attempt // 0) < .max and ($e.progress != null) then .ok = false
              else .max = ([.max, ($e.attempt // 0)] | max) end) | .ok' \
    "$work/events-$job.jsonl" >/dev/null || fail "job $job: progress from an older attempt after a newer one"
done

# A comes back as a standby naming B.
start_one "$a" A
sleep 1
[[ $(readyz "$ternd_metrics") == 503 ]] || fail "restarted A is ready: $(readyz "$ternd_metrics")"
grep -q '^tern_leader 0$' <(curl -s "http://$ternd_metrics/metrics") || fail "restarted A reports tern_leader 1"
grep -q '^tern_leader 1$' <(curl -s "http://$metrics_b/metrics") || fail "B reports tern_leader 0"
# Clients given both addresses still reach the leader, B.
"${ternctl[@]}" get "$train1" >/dev/null || fail "ternctl --server $servers get failed"
echo "PASS: $jobs jobs + 2 training jobs over a leader crash: failover in ${took} ms," \
  "all acknowledged jobs stored once and SUCCEEDED, no job ran twice at once, training jobs continued; A restarted as a standby"

#!/usr/bin/env bash
# A rendezvous port that another process holds: with ternd's range [P, P+1]
# and P held by a listener that is not tern's, a 2-rank job with
# max_restarts 0 still SUCCEEDS. Rank 0 of attempt 1 cannot listen on P and
# exits 5; ternd records RENDEZVOUS_PORT_IN_USE (no restart charged),
# quarantines P on that agent and gives attempt 2 port P+1. Before the fix
# every attempt got P again and the job FAILED.
# usage: rendezvous_port_e2e.sh BUILD_DIR
set -euo pipefail
build="$(cd "${1:?usage: rendezvous_port_e2e.sh BUILD_DIR}" && pwd)"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Two adjacent free ports below the ephemeral range; hold the first.
for _ in $(seq 1 50); do
  rdv_port=$(free_port)
  rdv_port_max=$((rdv_port + 1))
  python3 - "$rdv_port_max" <<'PY' && break
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.close()
PY
done
python3 - "$rdv_port" "$work/holder.ready" <<'PY' &
import signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
try:  # as c10d's TCPStore binds: [::]:P, dual-stack
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", int(sys.argv[1])))
except OSError:  # no IPv6 here
    s = socket.socket()
    s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
open(sys.argv[2], "w").close()
time.sleep(3600)
PY
holder=$!
pids+=("$holder")
process_names[$holder]=port-holder
for _ in $(seq 1 100); do [[ -f "$work/holder.ready" ]] && break; sleep 0.1; done
[[ -f "$work/holder.ready" ]] || fail "the port holder did not start"
echo "port $rdv_port held by process $holder; ternd's range [$rdv_port, $rdv_port_max]"

start_service
cat >"$work/job.yaml" <<'YAML'
name: port-in-use
model: {arch: resnet20, width_multiplier: 0.25}
dataset: {kind: idx, path: /usr/share/datasets/fashion-mnist, max_train_examples: 128, max_eval_examples: 32}
quantization: {method: hla}
optimization: {epochs: 1, batch_size: 32}
resources: {ranks: 2, device_kind: cpu}
max_restarts: 0
YAML
job=$("${ternctl[@]}" submit "$work/job.yaml")
echo "job $job"
for _ in $(seq 1 1200); do
  "${ternctl[@]}" get "$job" --json >"$work/job.json"
  jq -e '.state == "JOB_STATE_SUCCEEDED" or .state == "JOB_STATE_FAILED"' "$work/job.json" \
    >/dev/null && break
  sleep 0.1
done
"${ternctl[@]}" logs "$job" --json >"$work/events.jsonl"
jq -e '.state == "JOB_STATE_SUCCEEDED"' "$work/job.json" >/dev/null ||
  fail "job $job did not succeed: $(jq -c '{state, state_reason}' "$work/job.json"); events: $(jq -c '.state_change // empty' "$work/events.jsonl")"
jq -e '(.restarts // 0) == 0' "$work/job.json" >/dev/null || fail "a restart was charged"
jq -se '[.[] | select(.state_change.reason.code == "RENDEZVOUS_PORT_IN_USE")] | length == 1' \
  "$work/events.jsonl" >/dev/null || fail "no RENDEZVOUS_PORT_IN_USE event"
jq -se --arg p "$rdv_port" '[.[] | select(.state_change.reason.code == "RENDEZVOUS_PORT_IN_USE")
    | .state_change.reason.message | contains("rendezvous port " + $p)] | all' \
  "$work/events.jsonl" >/dev/null || fail "the event does not name port $rdv_port"
jq -se --arg p "$rdv_port_max" '[.[] | select(.attempt == 2 and .state_change.to_state == "JOB_STATE_ADMITTED")
    | .state_change.reason.message | endswith(":" + $p)] | any' \
  "$work/events.jsonl" >/dev/null || fail "attempt 2 did not get port $rdv_port_max"
echo "PASS: attempt 1 found port $rdv_port taken, attempt 2 used $rdv_port_max, no restart charged"

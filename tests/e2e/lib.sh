# Shared by the e2e scripts (source it): a temp dir, process cleanup, and
# starting ternd + one tern-agent on loopback with ephemeral ports. Needs
# `build` (the build directory) set before sourcing; the agent's slots are
# the array agent_slots (default: --cpu-slots 2).
# After start_service: $server, $ternd_metrics, $ternd_log, $agent,
# $agent_metrics and the array ternctl=(ternctl --server ... --owner e2e) are
# set.
# TERN_E2E_KEEP=1 keeps the temp dir (its path is printed) for a look after a failure.

for bin in server/ternd worker/agent/tern-agent cli/ternctl worker/trainer/tern-trainer; do
  [[ -x "$build/$bin" ]] || { echo "FAIL: $build/$bin is not built"; exit 1; }
done
work="$(mktemp -d "${TMPDIR:-/tmp}/tern-e2e.XXXXXX")"
pids=()
exit_hooks=()  # commands run at exit after the processes stopped (e.g. a database server)
cleanup() {
  local rc=$? pid status
  # agent first (it stops its trainers), then ternd and the others. Each must
  # shut down cleanly on SIGTERM: exit 0 within 10 s (a sanitizer report at
  # exit, a hang or a crash in shutdown fails the test that passed so far).
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
      echo "FAIL: process $pid ($(process_name "$pid")) did not exit within 10 s of SIGTERM"
      [[ $rc -eq 0 ]] && rc=1
    fi
    status=0
    wait "$pid" 2>/dev/null || status=$?
    if [[ $status -ne 0 && $rc -eq 0 ]]; then
      echo "FAIL: process $pid ($(process_name "$pid")) exited with status $status after SIGTERM"
      rc=1
    fi
  done
  if [[ $rc -ne 0 && $rc -ne 77 ]]; then
    for log in "$work"/*.log "$work"/*.out; do
      [[ -f "$log" ]] || continue
      echo "--- tail of $log"; tail -n 30 "$log"
    done
  fi
  local hook
  for hook in "${exit_hooks[@]}"; do eval "$hook" || true; done
  if [[ -n ${TERN_E2E_KEEP:-} ]]; then echo "kept $work"; else rm -rf "$work"; fi
  exit "$rc"
}
declare -A process_names=()
process_name() { echo "${process_names[$1]:-?}"; }
trap cleanup EXIT
trap 'exit 143' TERM INT

fail() { echo "FAIL: $*"; exit 1; }

wait_for_line() {  # file pattern -> prints HOST:PORT of the first matching line
  for _ in $(seq 1 600); do
    if grep -q "$2" "$1" 2>/dev/null; then
      grep -m1 "$2" "$1" | grep -oE '127\.0\.0\.1:[0-9]+' | head -1
      return 0
    fi
    sleep 0.1
  done
  fail "timed out waiting for '$2' in $1"
}

# Test certificates (tests/auth/make_test_certs.sh) in $c; skips (77) without
# an openssl command.
make_test_certs() {
  command -v openssl >/dev/null || { echo "SKIP: no openssl command"; exit 77; }
  bash "$(dirname "${BASH_SOURCE[0]}")/../auth/make_test_certs.sh" "$work/certs"
  c="$work/certs"
}

# A tiny 1-rank CPU job (HLA, 256 Fashion-MNIST images, 1 epoch) in file $1.
write_small_job() {
  cat >"$1" <<'YAML'
model: {arch: resnet20, width_multiplier: 0.25}
dataset: {kind: idx, path: /usr/share/datasets/fashion-mnist, max_train_examples: 256, max_eval_examples: 64}
quantization: {method: hla}
optimization: {epochs: 1, batch_size: 32}
resources: {ranks: 1, device_kind: cpu}
YAML
}

# A free port below the kernel's ephemeral range (ip_local_port_range), so that
# no process binding port 0 meanwhile (an agent's --metrics-listen :0, a
# client's outgoing connection) can take it before it is used.
free_port() {
  python3 - <<'PY'
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(1000):
    port = random.randrange(20000, max(20001, low))
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    break
else:
    raise SystemExit("no free port in [20000, %d)" % low)
PY
}

# Extra flags: ternd_flags for ternd, client_flags for tern-agent and ternctl
# (tls_e2e.sh sets both), agent_flags for tern-agent alone. ternd_listen is
# ternd's gRPC address (default: an ephemeral port; chaos_e2e.sh fixes one so
# that a restarted ternd is found again). ternd_db is its --db (default: an
# SQLite file in the temp dir; postgres_e2e.sh gives a PostgreSQL URL).
ternd_flags=()
ternd_db="$work/ternd.db"
client_flags=()
agent_flags=()
ternd_listen=127.0.0.1:0
rdv_port=
starts=0
start_ternd() {
  # A rendezvous port of our own (rdv_port_max: a range), not ternd's
  # default range, so that other tests running at the same time cannot
  # collide with this job's ranks.
  [[ -n "$rdv_port" ]] || rdv_port=$(free_port)
  starts=$((starts + 1))
  local out="$work/ternd.out" log="$work/ternd.log"
  [[ $starts -gt 1 ]] && out="$work/ternd-$starts.out" log="$work/ternd-$starts.log"
  "$build/server/ternd" --listen "$ternd_listen" --db "$ternd_db" --metrics-listen 127.0.0.1:0 \
    --rendezvous-port-min "$rdv_port" --rendezvous-port-max "${rdv_port_max:-$rdv_port}" \
    --artifact-root "$work/artifacts" --checkpoint-root "$work/checkpoints" \
    "${ternd_flags[@]}" >"$out" 2>"$log" &
  ternd=$!
  ternd_log="$log"
  pids+=("$ternd")
  process_names[$ternd]=ternd
  server=$(wait_for_line "$out" "listening on")
  ternd_metrics=$(wait_for_line "$out" "metrics on")
  echo "ternd on $server, metrics on $ternd_metrics"
}
start_agent() {
  starts=$((starts + 1))
  local out="$work/agent.out" log="$work/agent.log"
  [[ -f "$out" ]] && out="$work/agent-$starts.out" log="$work/agent-$starts.log"
  local -a slots=(--cpu-slots 2)
  [[ -n "${agent_slots[*]:-}" ]] && slots=("${agent_slots[@]}")
  "$build/worker/agent/tern-agent" --server "$server" "${slots[@]}" \
    --trainer "$build/worker/trainer/tern-trainer" --workdir "$work/agent" \
    --metrics-listen 127.0.0.1:0 "${client_flags[@]}" "${agent_flags[@]}" \
    >"$out" 2>"$log" &
  agent=$!
  process_names[$agent]=tern-agent
  pids=("$agent" "${pids[@]}")  # stopped first: it stops its trainers
  agent_metrics=$(wait_for_line "$out" "metrics on")
  echo "tern-agent metrics on $agent_metrics"
}
start_service() {
  start_ternd
  start_agent
  ternctl=("$build/cli/ternctl" --server "$server" --owner e2e "${client_flags[@]}")
}

# Leaves process $1 out of the clean-shutdown check at exit.
forget() {
  local -a kept=()
  local pid
  for pid in "${pids[@]}"; do [[ "$pid" == "$1" ]] || kept+=("$pid"); done
  pids=("${kept[@]}")
}
# Fault injection: SIGKILL process $1 (no chance to clean up) and reap it.
crash() {
  kill -KILL "$1"
  wait "$1" 2>/dev/null || true
  forget "$1"
}
# A graceful stop (as Kubernetes stops a pod): SIGTERM process $1, which must
# exit 0 within $2 seconds.
shut_down() {
  local status=0
  kill -TERM "$1"
  for _ in $(seq 1 $(($2 * 10))); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$1" 2>/dev/null && fail "process $1 ($(process_name "$1")) still runs $2 s after SIGTERM"
  wait "$1" 2>/dev/null || status=$?
  forget "$1"
  [[ $status -eq 0 ]] || fail "process $1 ($(process_name "$1")) exited $status after SIGTERM"
}

#!/usr/bin/env bash
# The Compose cluster (deploy/compose/compose.yaml) for real, with podman-compose
# and the images scripts/image.sh builds (localhost/tern:dev and, with
# --prometheus, localhost/tern-prometheus:dev):
#   1. ternd, two agents (one CPU slot each) and Prometheus come up; from the
#      host, build/cli/ternctl reaches ternd through the published port and
#      sees both agents, each advertising its container name;
#   2. a 2-rank job runs with one rank on each agent container (both agents'
#      slots in use at once), so the rendezvous and Gloo cross the containers'
#      network addresses; it succeeds, and its artifact is fetched (SHA-256
#      checked by ternctl) and inspected;
#   3. Prometheus, queried through its HTTP API, reports all three targets up;
#   4. an agent container is killed (SIGKILL to its PID 1, from the host) while
#      a second 2-rank job trains:
#      the container's restart policy brings the agent back, the job restarts
#      from its newest committed checkpoint and succeeds.
# Everything the test creates (containers, their network, volumes) is removed
# at the end, also when it fails, and so are podman's traces outside its
# storage once no container runs (tern_podman_host_cleanup).
# Skips (77) without podman/podman-compose or the images, unless
# TERN_REQUIRE_CONTAINER_TESTS=1 (CI: .ci/run), which turns a skip into a failure.
# usage: compose_e2e.sh BUILD_DIR
set -euo pipefail
build="$(cd "${1:?usage: compose_e2e.sh BUILD_DIR}" && pwd)"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
compose_file="$root/deploy/compose/compose.yaml"

skip() {
  if [[ "${TERN_REQUIRE_CONTAINER_TESTS:-0}" == 1 ]]; then
    echo "FAIL (TERN_REQUIRE_CONTAINER_TESTS=1): $*"; exit 1
  fi
  echo "SKIP: $*"; exit 77
}
fail() { echo "FAIL: $*"; exit 1; }

command -v podman >/dev/null || skip "no podman on PATH (scripts/image.sh installs it)"
command -v podman-compose >/dev/null || skip "no podman-compose on PATH (scripts/image.sh installs it)"
command -v curl >/dev/null || skip "no curl on PATH"
command -v jq >/dev/null || skip "no jq on PATH"
[[ $(id -u) -eq 0 ]] || skip "podman's private root (scripts/podman-env.sh) needs root"
[[ -x "$build/cli/ternctl" ]] || fail "$build/cli/ternctl is not built"
source "$root/scripts/podman-env.sh"
# podman runs its helpers (netavark, which runs iptables and ip6tables;
# conmon; runc) from the system's PATH: give it that PATH, not the test's
# (scripts/test.sh restricts the test's to scripts/tools.list's programs).
podman_path="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
podman() { PATH="$podman_path" command podman "$@"; }
export TERN_IMAGE="${TERN_IMAGE:-localhost/tern:dev}"
export TERN_PROMETHEUS_IMAGE="${TERN_PROMETHEUS_IMAGE:-localhost/tern-prometheus:dev}"
podman image exists "$TERN_IMAGE" || skip "no image $TERN_IMAGE (scripts/image.sh builds it)"
podman image exists "$TERN_PROMETHEUS_IMAGE" ||
  skip "no image $TERN_PROMETHEUS_IMAGE (scripts/image.sh --prometheus builds it)"

free_port() {  # a free TCP port on the host, below the ephemeral range
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
PY
}
export TERN_PORT TERN_PROMETHEUS_PORT
TERN_PORT=$(free_port)
TERN_PROMETHEUS_PORT=$(free_port)
project="terne2e$$"
work="$(mktemp -d "${TMPDIR:-/tmp}/tern-compose-e2e.XXXXXX")"
compose() { PATH="$podman_path" podman-compose --no-ansi -p "$project" -f "$compose_file" "$@"; }
container() { echo "${project}_$1_1"; }  # podman-compose 1.0's container names

cleanup() {
  local rc=$?
  if [[ $rc -ne 0 && $rc -ne 77 ]]; then
    for service in ternd agent-1 agent-2 prometheus; do
      echo "--- last log lines of $service"
      podman logs --tail 25 "$(container "$service")" 2>&1 || true
    done
  fi
  compose down -v -t 5 >"$work/down.log" 2>&1 || cat "$work/down.log"
  # Whatever podman-compose left behind (it keys everything by the project).
  local leftover
  leftover=$(podman ps -aq --filter "label=io.podman.compose.project=$project")
  [[ -n "$leftover" ]] && { podman rm -f $leftover >/dev/null 2>&1 || true; }
  leftover=$(podman volume ls -q --filter "label=io.podman.compose.project=$project")
  [[ -n "$leftover" ]] && { podman volume rm -f $leftover >/dev/null 2>&1 || true; }
  podman network rm -f "${project}_default" >/dev/null 2>&1 || true
  podman pod rm -f "pod_$project" >/dev/null 2>&1 || true
  tern_podman_host_cleanup
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

start=$(date +%s)
compose up -d >"$work/up.log" 2>&1 || { cat "$work/up.log"; fail "podman-compose up failed"; }
ternctl=("$build/cli/ternctl" --server "127.0.0.1:$TERN_PORT" --owner e2e)

# 1. Both agents registered, each advertising its container name.
for i in $(seq 1 600); do
  if "${ternctl[@]}" agents --json >"$work/agents.json" 2>/dev/null &&
     jq -e '[.agents[] | select(.state == "AGENT_STATE_READY")] | length == 2' "$work/agents.json" >/dev/null; then
    break
  fi
  [[ $i -eq 600 ]] && fail "two ready agents did not appear within 60 s: $(cat "$work/agents.json" 2>/dev/null)"
  sleep 0.1
done
jq -e '[.agents[] | "\(.agent_id)@\(.host)"] == ["agent-1@agent-1", "agent-2@agent-2"]' "$work/agents.json" \
  >/dev/null || fail "unexpected agents: $(cat "$work/agents.json")"
echo "ternd on 127.0.0.1:$TERN_PORT with agents agent-1 and agent-2 after $(( $(date +%s) - start )) s"

# 2. A 2-rank job: one rank on each agent container.
cat >"$work/small.yaml" <<'YAML'
name: compose-small
model: {arch: resnet20, width_multiplier: 0.25}
dataset: {kind: idx, path: /usr/share/datasets/fashion-mnist, max_train_examples: 512, max_eval_examples: 64}
quantization: {method: hla}
optimization: {epochs: 1, batch_size: 16}
events: {progress_every_steps: 4}
resources: {ranks: 2, device_kind: cpu}
YAML
job_start=$(date +%s)
small=$("${ternctl[@]}" submit "$work/small.yaml")
both_busy=false
for i in $(seq 1 1800); do
  "${ternctl[@]}" get "$small" --json >"$work/small.json"
  state=$(jq -r .state "$work/small.json")
  if ! $both_busy && "${ternctl[@]}" agents --json >"$work/agents.json" &&
     jq -e '[.agents[] | .slots[0].used] == [1, 1]' "$work/agents.json" >/dev/null; then
    both_busy=true
  fi
  case "$state" in JOB_STATE_SUCCEEDED|JOB_STATE_FAILED|JOB_STATE_CANCELLED) break ;; esac
  [[ $i -eq 1800 ]] && fail "job $small did not end within 180 s: $(cat "$work/small.json")"
  sleep 0.1
done
[[ "$state" == JOB_STATE_SUCCEEDED ]] || {
  "${ternctl[@]}" logs "$small" >"$work/small-logs.txt" 2>&1 || true
  tail -30 "$work/small-logs.txt"
  fail "job $small ended $state: $(cat "$work/small.json")"
}
$both_busy || fail "job $small never held a slot on both agents at once"
"${ternctl[@]}" logs "$small" --json >"$work/small-events.jsonl"
jq -se '[.[] | select(.attempt_started)] | .[0].attempt_started.process_group == "gloo"' \
  "$work/small-events.jsonl" >/dev/null || fail "job $small did not run on a Gloo process group"
"${ternctl[@]}" fetch "$small" -o "$work/small.tern" >/dev/null || fail "fetch of job $small failed"
[[ "$(head -c 4 "$work/small.tern")" == TERN ]] || fail "the fetched file is not a .tern artifact"
"${ternctl[@]}" --json inspect "$work/small.tern" >"$work/inspect.json" || fail "ternctl inspect failed"
jq -e '.metadata.method == "hla" and .ternary_weights > 0 and .architecture.arch == "resnet20"' \
  "$work/inspect.json" >/dev/null || fail "unexpected artifact: $(head -c 600 "$work/inspect.json")"
echo "job $small SUCCEEDED in $(( $(date +%s) - job_start )) s with one rank on each agent container" \
  "(Gloo across containers); artifact fetched ($(stat -c %s "$work/small.tern") bytes, top-1" \
  "$(jq .result.ternary_top1 "$work/small.json"))"

# 3. Prometheus: all three targets up.
prometheus="http://127.0.0.1:$TERN_PROMETHEUS_PORT"
for i in $(seq 1 600); do
  if curl -fsS "$prometheus/api/v1/targets?state=active" -o "$work/targets.json" 2>/dev/null &&
     jq -e '[.data.activeTargets[] | select(.health == "up")] | length == 3' "$work/targets.json" >/dev/null; then
    break
  fi
  [[ $i -eq 600 ]] && fail "Prometheus targets not all up within 60 s: $(jq -c '[.data.activeTargets[]? |
    {job: .labels.job, instance: .labels.instance, health, lastError}]' "$work/targets.json" 2>/dev/null)"
  sleep 0.1
done
curl -fsS "$prometheus/api/v1/query" --data-urlencode 'query=sum by (job) (up)' -o "$work/up.json"
jq -e '[.data.result[] | {(.metric.job): .value[1]}] | add == {"ternd": "1", "tern-agent": "2"}' \
  "$work/up.json" >/dev/null || fail "unexpected up: $(cat "$work/up.json")"
echo "Prometheus: ternd:9464, agent-1:9465 and agent-2:9465 up"

# 4. An agent container killed while a job trains: restarted by its restart
# policy, and the job resumes from its checkpoint and succeeds.
sed -e 's/name: compose-small/name: compose-kill/' -e 's/max_train_examples: 512/max_train_examples: 1024/' \
  -e 's/epochs: 1,/epochs: 2,/' "$work/small.yaml" >"$work/kill.yaml"
cat >>"$work/kill.yaml" <<'YAML'
checkpoint: {every_steps: 8}
max_restarts: 3
YAML
job_start=$(date +%s)
job=$("${ternctl[@]}" submit "$work/kill.yaml")
for i in $(seq 1 1800); do
  "${ternctl[@]}" logs "$job" --json >"$work/events.jsonl" 2>/dev/null || true
  jq -se '[.[] | select(.checkpoint_committed)] | length > 0' "$work/events.jsonl" >/dev/null 2>&1 && break
  [[ $i -eq 1800 ]] && fail "job $job committed no checkpoint within 180 s"
  sleep 0.1
done
# SIGKILL to the container's PID 1 (tini) from the host, as when it crashes
# or is OOM-killed: the container exits 137 and its restart policy applies
# (podman kill would count as a stop by the user, which
# restart: unless-stopped respects).
killed=$(container agent-2)
kill -KILL "$(podman inspect --format '{{.State.Pid}}' "$killed")"
echo "killed $killed (SIGKILL to its PID 1) while job $job trained"
for i in $(seq 1 1800); do
  "${ternctl[@]}" get "$job" --json >"$work/job.json"
  state=$(jq -r .state "$work/job.json")
  case "$state" in JOB_STATE_SUCCEEDED|JOB_STATE_FAILED|JOB_STATE_CANCELLED) break ;; esac
  [[ $i -eq 1800 ]] && fail "job $job did not end within 180 s of the kill: $(cat "$work/job.json")"
  sleep 0.1
done
[[ "$state" == JOB_STATE_SUCCEEDED ]] || fail "job $job ended $state: $(cat "$work/job.json")"
[[ "$(podman inspect --format '{{.RestartCount}}' "$killed")" -ge 1 ]] ||
  fail "$killed was not restarted by its restart policy"
"${ternctl[@]}" logs "$job" --json >"$work/events.jsonl"
resumed=$(jq -s '[.[] | select(.attempt > 1 and .attempt_started)] | .[0].attempt_started.resumed_from_step // -1' \
  "$work/events.jsonl")
jq -e '(.restarts // 0) >= 1' "$work/job.json" >/dev/null || fail "job $job shows no restart: $(cat "$work/job.json")"
[[ "$resumed" -gt 0 ]] || fail "job $job's next attempt did not resume from a checkpoint (step $resumed)"
"${ternctl[@]}" fetch "$job" -o "$work/kill.tern" >/dev/null || fail "fetch of job $job failed"
echo "job $job SUCCEEDED in $(( $(date +%s) - job_start )) s after $(jq '.restarts // 0' "$work/job.json")" \
  "restart(s), resumed from step $resumed; $killed restarted by podman"
echo "PASS ($(( $(date +%s) - start )) s)"

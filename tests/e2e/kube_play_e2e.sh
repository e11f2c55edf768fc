#!/usr/bin/env bash
# The Kubernetes cpu overlay (deploy/k8s/overlays/cpu) run for real with
# `podman kube play` and the image scripts/image.sh builds (localhost/tern:dev):
#   1. the overlay renders (kubectl kustomize) and is adapted to what podman
#      4.3 plays, for its limitations only (tests/e2e/kube_play_podman.py says
#      what and why: no Services, NetworkPolicies or budgets, no status.podIP,
#      no $(VAR) expansion in arguments, ports and probes dropped); ternd and
#      the agent Deployment's two replicas run as pods, with the overlay's
#      volumes, ConfigMap, security contexts (uid 10001, read-only root
#      filesystem, no capabilities, RuntimeDefault seccomp) and sysctls;
#   2. from the host (outside the pods), build/cli/ternctl reaches ternd at its
#      pod's address, sees both agents ready, and submits a 2-rank job;
#   3. while it trains, an agent pod running one of its ranks is deleted as
#      Kubernetes deletes a pod (SIGTERM to tini, the grace period, then the
#      pod removed): the agent drains (exit 0), its trainers checkpoint, the
#      job is requeued without using a restart (RANK_PREEMPTED) and resumes on
#      the other agent from the drain's checkpoint, and succeeds; its artifact
#      is fetched.
# Pods, volumes and the network are removed at the end, also on failure.
# Skips (77) without podman, kubectl, PyYAML or the image, unless
# TERN_REQUIRE_CONTAINER_TESTS=1 (.ci/run), which turns a skip into a failure.
# usage: kube_play_e2e.sh BUILD_DIR
set -euo pipefail
build="$(cd "${1:?usage: kube_play_e2e.sh BUILD_DIR}" && pwd)"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

skip() {
  if [[ "${TERN_REQUIRE_CONTAINER_TESTS:-0}" == 1 ]]; then
    echo "FAIL (TERN_REQUIRE_CONTAINER_TESTS=1): $*"; exit 1
  fi
  echo "SKIP: $*"; exit 77
}
fail() { echo "FAIL: $*"; exit 1; }

command -v podman >/dev/null || skip "no podman on PATH (scripts/image.sh installs it)"
command -v kubectl >/dev/null || skip "no kubectl on PATH (it renders the overlay)"
command -v jq >/dev/null || skip "no jq on PATH"
python3 -c 'import yaml' 2>/dev/null || skip "python3 has no yaml module (Debian: python3-yaml)"
[[ $(id -u) -eq 0 ]] || skip "podman's private root (scripts/podman-env.sh) needs root"
[[ -d "$root/deploy/k8s/overlays/cpu" ]] || skip "no deploy/k8s/overlays/cpu"
[[ -x "$build/cli/ternctl" ]] || fail "$build/cli/ternctl is not built"
source "$root/scripts/podman-env.sh"
# podman's helpers (netavark, iptables, conmon, runc) need the system's PATH,
# not the test's (scripts/test.sh restricts it to scripts/tools.list).
podman_path="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
podman() { PATH="$podman_path" command podman "$@"; }
image=localhost/tern:dev
podman image exists "$image" || skip "no image $image (scripts/image.sh builds it)"

prefix="kp$$-"
network="${prefix}net"
work="$(mktemp -d "${TMPDIR:-/tmp}/tern-kube-play-e2e.XXXXXX")"
played="$work/played.yaml"
cleanup() {
  local rc=$? volumes
  if [[ $rc -ne 0 && $rc -ne 77 ]]; then
    for c in $(podman ps -a --format '{{.Names}}' | grep "^$prefix" || true); do
      echo "--- last log lines of $c"; podman logs --tail 25 "$c" 2>&1 || true
    done
  fi
  [[ -f "$played" ]] && { podman kube down "$played" >/dev/null 2>&1 || true; }
  for pod in $(podman pod ps --format '{{.Name}}' | grep "^$prefix" || true); do
    podman pod rm -f "$pod" >/dev/null 2>&1 || true
  done
  volumes=$(podman volume ls -q | grep "^$prefix" || true)
  [[ -n "$volumes" ]] && { podman volume rm -f $volumes >/dev/null 2>&1 || true; }
  podman network rm -f "$network" >/dev/null 2>&1 || true
  tern_podman_host_cleanup
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

start=$(date +%s)
# 1. Render and play.
kubectl kustomize "$root/deploy/k8s/overlays/cpu" >"$work/rendered.yaml"
[[ "$(grep -c '^kind: Deployment' "$work/rendered.yaml")" -eq 2 ]] ||
  fail "expected the overlay to render 2 Deployments (ternd, tern-agent)"
python3 "$here/kube_play_podman.py" "$prefix" "$work/rendered.yaml" "$played" >"$work/changes.txt"
sed 's/^/  adapted: /' "$work/changes.txt"
# Pods resolve each other by name on a network of their own.
podman network create "$network" >/dev/null
podman kube play --network "$network" "$played" >"$work/play.log" 2>&1 ||
  { cat "$work/play.log"; fail "podman kube play failed"; }
ternd_pod="${prefix}ternd-pod-0"
address=$(podman inspect "$ternd_pod-ternd" --format "{{(index .NetworkSettings.Networks \"$network\").IPAddress}}")
[[ -n "$address" ]] || fail "no address for $ternd_pod"
security=$(podman inspect "$ternd_pod-ternd" --format '{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}')
[[ "$security" == "10001:10001 true" || "$security" == "10001 true" ]] ||
  fail "ternd's pod does not run as uid 10001 with a read-only root filesystem ($security)"
ternctl=("$build/cli/ternctl" --server "$address:7070" --owner e2e)

# 2. From the host: both agents ready, a 2-rank job.
for i in $(seq 1 900); do
  if "${ternctl[@]}" agents --json >"$work/agents.json" 2>/dev/null &&
     jq -e '[.agents[]? | select(.state == "AGENT_STATE_READY")] | length == 2' "$work/agents.json" >/dev/null; then
    break
  fi
  [[ $i -eq 900 ]] && fail "two ready agents did not appear within 90 s: $(cat "$work/agents.json" 2>/dev/null)"
  sleep 0.1
done
jq -e --arg p "${prefix}tern-agent-" '[.agents[] | (.agent_id | startswith($p)) and .host == .agent_id
       and .slots[0].total == 2] | all' "$work/agents.json" >/dev/null ||
  fail "unexpected agents: $(cat "$work/agents.json")"
echo "ternd at $address:7070 (pod $ternd_pod) with two agent pods, after $(( $(date +%s) - start )) s"

cat >"$work/job.yaml" <<'YAML'
name: kube-play
model: {arch: resnet20, width_multiplier: 0.25}
dataset: {kind: idx, path: /usr/share/datasets/fashion-mnist, max_train_examples: 1024, max_eval_examples: 64}
quantization: {method: hla}
optimization: {epochs: 2, batch_size: 16}
checkpoint: {every_steps: 8}
events: {progress_every_steps: 2}
resources: {ranks: 2, device_kind: cpu}
max_restarts: 2
YAML
job=$("${ternctl[@]}" submit "$work/job.yaml")
events() { "${ternctl[@]}" logs "$job" --json >"$work/events.jsonl" 2>/dev/null || true; }
for i in $(seq 1 1800); do
  events
  jq -se '[.[] | select(.checkpoint_committed)] | length > 0' "$work/events.jsonl" >/dev/null 2>&1 && break
  [[ $i -eq 1800 ]] && fail "job $job committed no checkpoint within 180 s"
  sleep 0.1
done

# 3. Delete the pod of an agent that runs a rank of the job, as Kubernetes does.
"${ternctl[@]}" agents --json >"$work/agents.json"
victim=$(jq -r '[.agents[] | select((.slots[0].used // 0) > 0)] | .[0].agent_id' "$work/agents.json")
[[ "$victim" == "${prefix}tern-agent-"* ]] || fail "no agent runs job $job: $(cat "$work/agents.json")"
stop_start=$(date +%s)
# As the kubelet deletes a pod: SIGTERM to the containers, which get the
# grace period, while the pod's network stays up; then the pod goes. (podman
# pod stop would stop the pod's infra container, and with it the network, at
# the same time.)
podman stop --time 60 "$victim-tern-agent" >/dev/null
status=$(podman inspect "$victim-tern-agent" --format '{{.State.ExitCode}}')
podman logs "$victim-tern-agent" >"$work/victim.log" 2>&1 || true
[[ "$status" -eq 0 ]] || fail "agent $victim exited $status after SIGTERM (not a clean drain)"
podman pod rm "$victim" >/dev/null
echo "deleted pod $victim (SIGTERM, agent drained and exited 0 after $(( $(date +%s) - stop_start )) s)"
for i in $(seq 1 2400); do
  "${ternctl[@]}" get "$job" --json >"$work/job.json"
  state=$(jq -r .state "$work/job.json")
  case "$state" in JOB_STATE_SUCCEEDED|JOB_STATE_FAILED|JOB_STATE_CANCELLED) break ;; esac
  [[ $i -eq 2400 ]] && fail "job $job did not end within 240 s of the drain: $(cat "$work/job.json")"
  sleep 0.1
done
[[ "$state" == JOB_STATE_SUCCEEDED ]] || fail "job $job ended $state: $(cat "$work/job.json")"
events
reason=$(jq -r -s '[.[] | select(.attempt == 1 and .state_change.to_state == "JOB_STATE_RESTARTING")
                   | .state_change.reason.code] | first // "none"' "$work/events.jsonl")
[[ "$reason" == RANK_PREEMPTED ]] ||
  fail "attempt 1 ended with $reason, not RANK_PREEMPTED (a drain); the drained agent's log: $(tail -20 "$work/victim.log")"
resumed=$(jq -s '[.[] | select(.attempt == 2 and .attempt_started) | .attempt_started.resumed_from_step // 0]
                 | first // -1' "$work/events.jsonl")
[[ "$resumed" -gt 0 ]] || fail "attempt 2 did not resume from a checkpoint (step $resumed)"
[[ "$(jq -r '.restarts // 0' "$work/job.json")" -eq 0 ]] || fail "the drain used a restart: $(cat "$work/job.json")"
"${ternctl[@]}" fetch "$job" -o "$work/model.tern" >/dev/null || fail "fetch of job $job failed"
[[ "$(head -c 4 "$work/model.tern")" == TERN ]] || fail "the fetched file is not a .tern artifact"
echo "job $job SUCCEEDED: attempt 1 preempted by the drain, attempt 2 resumed from step $resumed on the" \
  "other agent pod, no restart used; artifact fetched ($(stat -c %s "$work/model.tern") bytes)"
echo "PASS ($(( $(date +%s) - start )) s)"

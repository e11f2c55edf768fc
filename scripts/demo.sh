#!/usr/bin/env bash
# The service demo (called by scripts/run.sh): starts ternd and one tern-agent
# with 2 CPU slots on loopback, submits two 2-rank ResNet-20 jobs on
# Fashion-MNIST (full precision and HLA ternary; gang admission runs them one
# after the other), shows ternctl's progress, fetches both artifacts, prints
# FP vs ternary accuracy, and shuts everything down.
# Environment: TERN_BUILD_DIR (default build), TERN_DEMO_DIR (default
# build/demo-service), TERN_DEMO_METHODS (default "fp hla").
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${TERN_BUILD_DIR:-$root/build}"
work="${TERN_DEMO_DIR:-$build/demo-service}"
methods="${TERN_DEMO_METHODS:-fp hla}"
rm -rf "$work"
mkdir -p "$work"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# The first line a daemon prints names its address; wait for it.
wait_for_line() {  # file pattern
  for _ in $(seq 1 300); do
    if grep -q "$2" "$1" 2>/dev/null; then grep -m1 "$2" "$1"; return 0; fi
    sleep 0.1
  done
  echo "demo: timed out waiting for '$2' in $1" >&2
  return 1
}

"$build/server/ternd" --listen 127.0.0.1:0 --db "$work/ternd.db" --metrics-listen 127.0.0.1:0 \
  --artifact-root "$work/artifacts" --checkpoint-root "$work/checkpoints" \
  >"$work/ternd.out" 2>"$work/ternd.log" &
pids+=($!)
server=$(wait_for_line "$work/ternd.out" "listening on" | grep -oE '127\.0\.0\.1:[0-9]+' | head -1)
echo "ternd listening on $server (log: $work/ternd.log)"

"$build/worker/agent/tern-agent" --server "$server" --cpu-slots 2 \
  --trainer "$build/worker/trainer/tern-trainer" --workdir "$work/agent" \
  --metrics-listen 127.0.0.1:0 >"$work/agent.out" 2>"$work/agent.log" &
pids=("$!" "${pids[@]}")  # the agent stops first
echo "tern-agent with 2 CPU slots (log: $work/agent.log)"

ternctl=("$build/cli/ternctl" --server "$server" --owner demo)
cat >"$work/job.yaml" <<'YAML'
model: {arch: resnet20, width_multiplier: 0.5}
dataset: {kind: idx, path: /usr/share/datasets/fashion-mnist, max_train_examples: 15000, max_eval_examples: 5000}
optimization: {epochs: 3, batch_size: 64, lr: 0.05, seed: 0}
resources: {ranks: 2, device_kind: cpu}
events: {progress_every_steps: 10}
YAML

declare -A ids
for method in $methods; do
  ids[$method]=$("${ternctl[@]}" submit "$work/job.yaml" --method "$method" --name "demo-$method")
  echo "submitted $method as job ${ids[$method]}"
done
for method in $methods; do
  echo "== job ${ids[$method]} ($method)"
  "${ternctl[@]}" watch "${ids[$method]}"
  "${ternctl[@]}" fetch "${ids[$method]}" -o "$work/$method.tern" >/dev/null
  "${ternctl[@]}" get "${ids[$method]}" --json >"$work/$method.json"
done

echo
echo "Fashion-MNIST test top-1 (5000 test images) of each job's .tern artifact, re-loaded and evaluated"
echo "ResNet-20 x0.5, 2 ranks (Gloo), 3 epochs on 15000 training images, seed 0"
printf '%-6s %-8s %10s %12s  %s\n' job method top-1 bits/weight artifact
for method in $methods; do
  jq -r --arg m "$method" --arg p "$work/$method.tern" \
    '[.id, $m, ((.result.ternary_top1 // .result.fp_top1 // 0) * 10000 | round / 100 | tostring) + "%",
      (if $m == "fp" then "32 (FP)" else (.result.bits_per_weight // 0 | tostring) end), $p] | @tsv' \
    "$work/$method.json" | awk -F'\t' '{printf "%-6s %-8s %10s %12s  %s\n", $1, $2, $3, $4, $5}'
done

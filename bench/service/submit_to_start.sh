#!/usr/bin/env bash
# Submit-to-RUNNING latency of a tiny 2-rank CPU job: starts ternd (temp db,
# --listen 127.0.0.1:0) and one tern-agent with 2 CPU slots, then REPS times
# submits the job with ternctl and polls `ternctl get ID --json` every 50 ms
# until .state is JOB_STATE_RUNNING (every rank reported started). Each job is
# cancelled once measured, so the next one gets both slots. Prints each time and
# the median/max. Everything it started is stopped on exit.
#
#   bench/service/submit_to_start.sh [--build DIR] [--reps N]
set -euo pipefail

BUILD=build
REPS=5
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) BUILD="$2"; shift 2 ;;
    --reps) REPS="$2"; shift 2 ;;
    *) echo "usage: $0 [--build DIR] [--reps N]" >&2; exit 2 ;;
  esac
done

TERND="$BUILD/server/ternd"
AGENT="$BUILD/worker/agent/tern-agent"
TRAINER="$BUILD/worker/trainer/tern-trainer"
TERNCTL="$BUILD/cli/ternctl"
for b in "$TERND" "$AGENT" "$TRAINER" "$TERNCTL"; do
  [[ -x "$b" ]] || { echo "missing $b" >&2; exit 1; }
done

TMP=$(mktemp -d)
TERND_PID=""
AGENT_PID=""
cleanup() {
  [[ -n "$AGENT_PID" ]] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null || true
  [[ -n "$TERND_PID" ]] && kill "$TERND_PID" 2>/dev/null && wait "$TERND_PID" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

"$TERND" --listen 127.0.0.1:0 --db "$TMP/ternd.db" --artifact-root "$TMP/artifacts" \
  --checkpoint-root "$TMP/checkpoints" --metrics-listen 127.0.0.1:0 >"$TMP/ternd.out" 2>"$TMP/ternd.err" &
TERND_PID=$!
for _ in $(seq 100); do
  grep -q '^ternd listening on ' "$TMP/ternd.out" 2>/dev/null && break
  sleep 0.05
done
SERVER=$(sed -n 's/^ternd listening on //p' "$TMP/ternd.out" | head -1)
[[ -n "$SERVER" ]] || { echo "ternd did not start:" >&2; cat "$TMP/ternd.err" >&2; exit 1; }

mkdir -p "$TMP/work"
"$AGENT" --server "$SERVER" --cpu-slots 2 --trainer "$TRAINER" --workdir "$TMP/work" \
  --metrics-listen 127.0.0.1:0 >"$TMP/agent.out" 2>"$TMP/agent.err" &
AGENT_PID=$!

cat >"$TMP/job.yaml" <<'YAML'
model: {arch: resnet20, width_multiplier: 0.25}
dataset: {kind: idx, path: /usr/share/datasets/fashion-mnist, max_train_examples: 256, max_eval_examples: 64}
optimization: {epochs: 1, batch_size: 32}
resources: {ranks: 2, device_kind: cpu}
YAML

ctl() { "$TERNCTL" --server "$SERVER" "$@"; }
now_ms() { date +%s%3N; }

sleep 1  # let the agent register
times=()
for rep in $(seq "$REPS"); do
  t0=$(now_ms)
  id=$(ctl submit "$TMP/job.yaml")
  state=""
  while :; do
    state=$(ctl get "$id" --json | jq -r '.state')
    case "$state" in
      JOB_STATE_RUNNING) break ;;
      JOB_STATE_SUCCEEDED|JOB_STATE_FAILED|JOB_STATE_CANCELLED)
        echo "job $id ended in $state before RUNNING was observed" >&2; exit 1 ;;
    esac
    (( $(now_ms) - t0 > 120000 )) && { echo "job $id not RUNNING after 120 s ($state)" >&2; exit 1; }
    sleep 0.05
  done
  dt=$(( $(now_ms) - t0 ))
  times+=("$dt")
  echo "rep $rep: job $id RUNNING after $dt ms"
  ctl cancel "$id" >/dev/null
  # wait until the ranks are gone (CANCELLED) so the next job gets both slots
  for _ in $(seq 600); do
    [[ $(ctl get "$id" --json | jq -r '.state') == JOB_STATE_CANCELLED ]] && break
    sleep 0.1
  done
done

sorted=($(printf '%s\n' "${times[@]}" | sort -n))
n=${#sorted[@]}
if (( n % 2 )); then median=${sorted[$((n / 2))]}
else median=$(( (sorted[n / 2 - 1] + sorted[n / 2]) / 2 )); fi
echo
echo "| reps | median ms | max ms | min ms |"
echo "|---:|---:|---:|---:|"
echo "| $n | $median | ${sorted[$((n - 1))]} | ${sorted[0]} |"

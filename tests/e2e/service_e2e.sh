#!/usr/bin/env bash
# End to end through the real service: ternd + one tern-agent (2 CPU slots) +
# tern-trainer ranks on loopback. A tiny 2-rank job runs to SUCCEEDED and its
# artifact is fetched (SHA-256 verified by ternctl) and checked; a 2-rank
# detection job on a synthetic COCO set succeeds with COCO AP in its result;
# a long job is cancelled while running and its trainers must be gone within
# seconds; paths outside the owner's roots (ternd --read-roots) are refused.
# The trainers run with their writes and (tern-agent --confine-reads on)
# reads confined by Landlock where the kernel offers it.
# usage: service_e2e.sh BUILD_DIR
set -euo pipefail
build="$(cd "${1:?usage: service_e2e.sh BUILD_DIR}" && pwd)"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Every job below runs under path roots (the owner is "e2e").
ternd_flags=(--read-roots "/usr/share/datasets,$work/data/{owner}" --write-roots "$work/scratch/{owner}")
# Where the kernel offers Landlock, the trainers' reads are confined too.
landlock_abi=$(python3 -c 'import ctypes; print(ctypes.CDLL(None).syscall(444, None, 0, 1))' \
  2>/dev/null || echo 0)
(( landlock_abi > 0 )) && agent_flags=(--confine-reads on)
start_service
[[ $("${ternctl[@]}" whoami) == "e2e (x-tern-owner claim, not authenticated; sees every owner's jobs)
quota: none; cpu 0 slots, cuda 0 slots, 0 unfinished jobs
server: ternd "[0-9]* ]] ||
  fail "whoami without TLS: $("${ternctl[@]}" whoami)"
"${ternctl[@]}" agents --json >"$work/agents.json"
jq -e '.agents | length == 1 and .[0].state == "AGENT_STATE_READY"
       and .[0].slots[0].total == 2' "$work/agents.json" >/dev/null ||
  fail "ternctl agents: $(cat "$work/agents.json")"

# 1. A tiny 2-rank HLA job to SUCCEEDED; fetch and check its artifact.
cat >"$work/small.yaml" <<'YAML'
model: {arch: resnet20, width_multiplier: 0.25}
dataset: {kind: idx, path: /usr/share/datasets/fashion-mnist, max_train_examples: 512, max_eval_examples: 64}
quantization: {method: hla, packing: base3}
optimization: {epochs: 1, batch_size: 32}
resources: {ranks: 2, device_kind: cpu}
YAML
small=$("${ternctl[@]}" submit "$work/small.yaml")
"${ternctl[@]}" watch "$small" >"$work/watch.log" 2>&1 || fail "job $small did not succeed"
"${ternctl[@]}" fetch "$small" -o "$work/small.tern" >/dev/null || fail "fetch failed"
[[ "$(head -c 4 "$work/small.tern")" == "TERN" ]] || fail "fetched file is not a .tern artifact"
"${ternctl[@]}" get "$small" --json >"$work/small.json"
jq -e '.state == "JOB_STATE_SUCCEEDED" and .result.ternary_top1 > 0 and .result.bits_per_weight < 1.7' \
  "$work/small.json" >/dev/null || fail "unexpected result: $(cat "$work/small.json")"
# `ternctl inspect` reads it here: the method, the packing, its code bits (the
# result's bits per weight also count the scales and the header).
"${ternctl[@]}" --json inspect "$work/small.tern" >"$work/inspect.json" || fail "inspect failed"
jq -e --argjson bits "$(jq .result.bits_per_weight "$work/small.json")" \
  '.metadata.method == "hla" and .packing == "base3" and .ternary_weights > 0
   and .bits_per_ternary_weight < 1.62 and .bits_per_ternary_weight <= $bits
   and .architecture.arch == "resnet20"' \
  "$work/inspect.json" >/dev/null || fail "unexpected inspect output: $(head -c 600 "$work/inspect.json")"
echo "job $small SUCCEEDED, artifact fetched ($(stat -c %s "$work/small.tern") bytes, base-3 packing, $(jq .bits_per_ternary_weight "$work/inspect.json") bits per ternary weight)"

# 2. A tiny 2-rank detection job (CenterNet, synthetic COCO shapes) to
# SUCCEEDED with COCO AP in its result and its detections file written.
"$build/worker/detection/tern-synth-coco" --output "$work/data/e2e/shapes" --image-size 64 \
  --train-images 32 --val-images 16 --max-objects 3 --seed 2 >/dev/null
cat >"$work/det.yaml" <<YAML
task: detection
model: {arch: resnet20, width_multiplier: 0.25}
dataset: {kind: coco, path: $work/data/e2e/shapes, input_size: 64}
quantization: {method: hla}
optimization: {epochs: 1, batch_size: 8, lr: 0.02}
resources: {ranks: 2, device_kind: cpu}
YAML
det=$("${ternctl[@]}" submit "$work/det.yaml")
"${ternctl[@]}" watch "$det" >"$work/det-watch.log" 2>&1 || fail "detection job $det did not succeed"
"${ternctl[@]}" get "$det" --json >"$work/det.json"
jq -e '.state == "JOB_STATE_SUCCEEDED" and (.result.ternary_detection.ap50 >= 0)
       and (.result.detections_path | endswith(".detections.json"))' \
  "$work/det.json" >/dev/null || fail "unexpected detection result: $(cat "$work/det.json")"
echo "detection job $det SUCCEEDED (AP50 $(jq .result.ternary_detection.ap50 "$work/det.json"))"

# 3. A long job, cancelled while its ranks train.
sed -e 's/max_train_examples: 512/max_train_examples: 60000/' -e 's/epochs: 1/epochs: 20/' \
  "$work/small.yaml" >"$work/long.yaml"
long=$("${ternctl[@]}" submit "$work/long.yaml")
for i in $(seq 1 600); do
  step=$("${ternctl[@]}" get "$long" --json | jq -r '.progress.step // 0')
  [[ "$step" -gt 0 ]] && break
  [[ $i -eq 600 ]] && fail "job $long never made progress"
  sleep 0.1
done
[[ $(pgrep -c -P "$agent" -f tern-trainer || true) -eq 2 ]] || fail "expected 2 running trainers"
start=$(date +%s)
"${ternctl[@]}" cancel "$long" >"$work/cancel.out"
grep -q "cancelling (CANCELLING)" "$work/cancel.out" ||
  fail "a job with running ranks was not CANCELLING: $(cat "$work/cancel.out")"
for i in $(seq 1 150); do
  state=$("${ternctl[@]}" get "$long" --json | jq -r .state)
  running=$(pgrep -c -P "$agent" -f tern-trainer || true)
  # CANCELLED follows the trainers' exits: never while one still runs.
  [[ "$state" == "JOB_STATE_CANCELLED" && "$running" -ne 0 ]] &&
    fail "job $long CANCELLED while $running trainers still run"
  [[ "$state" == "JOB_STATE_CANCELLED" && "$running" -eq 0 ]] && break
  [[ $i -eq 150 ]] && fail "after 15 s: state $state, $running trainers still running"
  sleep 0.1
done
echo "job $long CANCELLED and its trainers gone after $(( $(date +%s) - start )) s"

# 4. Paths outside the owner's roots: refused by ternd at submission, and, when
# a symbolic link inside a root leads outside, by the agent before a trainer runs.
sed -e "s|path: $work/data/e2e/shapes|path: $work/shapes-outside|" "$work/det.yaml" >"$work/outside.yaml"
if "${ternctl[@]}" submit "$work/outside.yaml" >"$work/outside.out" 2>&1; then
  fail "a data set outside the read roots was accepted"
fi
grep -q "PERMISSION_DENIED.*dataset.path: $work/shapes-outside is outside" "$work/outside.out" ||
  fail "unexpected refusal: $(cat "$work/outside.out")"
# A COCO file_name that leads out of its image directory: the trainer refuses
# it (under path roots), and the job fails at once.
cp -r "$work/data/e2e/shapes" "$work/data/e2e/escape"
jq '.images[0].file_name = "../../../shapes-outside.png"' \
  "$work/data/e2e/escape/annotations/instances_train.json" >"$work/escape.json"
mv "$work/escape.json" "$work/data/e2e/escape/annotations/instances_train.json"
sed -e "s|path: $work/data/e2e/shapes|path: $work/data/e2e/escape|" "$work/det.yaml" >"$work/escape.yaml"
escape=$("${ternctl[@]}" submit "$work/escape.yaml")
"${ternctl[@]}" watch "$escape" >"$work/escape-watch.log" 2>&1 && fail "job $escape with an escaping file_name succeeded"
"${ternctl[@]}" get "$escape" --json >"$work/escape.json"
jq -e '.state == "JOB_STATE_FAILED" and .state_reason.code == "FAILURE_NOT_RETRYABLE"
       and (.state_reason.message | test("images\\[0\\].file_name: .* leads out of the image directory"))' \
  "$work/escape.json" >/dev/null || fail "unexpected state: $(cat "$work/escape.json")"
mv "$work/data/e2e/shapes" "$work/shapes-outside"
ln -s "$work/shapes-outside" "$work/data/e2e/shapes"
linked=$("${ternctl[@]}" submit "$work/det.yaml")
"${ternctl[@]}" watch "$linked" >"$work/linked-watch.log" 2>&1 && fail "job $linked through a link succeeded"
"${ternctl[@]}" get "$linked" --json >"$work/linked.json"
jq -e '.state == "JOB_STATE_FAILED" and (.restarts // 0) == 0 and .state_reason.code == "FAILURE_NOT_RETRYABLE"
       and (.state_reason.message | test("PERMISSION_DENIED: spec.dataset.path: .* resolves to"))' \
  "$work/linked.json" >/dev/null || fail "unexpected state: $(cat "$work/linked.json")"
echo "paths outside the roots refused by ternd (submit), by the trainer (job $escape, a COCO" \
  "file_name) and by the agent (job $linked, a link)"
if (( landlock_abi > 0 )); then
  grep -q "trainer writes confined (Landlock ABI [0-9]*) to .*; its reads to those and /usr" \
    "$work/agent.log" || fail "the trainers' reads were not confined: $(grep -m1 confined "$work/agent.log")"
  echo "the trainers ran with their writes and reads confined by Landlock (ABI $landlock_abi)"
else
  echo "NOTE: this kernel offers no Landlock: the trainers ran unconfined ($(grep -m1 'not confined' "$work/agent.log"))"
fi
echo "PASS"

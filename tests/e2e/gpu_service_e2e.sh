#!/usr/bin/env bash
# The service on a GPU: ternd + one tern-agent with one CUDA slot (and no CPU
# slot) + one tern-trainer rank that builds its NCCL process group at world
# size 1 (TERN_ALWAYS_CONNECT=1). A short HLA job on Fashion-MNIST runs to
# SUCCEEDED, learns (ternary top-1 > 0.6), reports its GPU memory through
# GetJob, and its artifact is fetched (SHA-256 checked by ternctl).
# Exit 77 (skipped) without an NVIDIA GPU. TERN_E2E_DEVICE=cpu runs the same
# steps on a CPU slot with Gloo, to check the script where no GPU is.
# Data: $TERN_E2E_FASHION_MNIST (default /usr/share/datasets/fashion-mnist).
# Variant `confined-graphed`: ternd with path roots and tern-agent with
# --confine-reads on, so Landlock confines the trainer's reads and writes on
# the GPU image (exit 77 where the kernel has no Landlock), and the job with
# optimization.cuda_graph (on CUDA), which then replays its step around the
# NCCL group's eager all-reduce.
# usage: gpu_service_e2e.sh BUILD_DIR [plain|confined-graphed]
set -euo pipefail
build="$(cd "${1:?usage: gpu_service_e2e.sh BUILD_DIR [plain|confined-graphed]}" && pwd)"
variant="${2:-plain}"
[[ "$variant" == plain || "$variant" == confined-graphed ]] ||
  { echo "FAIL: unknown variant '$variant' (plain or confined-graphed)"; exit 1; }
device="${TERN_E2E_DEVICE:-cuda}"
data="${TERN_E2E_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}"
if [[ "$device" == cuda ]] && ! nvidia-smi -L >/dev/null 2>&1; then
  echo "SKIPPED: no NVIDIA GPU (nvidia-smi -L failed)"; exit 77
fi
[[ -d "$data" ]] || { echo "FAIL: no Fashion-MNIST at $data (TERN_E2E_FASHION_MNIST)"; exit 1; }
export TERN_ALWAYS_CONNECT=1
if [[ "$device" == cuda ]]; then
  agent_slots=(--cpu-slots 0 --cuda-slots 1); backend=nccl
else
  agent_slots=(--cpu-slots 1); backend=gloo
fi
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
graph=false
if [[ "$variant" == confined-graphed ]]; then
  landlock_abi=$(python3 -c 'import ctypes; print(ctypes.CDLL(None).syscall(444, None, 0, 1))' \
    2>/dev/null || echo 0)
  (( landlock_abi > 0 )) || { echo "SKIPPED: this kernel offers no Landlock"; exit 77; }
  data="$(realpath "$data")"
  ternd_flags=(--read-roots "$data" --write-roots "$work/scratch/{owner}")
  agent_flags=(--confine-reads on)
  [[ "$device" == cuda ]] && graph=true  # CUDA classification jobs only
fi
start_service

cat >"$work/job.yaml" <<YAML
model: {arch: resnet20, width_multiplier: 0.5}
dataset: {kind: idx, path: $data, max_train_examples: 16384, max_eval_examples: 2000}
quantization: {method: hla}
optimization: {epochs: 2, batch_size: 128, lr: 0.1, cuda_graph: $graph}
resources: {ranks: 1, device_kind: $device}
events: {progress_every_steps: 16}
YAML
job=$("${ternctl[@]}" submit "$work/job.yaml")
"${ternctl[@]}" watch "$job" >"$work/watch.log" 2>&1 || fail "job $job did not succeed"
"${ternctl[@]}" get "$job" --json >"$work/job.json"
jq -e '.state == "JOB_STATE_SUCCEEDED" and .result.ternary_top1 > 0.6' "$work/job.json" >/dev/null \
  || fail "unexpected result: $(cat "$work/job.json")"
if [[ "$device" == cuda ]]; then
  jq -e '.progress.gpu_peak_memory_bytes > 0' "$work/job.json" >/dev/null \
    || fail "no GPU memory in the job's progress: $(jq -c .progress "$work/job.json")"
fi
# The rank built its process group with the device's backend.
"${ternctl[@]}" logs "$job" >"$work/logs.out" 2>&1 || fail "ternctl logs failed"
grep -q "process group $backend" "$work/logs.out" \
  || fail "the trainer did not report a $backend process group: $(grep -m1 'process group' "$work/logs.out")"
if [[ "$variant" == confined-graphed ]]; then
  grep -q "trainer writes confined (Landlock ABI [0-9]*) to .*; its reads to those and /usr" \
    "$work/agent.log" || fail "the trainer's reads were not confined: $(grep -m1 confined "$work/agent.log")"
fi
"${ternctl[@]}" fetch "$job" -o "$work/model.tern" >/dev/null || fail "fetch failed"
[[ "$(head -c 4 "$work/model.tern")" == "TERN" ]] || fail "fetched file is not a .tern artifact"
"${ternctl[@]}" --json inspect "$work/model.tern" >"$work/inspect.json" || fail "inspect failed"
jq -e '.metadata.method == "hla" and .ternary_weights > 0 and .bits_per_ternary_weight == 2' \
  "$work/inspect.json" >/dev/null || fail "unexpected inspect output: $(head -c 600 "$work/inspect.json")"
echo "job $job SUCCEEDED on $device ($backend, $variant, cuda_graph $graph): ternary top-1 $(jq .result.ternary_top1 "$work/job.json")," \
  "GPU peak $(jq '.progress.gpu_peak_memory_bytes // 0' "$work/job.json") bytes," \
  "$(jq '.progress.images_per_second // 0 | floor' "$work/job.json") images/s"
echo "PASS"

#!/usr/bin/env bash
# The GPU proof, run on the GPU machine (Ubuntu 24.04, PyTorch 2.x wheel with
# CUDA, NCCL; see ../shared/GPU.md) after scripts/gpu-carry.sh: builds in CUDA
# mode, runs the gpu-labelled tests, a 1-GPU NCCL training run of the trainer,
# the trainer-vs-PyTorch throughput benchmark, and prints a short table last.
# Full log: $OUT/gpu-check.log (or /tmp/gpu-check.log).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:-/tmp}"
log="$out/gpu-check.log"
exec > >(tee "$log") 2>&1
cd "$root"
start=$(date +%s)
step() { echo "== $(( $(date +%s) - start ))s: $*"; }

step "unpacking carried packages"
prefix=/opt/g
mkdir -p "$prefix"
for deb in .carry/debs/*.deb; do dpkg -x "$deb" "$prefix"; done
export LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu"
export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
export PATH="$prefix/usr/bin:$PATH"
export CPATH="$prefix/usr/include"
torch_prefix=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
nccl_dir=$(python3 -c 'import nvidia.nccl,os;print(os.path.dirname(nvidia.nccl.__file__))' 2>/dev/null || true)
[[ -n "$nccl_dir" ]] && export CPATH="$CPATH:$nccl_dir/include" LIBRARY_PATH="$LIBRARY_PATH:$nccl_dir/lib"

step "configuring and building (CUDA mode)"
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$prefix/usr" -DTERN_WITH_GRPC=ON >/dev/null || exit 1
cmake --build build-gpu -j "$(nproc)" --target tern-trainer gpu_test ternd tern-agent ternctl \
  tern_quant_overhead_bench tern-synth-coco || exit 1

step "gpu-labelled tests"
(cd build-gpu && ctest -L gpu --output-on-failure) ; gpu_tests=$?

step "trainer on CUDA (NCCL, world size 1), HLA, Fashion-MNIST"
cat > /tmp/gpu-job.json <<JSON
{"name": "gpu-hla", "model": {"arch": "resnet20"},
 "dataset": {"path": "$root/.carry/fashion-mnist", "num_workers": 6},
 "quantization": {"method": "METHOD_HLA"},
 "optimization": {"epochs": 2, "batch_size": 256, "lr": 0.1},
 "resources": {"ranks": 1, "device_kind": "DEVICE_CUDA"},
 "events": {"progress_every_steps": 50}}
JSON
TERN_MASTER_PORT=29611 build-gpu/worker/trainer/tern-trainer --spec /tmp/gpu-job.json \
  --workdir /tmp/gpu-run --rank 0 --world-size 1 > /tmp/gpu-run.jsonl; train=$?
tail -1 /tmp/gpu-run.jsonl

step "detection on CUDA: CenterNet HLA on the synthetic shapes set"
build-gpu/worker/detection/tern-synth-coco --output /tmp/gpu-shapes --image-size 64 \
  --train-images 1024 --val-images 128 --max-objects 3 --seed 5 >/dev/null
cat > /tmp/gpu-det.json <<JSON
{"name": "gpu-det", "task": "TASK_DETECTION", "model": {"arch": "resnet20", "width_multiplier": 0.5},
 "dataset": {"kind": "DATASET_COCO", "path": "/tmp/gpu-shapes", "input_size": 64, "num_workers": 4},
 "quantization": {"method": "METHOD_HLA"},
 "optimization": {"epochs": 6, "batch_size": 16, "lr": 0.03, "weight_decay": 0.0001, "warmup_epochs": 0.25},
 "resources": {"ranks": 1, "device_kind": "DEVICE_CUDA"},
 "events": {"progress_every_steps": 50}}
JSON
TERN_MASTER_PORT=29612 build-gpu/worker/trainer/tern-trainer --spec /tmp/gpu-det.json \
  --workdir /tmp/gpu-det --rank 0 --world-size 1 > /tmp/gpu-det.jsonl; det=$?
tail -1 /tmp/gpu-det.jsonl | cut -c1-400

step "throughput: tern-trainer vs PyTorch reference (bf16)"
bash bench/trainer_throughput.sh --trainer "$root/build-gpu/worker/trainer/tern-trainer" \
  --python python3 --data "$root/.carry/fashion-mnist" --device cuda --bf16 --channels-last \
  --batch 256 --steps 60 --threads 8 > /tmp/gpu-throughput.md 2>&1; bench=$?

step "summary"
echo "| check | result |"
echo "|---|---|"
echo "| gpu tests | $([[ $gpu_tests == 0 ]] && echo pass || echo FAIL) |"
echo "| trainer on CUDA | $([[ $train == 0 ]] && echo pass || echo FAIL) $(tail -1 /tmp/gpu-run.jsonl | python3 -c 'import sys,json;e=json.loads(sys.stdin.read());print("top1", e.get("artifact",{}).get("top1"), "img/s", round(e.get("images_per_second",0)))' 2>/dev/null) |"
echo "| detection on CUDA | $([[ $det == 0 ]] && echo pass || echo FAIL) $(tail -1 /tmp/gpu-det.jsonl | python3 -c 'import sys,json;e=json.loads(sys.stdin.read());print("AP50", e.get("artifact",{}).get("ap50"))' 2>/dev/null) |"
echo "| GPU memory (classification run) | $(grep '"progress"' /tmp/gpu-run.jsonl | tail -1 | python3 -c 'import sys,json;e=json.loads(sys.stdin.read());print("peak", e.get("gpu_peak_memory_bytes"), "bytes; all-reduce", e.get("allreduce_seconds"), "s/step")' 2>/dev/null) |"
echo "| throughput bench | $([[ $bench == 0 ]] && echo ran || echo FAIL) |"
cat /tmp/gpu-throughput.md
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "total $(( $(date +%s) - start ))s"

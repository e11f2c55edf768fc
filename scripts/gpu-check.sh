#!/usr/bin/env bash
# The GPU proof, run on the GPU machine (Ubuntu 24.04, PyTorch 2.x wheel with
# CUDA and NCCL; see ../shared/GPU.md) after scripts/gpu-carry.sh:
#   1. builds in CUDA mode against the image's LibTorch (gRPC and the
#      header-only libraries from .carry/);
#   2. runs the gpu-labelled tests: quantizers CUDA = CPU, NCCL at world size 1,
#      bf16 autocast step vs fp32, GPU-trained artifact evaluated on the CPU,
#      and the service end to end (ternd + tern-agent with one CUDA slot + a
#      trainer on NCCL);
#   3. trains a CenterNet detector on CUDA (NCCL process group at world size 1);
#   4. benchmarks tern-trainer against the PyTorch reference on the same card:
#      ResNet-20 on Fashion-MNIST and ResNet-18 on synthetic 224×224 input,
#      FP and HLA, bf16 + channels_last, with peak GPU memory and the
#      ResNet-18 step's FLOP/s as a fraction of the card's measured bf16
#      matmul rate; then, if time is left, the reference under torch.compile;
#   5. prints a short table last.
# Full log: $OUT/gpu-check.log (else /tmp/gpu-check.log); benchmark tables in
# $OUT/gpu-bench-*.md (build and test logs stay in /tmp/gpu-check-logs.*: the
# device returns at most 8 files). Budget: well inside 8 minutes; optional steps are
# skipped when the clock says so. Exit status 1 when a check failed.
#
#   scripts/gpu-check.sh          on the GPU machine (device run, carry .carry)
#   scripts/gpu-check.sh --cpu    a dry run of every step on a machine without
#                                 a GPU (uses build/ from scripts/build.sh,
#                                 small sizes): checks the script itself
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mode=cuda
[[ "${1:-}" == --cpu ]] && mode=cpu
out="${OUT:-/tmp}"
mkdir -p "$out"
log="$out/gpu-check.log"
logs=$(mktemp -d /tmp/gpu-check-logs.XXXXXX)  # detail logs: the device returns at most 8 files
exec > >(tee "$log") 2>&1
tee_pid=$!
cd "$root"
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
step() { echo "== $(elapsed)s: $*"; }
declare -A result  # check -> pass / FAIL / skipped ...

if [[ "$mode" == cuda ]]; then
  step "unpacking carried packages"
  [[ -d .carry/debs ]] || { echo "no .carry/debs: run scripts/gpu-carry.sh first and carry .carry"; exit 1; }
  prefix=/opt/g
  mkdir -p "$prefix"
  for deb in .carry/debs/*.deb; do dpkg -x "$deb" "$prefix"; done
  export LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu"
  export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
  export PATH="$prefix/usr/bin:$PATH"
  export CPATH="$prefix/usr/include"
  python=python3
  torch_prefix=$($python -c 'import torch;print(torch.utils.cmake_prefix_path)')
  nccl_dir=$($python -c 'import nvidia.nccl,os;print(os.path.dirname(nvidia.nccl.__file__))' 2>/dev/null || true)
  [[ -n "$nccl_dir" ]] && export CPATH="$CPATH:$nccl_dir/include" LIBRARY_PATH="$LIBRARY_PATH:$nccl_dir/lib"
  data="$root/.carry/fashion-mnist"
  build="$root/build-gpu"
  jobs=$(nproc)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

  step "configuring and building (CUDA mode, $jobs jobs)"
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  # CMake 4 refuses packages' config files that ask for policies older than
  # 3.5; the minimum below lets Debian's gRPC/absl configs load.
  if ! cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_POLICY_VERSION_MINIMUM=3.5 \
      -DCMAKE_PREFIX_PATH="$torch_prefix;$prefix/usr" -DTERN_WITH_GRPC=ON >"$logs/cmake.log" 2>&1; then
    tail -40 "$logs/cmake.log"; echo "configure FAILED"; exit 1
  fi
  grep -i "cuda" "$logs/cmake.log" | head -5
else
  step "dry run on the CPU: using build/ (scripts/build.sh)"
  python=/usr/bin/python3
  data=/usr/share/datasets/fashion-mnist
  build="$root/build"
  jobs=2
  export TERN_E2E_DEVICE=cpu
fi
targets=(tern-trainer gpu_test ternd tern-agent ternctl tern-synth-coco)
if ! cmake --build "$build" -j "$jobs" --target "${targets[@]}" >"$logs/build.log" 2>&1; then
  grep -E "error|Error" "$logs/build.log" | head -40; echo "build FAILED"; exit 1
fi
step "built"
trainer="$build/worker/trainer/tern-trainer"

step "gpu-labelled tests (quantizers, NCCL, bf16, artifact, service end to end)"
export TERN_E2E_FASHION_MNIST="$data"
(cd "$build" && ctest -L gpu --output-on-failure --timeout 300) >"$logs/gpu-tests.log" 2>&1
gpu_tests=$?
grep -E "tests passed|Test +#|SKIPPED|PASS|job .* SUCCEEDED" "$logs/gpu-tests.log"
if [[ $gpu_tests != 0 ]]; then
  grep -vE "^\[ +(OK|RUN) +\]" "$logs/gpu-tests.log" | grep -iE -B2 -A12 "fail|error" | head -120
fi
result[gpu tests]=$([[ $gpu_tests == 0 ]] && echo pass || echo FAIL)

step "detection on $mode: CenterNet HLA on the synthetic shapes set"
det_dir=$(mktemp -d)
"$build/worker/detection/tern-synth-coco" --output "$det_dir/shapes" --image-size 64 \
  --train-images 1024 --val-images 128 --max-objects 3 --seed 5 >/dev/null
det_epochs=6; [[ "$mode" == cpu ]] && det_epochs=1
device_kind=DEVICE_CUDA; [[ "$mode" == cpu ]] && device_kind=DEVICE_CPU
cat > "$det_dir/spec.json" <<JSON
{"name": "gpu-det", "task": "TASK_DETECTION", "model": {"arch": "resnet20", "width_multiplier": 0.5},
 "dataset": {"kind": "DATASET_COCO", "path": "$det_dir/shapes", "input_size": 64, "num_workers": 4},
 "quantization": {"method": "METHOD_HLA"},
 "optimization": {"epochs": $det_epochs, "batch_size": 16, "lr": 0.03, "weight_decay": 0.0001,
                  "warmup_epochs": 0.25},
 "resources": {"ranks": 1, "device_kind": "$device_kind"},
 "events": {"progress_every_steps": 50}}
JSON
TERN_MASTER_PORT=29612 "$trainer" --always-connect --spec "$det_dir/spec.json" --workdir "$det_dir/run" \
  > "$out/gpu-det.jsonl" 2>"$det_dir/stderr.log"
det=$?
[[ $det == 0 ]] || tail -20 "$det_dir/stderr.log"
det_line=$(jq -r 'select(.event == "finished") | "AP50 \(.artifact.ap50 // "?") AP \(.artifact.ap // "?")"' \
  "$out/gpu-det.jsonl" 2>/dev/null | tail -1)
pg=$(jq -r 'select(.event == "started") | .process_group' "$out/gpu-det.jsonl" 2>/dev/null | head -1)
result[detection]="$([[ $det == 0 ]] && echo pass || echo FAIL) ($det_line, process group $pg)"
echo "${result[detection]}"

bench() {  # name, then trainer_throughput.sh arguments
  local name="$1"; shift
  step "benchmark $name"
  local md="$out/gpu-bench-$name.md"
  if bash bench/trainer_throughput.sh --trainer "$trainer" --python "$python" --data "$data" \
      --device "$mode" "$@" >"$md" 2>"$logs/gpu-bench-$name.log"; then
    result[bench $name]=ran; cat "$md"
  else
    result[bench $name]=FAIL; tail -30 "$logs/gpu-bench-$name.log"
  fi
}
if [[ "$mode" == cuda ]]; then
  gpu_flags=(--bf16 --channels-last --threads 8 --workers 4)
  bench resnet20 "${gpu_flags[@]}" --batch 256 --steps 80 --warmup 20
  bench resnet18-224 "${gpu_flags[@]}" --arch resnet18 --synthetic --input-size 224 \
    --batch 128 --steps 40 --warmup 10 --flops
  if (( $(elapsed) < 330 )); then
    bench resnet20-compile "${gpu_flags[@]}" --batch 256 --steps 80 --warmup 20 --compile
  else
    result[bench resnet20-compile]="skipped (time: $(elapsed)s)"
  fi
else
  bench resnet20 --threads 2 --batch 32 --steps 6 --warmup 2 --width 0.25
  bench resnet18-224 --arch resnet18 --synthetic --input-size 64 --width 0.25 --threads 2 \
    --batch 8 --steps 4 --warmup 1 --flops
fi

step "summary"
echo "| check | result |"
echo "|---|---|"
for k in "gpu tests" detection "bench resnet20" "bench resnet18-224" "bench resnet20-compile"; do
  [[ -n "${result[$k]:-}" ]] && echo "| $k | ${result[$k]} |"
done
grep -h "SUCCEEDED on" "$logs/gpu-tests.log" | sed 's/^/service: /'
[[ "$mode" == cuda ]] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "total $(elapsed)s; log $log"
rm -rf "$det_dir"
# Let tee write the last lines before the device run collects $OUT.
exec >/dev/null 2>&1
wait "$tee_pid" 2>/dev/null || true
status=0
for v in "${result[@]}"; do [[ "$v" == FAIL* ]] && status=1; done
exit "$status"

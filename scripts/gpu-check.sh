#!/usr/bin/env bash
# The GPU proof, run on the GPU machine (Ubuntu 24.04, PyTorch 2.x wheel with
# CUDA and NCCL; see docs/GPU.md) after scripts/gpu-carry.sh:
#   1. builds in CUDA mode against the image's LibTorch (gRPC and the
#      header-only libraries from .carry/);
#   2. runs the gpu-labelled tests: the fused projection's CUDA kernels = their
#      CPU reference and = the ATen path, quantizers CUDA = CPU, NCCL at world size 1,
#      bf16 autocast step vs fp32, GPU-trained artifact evaluated on the CPU,
#      CUDA-graph step and trainer vs eager, and the service end to end
#      (ternd + tern-agent with one CUDA slot + a trainer on NCCL);
#   3. trains a CenterNet detector on CUDA (NCCL process group at world size 1);
#   4. benchmarks tern-trainer against the PyTorch reference on the same card:
#      ResNet-20 on Fashion-MNIST and ResNet-18 on synthetic 224×224 input,
#      FP and HLA, bf16 + channels_last, with peak GPU memory and the
#      ResNet-18 step's FLOP/s as a fraction of the card's measured bf16
#      matmul rate; tern-trainer replaying its step from a CUDA graph
#      (optimization.cuda_graph) on ResNet-20; then, if time is left, the
#      reference under torch.compile;
#   5. if the clock allows, the full-budget Fashion-MNIST grid (FP, TWN, HLA,
#      3 seeds, 15 epochs; bench/accuracy_table.sh, all runs at once on the GPU);
#   6. prints a short table last.
# Full log: $OUT/gpu-check.log (else /tmp/gpu-check.log); test output in
# $OUT/gpu-tests.log, benchmark tables in $OUT/gpu-bench.md (one section per
# benchmark), the grid in
# $OUT/gpu-accuracy.md, CMake's log in $OUT/gpu-cmake.log (the build log only
# when the build fails: the device returns at most 8 files; other detail logs
# stay in /tmp/gpu-check-logs.*). Budget: TERN_GPU_DEADLINE_S (default 420 s,
# the build included); optional steps are skipped or cut short when the clock
# says so. Exit status 1 when a check failed.
#
# Steps (TERN_GPU_STEPS, default all, in this order): grid (started in the
# background, stopped before the first benchmark), unit (gpu-labelled
# GoogleTest cases), e2e (the service on NCCL), detection, bench-resnet20,
# bench-graph, bench-resnet18, bench-projection (the packed quantizer's own
# cost per step, fused CUDA kernels against the ATen kernels:
# tern_projection_bench --paths "fused aten"), bench-compile, bench-graph-compiled (the
# CUDA-graph step against the reference under torch.compile mode
# reduce-overhead). A short re-check on a nearly spent budget:
#   TERN_GPU_DEADLINE_S=200 TERN_GPU_STEPS="unit bench-resnet20 e2e" scripts/gpu-check.sh
# Step `quant` runs only the CPU = GPU quantizer comparison (and its CPU-side
# set-up check); step `fused` only the fused projection's checks (kernels =
# CPU reference, fused = ATen path in PackedProjection and TernaryModel). A
# short run of the fused path alone (about 2 minutes with the build):
#   TERN_GPU_DEADLINE_S=240 TERN_GPU_STEPS="fused bench-projection" scripts/gpu-check.sh TERN_GPU_STEPS=none only builds (no GPU needed; what
# docker/Dockerfile.cuda runs). TERN_GPU_REPEATS=K (default 1) runs each
# benchmark K times, tern-trainer and the reference interleaved, and reports
# medians and ranges.
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
deadline=${TERN_GPU_DEADLINE_S:-420}
elapsed() { echo $(( $(date +%s) - start )); }
left() { echo $(( deadline - $(date +%s) + start )); }
step() { echo "== $(elapsed)s: $*"; }
declare -A result  # check -> pass / FAIL / skipped ...

# The HLA.md grid at full budget (TERN_GPU_GRID_METHODS, default FP, TWN,
# HLA; x 3 seeds, 15 epochs), every run at once on the GPU, started right
# after the build: it shares the GPU with the correctness checks (not timed)
# and must end before the timed benchmarks; when the clock says so it is
# stopped, and the runs it finished are listed. The rest of HLA.md's grid:
#   TERN_GPU_GRID_METHODS="ttq lat hla_no_regularizer hla_no_rescale" TERN_GPU_STEPS=grid
grid_methods=${TERN_GPU_GRID_METHODS:-"fp twn hla"}
grid_runs=$(( $(wc -w <<<"$grid_methods") * 3 ))
accuracy_grid_start() {
  local size=()
  [[ "$mode" == cpu ]] && size=(--epochs 1 --max-train 1024 --max-eval 512 --width 0.25)
  step "accuracy grid started in the background: $grid_methods x 3 seeds, all $grid_runs at once"
  setsid bash bench/accuracy_table.sh --trainer "$trainer" --device "$mode" --data "$data" \
    --methods "$grid_methods" --seeds "0 1 2" --parallel "$grid_runs" --threads 1 --workers 2 "${size[@]}" \
    >"$out/gpu-accuracy.md" 2>"$logs/accuracy.log" &
  grid_pid=$!
}
accuracy_grid_wait() {  # seconds to keep for what comes after
  local stop=$(( $(date +%s) + $(left) - $1 ))
  step "waiting for the accuracy grid (at most $(( stop - $(date +%s) ))s)"
  while kill -0 "$grid_pid" 2>/dev/null && (( $(date +%s) < stop )); do sleep 2; done
  if kill -0 "$grid_pid" 2>/dev/null; then
    kill -- "-$grid_pid" 2>/dev/null; wait "$grid_pid" 2>/dev/null
    result[grid]="cut short at $(elapsed)s: $(grep -c ' done: ' "$logs/accuracy.log") of $grid_runs runs done"
  elif wait "$grid_pid"; then
    result[grid]=ran; cat "$out/gpu-accuracy.md"
  else
    result[grid]=FAIL
  fi
  grep -E "done:|failed|rror" "$logs/accuracy.log" | head -40
}

if [[ "$mode" == cuda ]]; then
  step "unpacking carried packages"
  [[ -d .carry/debs ]] || { echo "no .carry/debs: run scripts/gpu-carry.sh first and carry .carry"; exit 1; }
  prefix=/opt/g
  mkdir -p "$prefix"
  for deb in .carry/debs/*.deb; do dpkg -x "$deb" "$prefix"; done
  # The -dev packages' unversioned links (libssl.so -> libssl.so.3, ...) point
  # at runtime libraries that were not carried because the image has its own:
  # re-point each dangling one at the image's library of the same soname.
  for link in "$prefix"/usr/lib/x86_64-linux-gnu/*.so; do
    [[ -L "$link" && ! -e "$link" ]] || continue
    name=$(basename "$(readlink "$link")") found=""
    while [[ -z "$found" ]]; do
      found=$(ldconfig -p | awk -v n="$name" '$1 == n && /x86-64/ {print $NF; exit}')
      [[ -z "$found" && -e /usr/lib/x86_64-linux-gnu/$name ]] && found=/usr/lib/x86_64-linux-gnu/$name
      [[ -n "$found" || "$name" != *.so.* ]] && break
      name="${name%.*}"
    done
    if [[ -n "$found" ]]; then ln -sf "$found" "$link"; echo "$(basename "$link") -> $found (image)"
    else echo "warning: $link points nowhere and the image has no $(basename "$link")"; fi
  done
  export LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu"
  export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
  export PATH="$prefix/usr/bin:$PATH"
  export CPATH="$prefix/usr/include:$prefix/usr/include/x86_64-linux-gnu"
  python=python3
  torch_prefix=$($python -c 'import torch;print(torch.utils.cmake_prefix_path)')
  nccl_dir=$($python -c 'import nvidia.nccl,os;print(os.path.dirname(nvidia.nccl.__file__))' 2>/dev/null || true)
  [[ -n "$nccl_dir" ]] && export CPATH="$CPATH:$nccl_dir/include" LIBRARY_PATH="$LIBRARY_PATH:$nccl_dir/lib"
  data="$root/.carry/fashion-mnist"
  build="$root/build-gpu"
  jobs=$(nproc)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  torch_version=$($python -c 'import torch;print(torch.__version__)')
  cxx_standard=17  # LibTorch 2.12 and newer need C++20
  $python -c 'import sys,torch;v=tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]);sys.exit(v<(2,12))' \
    && cxx_standard=20
  echo "torch $torch_version (C++$cxx_standard), $(cmake --version | head -1), $(g++ --version | head -1)"

  # nvcc for tern's own kernels (quant/cuda: the fused projection); without it
  # PackedProjection keeps its ATen path and the fused checks fail.
  nvcc=$(command -v nvcc || true)
  for candidate in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
    [[ -z "$nvcc" && -x "$candidate" ]] && nvcc=$candidate
  done
  cuda_compiler=()
  if [[ -n "$nvcc" ]]; then cuda_compiler=(-DCMAKE_CUDA_COMPILER="$nvcc"); echo "nvcc: $nvcc"
  else echo "warning: no nvcc: the fused projection is not built"; fi

  step "configuring and building (CUDA mode, $jobs jobs)"
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  # CMake 4 refuses packages' config files that ask for policies older than
  # 3.5; the minimum below lets Debian's gRPC/absl configs load.
  if ! cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_POLICY_VERSION_MINIMUM=3.5 -DCMAKE_CXX_STANDARD="$cxx_standard" \
      -DTorch_DIR="$torch_prefix/Torch" -DCMAKE_PREFIX_PATH="$prefix/usr" -DTERN_WITH_GRPC=ON \
      "${cuda_compiler[@]}" \
      >"$logs/cmake.log" 2>&1; then
    tail -40 "$logs/cmake.log"; cp "$logs/cmake.log" "$out/gpu-cmake.log"; echo "configure FAILED"; exit 1
  fi
  cp "$logs/cmake.log" "$out/gpu-cmake.log"
  grep -i "cuda" "$logs/cmake.log" | head -5
  grep -E "CUDA compiler identification|ATen path only" "$logs/cmake.log"
  grep -E "^(Protobuf_LIBRARY|Protobuf_PROTOC_EXECUTABLE|Protobuf_INCLUDE_DIR|gRPC_DIR|Torch_DIR):" \
    "$build/CMakeCache.txt"
else
  step "dry run on the CPU: using build/ (scripts/build.sh)"
  python=/usr/bin/python3
  data=/usr/share/datasets/fashion-mnist
  build="$root/build"
  jobs=2
  export TERN_E2E_DEVICE=cpu
fi
targets=(tern-trainer gpu_test ternd tern-agent ternctl tern-synth-coco tern_projection_bench)
# The fused projection's kernels and their parity test exist where nvcc was found.
grep -qs fused_projection_parity_test "$build/tests/gpu/CTestTestfile.cmake" &&
  targets+=(fused_projection_parity_test quant_fused_cuda_build_test)
keep_going=(-k); [[ -f "$build/build.ninja" ]] && keep_going=(-k 0)
# Keep going past a failed file, so one run shows every error, and go on with
# whatever did build (the benchmarks only need tern-trainer).
if ! cmake --build "$build" -j "$jobs" --target "${targets[@]}" -- "${keep_going[@]}" \
    >"$logs/build.log" 2>&1; then
  grep -E -A4 "error|Error" "$logs/build.log" | head -150
  tail -c 4000000 "$logs/build.log" >"$out/gpu-build.log"
  result[build]=FAIL
  echo "build FAILED (log: $out/gpu-build.log)"
else
  result[build]=pass
fi
step "built"
trainer="$build/worker/trainer/tern-trainer"
[[ -x "$trainer" ]] || { echo "no tern-trainer: stopping"; exit 1; }
# What runs, in this order (TERN_GPU_STEPS overrides, e.g. a short re-check:
# TERN_GPU_STEPS="unit bench-resnet20 e2e detection"). Steps that would not
# end before the deadline are skipped and say so.
steps=${TERN_GPU_STEPS:-"grid unit e2e detection bench-resnet20 bench-graph bench-resnet18 bench-projection bench-compile bench-graph-compiled"}
export TERN_E2E_FASHION_MNIST="$data"
: >"$out/gpu-tests.log"
: >"$out/gpu-bench.md"

gpu_ctest() {  # name, ctest selection...
  local name="$1"; shift
  step "gpu tests: $name"
  local cap=$(( $(left) > 280 ? 280 : $(left) > 20 ? $(left) : 20 ))
  (cd "$build" && timeout "$cap" ctest "$@" --verbose --timeout 200) \
    >"$logs/ctest-$name.log" 2>&1
  local rc=$?
  cat "$logs/ctest-$name.log" >>"$out/gpu-tests.log"
  grep -E "tests passed|Test +#|SKIPPED|job .* SUCCEEDED|loss fp32" "$logs/ctest-$name.log"
  result[$name]=$([[ $rc == 0 ]] && echo pass || echo "FAIL (see gpu-tests.log)")
}

detection() {
  step "detection on $mode: CenterNet HLA on the synthetic shapes set"
  det_dir=$(mktemp -d)
  "$build/worker/detection/tern-synth-coco" --output "$det_dir/shapes" --image-size 64 \
    --train-images 1024 --val-images 128 --max-objects 3 --seed 5 >/dev/null
  local det_epochs=6; [[ "$mode" == cpu ]] && det_epochs=1
  local device_kind=DEVICE_CUDA; [[ "$mode" == cpu ]] && device_kind=DEVICE_CPU
  cat > "$det_dir/spec.json" <<JSON
{"name": "gpu-det", "task": "TASK_DETECTION", "model": {"arch": "resnet20", "width_multiplier": 0.5},
 "dataset": {"kind": "DATASET_COCO", "path": "$det_dir/shapes", "input_size": 64, "num_workers": 4},
 "quantization": {"method": "METHOD_HLA"},
 "optimization": {"epochs": $det_epochs, "batch_size": 16, "lr": 0.03, "weight_decay": 0.0001,
                  "warmup_epochs": 0.25},
 "resources": {"ranks": 1, "device_kind": "$device_kind"},
 "events": {"progress_every_steps": 50}}
JSON
  TERN_MASTER_PORT=29612 timeout 150 "$trainer" --always-connect --spec "$det_dir/spec.json" \
    --workdir "$det_dir/run" > "$out/gpu-det.jsonl" 2>"$det_dir/stderr.log"
  local det=$?
  [[ $det == 0 ]] || tail -20 "$det_dir/stderr.log"
  local line pg
  line=$(jq -r 'select(.event == "finished") | "AP50 \(.artifact.ap50 // "?") AP \(.artifact.ap // "?")"' \
    "$out/gpu-det.jsonl" 2>/dev/null | tail -1)
  pg=$(jq -r 'select(.event == "started") | .process_group' "$out/gpu-det.jsonl" 2>/dev/null | head -1)
  result[detection]="$([[ $det == 0 ]] && echo pass || echo FAIL) ($line, process group $pg)"
  echo "${result[detection]}"
  rm -rf "$det_dir"
}

bench() {  # step, table name, then trainer_throughput.sh arguments
  local key="$1" name="$2"; shift 2
  step "benchmark $name"
  local md="$logs/gpu-bench-$name.md"
  if bash bench/trainer_throughput.sh --trainer "$trainer" --python "$python" --data "$data" \
      --device "$mode" "$@" >"$md" 2>"$logs/gpu-bench-$name.log"; then
    result[$key]=ran; cat "$md"
    # One file for all tables: the device returns at most 8 files.
    { echo "## $name"; cat "$md"; echo; } >>"$out/gpu-bench.md"
  else
    result[$key]=FAIL; tail -30 "$logs/gpu-bench-$name.log"
  fi
}

repeats=${TERN_GPU_REPEATS:-1}
# The packed quantizer's BeforeForward/AfterBackward alone, in ms and in
# element-wise passes over the weights, with BeforeForward's time by operation.
projection_bench() {
  step "benchmark: the packed quantizer per step (tern_projection_bench)"
  local md="$logs/gpu-bench-projection.md"
  local args=(--device cuda --bf16 --threads 8 --reps 20 --by-op --paths "fused aten")
  [[ "$mode" == cpu ]] && args=(--device cpu --threads 2 --reps 3 --width 0.25 --paths "fused aten")
  if { "$build/bench/quant/tern_projection_bench" --arch resnet18 --methods "twn hla" "${args[@]}" &&
       echo && "$build/bench/quant/tern_projection_bench" --arch resnet20 --classes 10 \
         --methods "twn hla" "${args[@]}"; } >"$md" 2>&1; then
    result[bench-projection]=ran; cat "$md"
    { echo "## packed quantizer"; cat "$md"; echo; } >>"$out/gpu-bench.md"
  else
    result[bench-projection]=FAIL; tail -30 "$md"
  fi
}

if [[ "$mode" == cuda ]]; then
  gpu_flags=(--bf16 --channels-last --threads 8 --workers 4 --repeats "$repeats")
  # The timed steps (after the first --warmup) lie past HLA's phase 1 (the
  # first 30% of the steps, FP forward) and its switch to the ternary forward
  # (a re-capture with --cuda-graph), so the HLA rows time ternary steps only.
  # Runs C and D (2026-11-28) used --steps 80 --warmup 20 and --steps 40
  # --warmup 10: their timed HLA steps included 4 and 2 phase-1 steps and the
  # switch.
  r20=("${gpu_flags[@]}" --batch 256 --steps 120 --warmup 40)
  r18=("${gpu_flags[@]}" --arch resnet18 --synthetic --input-size 224 --batch 128 --steps 60
       --warmup 20 --flops)
else
  r20=(--threads 2 --batch 32 --steps 6 --warmup 2 --width 0.25 --repeats "$repeats")
  r18=(--arch resnet18 --synthetic --input-size 64 --width 0.25 --threads 2 --batch 8 --steps 4
       --warmup 1 --flops)
fi
declare -A need=([unit]=45 [quant]=25 [fused]=40 [e2e]=110 [detection]=20 [bench-resnet20]=50 [bench-graph]=50 [bench-resnet18]=80 [bench-projection]=20
                 [bench-compile]=100 [bench-graph-compiled]=110)  # seconds each step needs, roughly
grid_running=false
for s in $steps; do
  if [[ "$s" == bench-* ]] && $grid_running; then
    accuracy_grid_wait 200; grid_running=false  # the GPU to the timed benchmarks alone
  fi
  s_need=${need[$s]:-0}
  [[ "$s" == bench-* ]] && s_need=$(( s_need * repeats ))
  if [[ "$s" != grid ]] && (( $(left) < s_need )); then
    result[$s]="skipped (time: $(elapsed)s)"; continue
  fi
  case "$s" in
    grid) accuracy_grid_start; grid_running=true ;;
    unit) gpu_ctest unit -L gpu -LE e2e ;;
    quant) gpu_ctest quant -R "QuantizerComparisonSetUp|EveryQuantizerMatchesCpu" ;;
    fused) gpu_ctest fused -R "FusedProjectionParity|FusedCudaBuild|FusedProjectionMatchesTheAtenPath|FusedTernaryModelStep" ;;
    e2e) gpu_ctest e2e -R "E2eServiceTrainsOnGpu" ;;  # plain, and graphed with reads confined
    detection) detection ;;
    bench-resnet20) bench "$s" resnet20 "${r20[@]}" ;;
    bench-graph)  # tern-trainer with optimization.cuda_graph against the eager reference
      if [[ "$mode" == cuda ]]; then bench "$s" resnet20-graph "${r20[@]}" --cuda-graph
      else result[$s]="skipped (CUDA graphs need a GPU)"; fi ;;
    bench-resnet18) bench "$s" resnet18-224 "${r18[@]}" ;;
    bench-projection) projection_bench ;;
    bench-compile)
      if [[ "$mode" == cuda ]]; then bench "$s" resnet20-compile "${r20[@]}" --compile
      else result[$s]="skipped (no torch.compile run on the CPU)"; fi ;;
    bench-graph-compiled)  # both sides graphed: ours against torch.compile's CUDA graphs
      if [[ "$mode" == cuda ]]; then
        bench "$s" resnet20-graph-vs-reduce-overhead "${r20[@]}" --cuda-graph --compile-mode reduce-overhead
      else result[$s]="skipped (CUDA graphs need a GPU)"; fi ;;
    none) ;;  # build only (docker/Dockerfile.cuda)
    *) echo "unknown step '$s' (TERN_GPU_STEPS)"; result[$s]=FAIL ;;
  esac
done
$grid_running && accuracy_grid_wait 0

step "summary"
echo "| check | result |"
echo "|---|---|"
for k in build $steps; do
  [[ -n "${result[$k]:-}" ]] && echo "| $k | ${result[$k]} |"
done
grep -h "SUCCEEDED on" "$out/gpu-tests.log" 2>/dev/null | sed 's/^/service: /'
[[ "$mode" == cuda ]] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "total $(elapsed)s; log $log"
# Let tee write the last lines before the device run collects $OUT.
exec >/dev/null 2>&1
wait "$tee_pid" 2>/dev/null || true
status=0
for v in "${result[@]}"; do [[ "$v" == FAIL* ]] && status=1; done
exit "$status"

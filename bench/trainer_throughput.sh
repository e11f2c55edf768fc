#!/usr/bin/env bash
# Training throughput of tern-trainer next to the PyTorch reference trainer
# (bench/reference/reference_trainer.py): same model, method, batch, threads
# and number of steps; prints a markdown table of images/s and their ratio.
#
#   bench/trainer_throughput.sh [--trainer build/worker/trainer/tern-trainer]
#       [--methods "fp hla"] [--ranks "1 2"] [--repeats 3] [--threads 2]
#       [--workers 1] [--batch 128] [--steps 40] [--warmup 10] [--width 1.0]
#       [--arch resnet20] [--synthetic [--input-size 224]]
#       [--granularity tensor] [--device cpu|cuda] [--bf16] [--channels-last]
#       [--compile] [--compile-mode default|reduce-overhead|max-autotune]
#       [--cuda-graph] [--flops] [--python /usr/bin/python3]
#       [--data /usr/share/datasets/fashion-mnist] [--keep DIR]
#
# How the two are made comparable:
# - Both train --arch (x --width) on the first steps×batch Fashion-MNIST
#   images for one epoch, so the HLA schedules (FP phase 1 for the first 30%,
#   then ternary) cover the same steps in both. --synthetic: random
#   3×S×S images (S = --input-size) with 1000 classes instead
#   (DATASET_SYNTHETIC; the reference's --synthetic), e.g. ResNet-18 at 224.
# - tern-trainer reports images/s per window of events.progress_every_steps
#   (= --warmup) steps; the first window (warm-up, loader start) is dropped and
#   the rest are combined (total images / total time). The reference times
#   the same steps (its --warmup-steps) and skips evaluation; tern-trainer's
#   end-of-run evaluation and export fall outside its progress windows.
# - tern-trainer gets dataset.num_workers = --workers (default 1: one loader
#   thread per rank beside its compute threads); the reference prepares
#   batches inline.
# - --ranks: world sizes to measure. W ranks are W processes on this machine
#   (tern-trainer --rank r --world-size W --master 127.0.0.1:PORT, Gloo; the
#   reference with --world-size W: DDP over gloo), each with --threads / W
#   compute threads (at least 1), each training on its B/W slice of the
#   global batch B = --batch; both report images/s of the global batch.
# - --repeats K: every (ranks, method) pair runs K times, tern-trainer and
#   reference interleaved (which goes first alternates between repeats, so
#   drifting background load hits both alike); the table gives the median and
#   min-max of each and the ratio of the medians.
# - On CUDA the table adds each side's peak GPU memory (the caching
#   allocator's peak, bytes allocated) and the ternary/FP step-time ratio
#   (FP images/s over ternary images/s) when both fp and a ternary method ran.
# - --flops: first measures the device's dense matmul rate
#   (bench/reference/matmul_peak.py; bf16 with --bf16, else fp32), then gives
#   each side's achieved training FLOP/s, 3 × the model's forward FLOPs per
#   image (the reference's count) × images/s, as a fraction of it.
# - --cuda-graph: tern-trainer replays each step from a CUDA graph
#   (optimization.cuda_graph; --device cuda only); the reference stays eager
#   (or torch.compile with --compile; --compile-mode reduce-overhead, which
#   implies --compile, makes torch.compile replay CUDA graphs too: the peer
#   that is graphed like tern-trainer).
# Needs jq. Exit status 1 when a run fails (its log is kept and shown).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
trainer="$root/build/worker/trainer/tern-trainer"
python=/usr/bin/python3
data=/usr/share/datasets/fashion-mnist
methods="fp hla" ranks_list="1" repeats=1 workers=1
threads=2 batch=128 steps=40 warmup=10 width=1.0 granularity=tensor
arch=resnet20 synthetic=false input_size=224 flops=false
device=cpu bf16=false channels_last=false compile=false compile_mode=default cuda_graph=false keep=""

usage() { sed -n '2,44p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --trainer) trainer="$2"; shift 2 ;;
    --methods) methods="$2"; shift 2 ;;
    --ranks) ranks_list="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --width) width="$2"; shift 2 ;;
    --arch) arch="$2"; shift 2 ;;
    --synthetic) synthetic=true; shift ;;
    --input-size) input_size="$2"; shift 2 ;;
    --flops) flops=true; shift ;;
    --granularity) granularity="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --bf16) bf16=true; shift ;;
    --channels-last) channels_last=true; shift ;;
    --compile) compile=true; shift ;;
    --compile-mode) compile=true; compile_mode="$2"; shift 2 ;;
    --cuda-graph) cuda_graph=true; shift ;;
    --python) python="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --keep) keep="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "trainer_throughput.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
if (( steps <= warmup )); then
  echo "trainer_throughput.sh: --steps ($steps) must exceed --warmup ($warmup)" >&2; exit 2
fi
for w in $ranks_list; do
  if (( w < 1 || batch % w != 0 )); then
    echo "trainer_throughput.sh: --batch ($batch) must split evenly over $w ranks" >&2; exit 2
  fi
done
if [[ "$cuda_graph" == true && "$device" != cuda ]]; then
  echo "trainer_throughput.sh: --cuda-graph needs --device cuda" >&2; exit 2
fi
(( repeats >= 1 )) || { echo "trainer_throughput.sh: --repeats must be >= 1" >&2; exit 2; }
[[ -x "$trainer" ]] || { echo "trainer_throughput.sh: no tern-trainer at $trainer (--trainer)" >&2; exit 2; }
command -v jq >/dev/null || { echo "trainer_throughput.sh: needs jq" >&2; exit 2; }

if [[ -n "$keep" ]]; then
  work="$keep"; mkdir -p "$work"
else
  work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
fi
max_train=$(( steps * batch ))
device_kind=DEVICE_CPU; [[ "$device" == cuda ]] && device_kind=DEVICE_CUDA

threads_per_rank() { echo $(( threads / $1 > 0 ? threads / $1 : 1 )); }  # ranks

# tern.v1.JobSpec as proto3 JSON (snake_case keys, enum names).
write_spec() {  # method ranks run_dir -> spec path
  local method="$1" ranks="$2" dir="$3" spec="$3/spec.json"
  jq -n --arg name "throughput-$method" --arg method "METHOD_${method^^}" \
        --arg granularity "GRANULARITY_${granularity^^}" --arg data "$data" \
        --arg device "$device_kind" --arg ckpt "$dir/ckpt" \
        --argjson width "$width" --argjson max_train "$max_train" --argjson batch "$batch" \
        --argjson ranks "$ranks" --argjson threads "$(threads_per_rank "$ranks")" \
        --argjson workers "$workers" --argjson warmup "$warmup" \
        --argjson bf16 "$bf16" --argjson channels_last "$channels_last" \
        --argjson cuda_graph "$cuda_graph" \
        --arg arch "$arch" --argjson synthetic "$synthetic" --argjson input_size "$input_size" '{
    name: $name,
    model: {arch: $arch, width_multiplier: $width},
    dataset: ({kind: "DATASET_IDX", path: $data, max_train_examples: $max_train,
               max_eval_examples: 512, num_workers: $workers}
              + if $synthetic then {kind: "DATASET_SYNTHETIC", path: "", input_size: $input_size,
                                    max_eval_examples: 64} else {} end),
    quantization: {method: $method, granularity: $granularity},
    optimization: {epochs: 1, batch_size: $batch, seed: 0, bf16: $bf16,
                   channels_last: $channels_last, cuda_graph: $cuda_graph},
    resources: {ranks: $ranks, device_kind: $device, threads_per_rank: $threads},
    checkpoint: {every_steps: 1000000, directory: $ckpt},
    events: {progress_every_steps: $warmup}
  }' > "$spec"
  echo "$spec"
}

# images/s over the progress windows after the first one.
tern_ips() {  # events.jsonl
  jq -s --argjson batch "$batch" --argjson warmup "$warmup" '
    [.[] | select(.event == "progress")] as $p
    | [range(1; $p | length) | {images: (($p[.].step - $p[. - 1].step) * $batch),
                                ips: $p[.].images_per_second}]
    | if length == 0 then null
      else (map(.images) | add) / (map(.images / .ips) | add) end' "$1"
}

# The largest GPU peak memory reported by a progress event; null on CPU.
tern_peak_memory() {  # events.jsonl
  jq -s '[.[] | select(.event == "progress") | .gpu_peak_memory_bytes // empty] | max' "$1"
}

free_port() {
  "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts every rank, waits for all; a failed rank stops the others.
run_tern() {  # method ranks run_dir -> "images/s peak_gpu_bytes" (rank 0's events)
  local method="$1" ranks="$2" dir="$3" spec r pid failed=0
  local -a pids=() rank_flags=()
  spec="$(write_spec "$method" "$ranks" "$dir")"
  local master
  master="127.0.0.1:$(free_port)"
  for (( r = 0; r < ranks; r++ )); do
    (( ranks > 1 )) && rank_flags=(--rank "$r" --world-size "$ranks" --master "$master")
    "$trainer" --spec "$spec" --workdir "$dir/work" "${rank_flags[@]}" \
        >"$dir/tern-$r.jsonl" 2>"$dir/tern-$r.log" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do
    if ! wait "$pid"; then
      (( failed )) || kill "${pids[@]}" 2>/dev/null || true
      failed=1
    fi
  done
  if (( failed )); then
    echo "tern-trainer failed for $method at $ranks rank(s); last lines of its logs:" >&2
    for (( r = 0; r < ranks; r++ )); do
      echo "-- rank $r" >&2; tail -n 20 "$dir/tern-$r.log" >&2; tail -n 3 "$dir/tern-$r.jsonl" >&2
    done
    exit 1
  fi
  echo "$(tern_ips "$dir/tern-0.jsonl") $(tern_peak_memory "$dir/tern-0.jsonl")"
}

run_reference() {  # method ranks run_dir -> "images/s peak_gpu_bytes forward_flops_per_image"
  local method="$1" ranks="$2" dir="$3"
  local out="$dir/reference.json"
  local extra=()
  [[ "$bf16" == true ]] && extra+=(--bf16)
  [[ "$channels_last" == true ]] && extra+=(--channels-last)
  [[ "$compile" == true ]] && extra+=(--compile --compile-mode "$compile_mode")
  [[ "$synthetic" == true ]] && extra+=(--synthetic --input-size "$input_size")
  if ! "$python" "$root/bench/reference/reference_trainer.py" --method "$method" --arch "$arch" \
      --width-multiplier "$width" --granularity "$granularity" --data "$data" \
      --max-train "$max_train" --epochs 1 --batch-size "$batch" --steps "$steps" \
      --warmup-steps "$warmup" --threads "$(threads_per_rank "$ranks")" --world-size "$ranks" \
      --device "$device" --no-eval --json "${extra[@]}" >"$out" 2>"$dir/reference.log"; then
    echo "reference trainer failed for $method at $ranks rank(s); last lines of its log:" >&2
    tail -n 20 "$dir/reference.log" >&2; exit 1
  fi
  jq -r '"\(.images_per_second) \(.gpu_peak_memory_bytes) \(.forward_flops_per_image)"' "$out"
}

# "median min max" of the numbers given (nulls dropped); "null" if none.
summarize() {
  printf '%s\n' "$@" | grep -v '^null$' | sort -g | awk '
    { v[NR] = $1 }
    END { if (NR == 0) { print "null"; exit }
          m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
          print m, v[1], v[NR] }'
}

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
peak_tflops=null peak_line=""
if [[ "$flops" == true ]]; then
  dtype=fp32; [[ "$bf16" == true ]] && dtype=bf16
  echo "== matmul rate of the device ($dtype)" >&2
  peak_json="$("$python" "$root/bench/reference/matmul_peak.py" --device "$device" --dtype "$dtype" \
      $([[ "$device" == cpu ]] && echo --size 512 --iters 5))" \
    || { echo "trainer_throughput.sh: matmul_peak.py failed" >&2; exit 1; }
  peak_tflops="$(jq '.tflops' <<<"$peak_json")"
  peak_line="Dense $dtype matmul on this device (same run): $(jq -r '"\(.tflops * 10 | round / 10) TFLOP/s (\(.size)², \(.device))"' <<<"$peak_json")."
fi

# Per "method/ranks": space-separated images/s of every repeat; the last run's
# peak GPU bytes; the model's forward FLOPs per image.
declare -A tern ref tern_mem ref_mem fwd_flops
for (( rep = 1; rep <= repeats; rep++ )); do
  for w in $ranks_list; do
    for m in $methods; do
      dir="$work/$m-r$w-$rep"; mkdir -p "$dir"
      order="tern ref"; (( rep % 2 == 0 )) && order="ref tern"
      for side in $order; do
        echo "== repeat $rep/$repeats, $w rank(s), $m: $side" >&2
        if [[ "$side" == tern ]]; then
          out="$(run_tern "$m" "$w" "$dir")"  # exits the script on failure
          read -r v mem <<<"$out"
          tern[$m/$w]+="$v "; tern_mem[$m/$w]="$mem"
        else
          out="$(run_reference "$m" "$w" "$dir")"
          read -r v mem f <<<"$out"
          ref[$m/$w]+="$v "; ref_mem[$m/$w]="$mem"; fwd_flops[$m/$w]="$f"
        fi
        echo "   $v images/s" >&2
      done
      [[ -n "$keep" ]] || rm -rf "$dir/ckpt" "$dir/work"
    done
  done
done

input="Fashion-MNIST"; [[ "$synthetic" == true ]] && input="synthetic ${input_size}×${input_size}"
echo
echo "Training throughput, $arch x$width on $input, global batch $batch, $threads threads in all" \
     "($workers loader thread(s) per tern-trainer rank), $device (bf16 $bf16, channels_last" \
     "$channels_last, tern-trainer CUDA graph $cuda_graph, reference torch.compile $compile ($compile_mode)); steps $((warmup + 1))-$steps of $steps timed;" \
     "$repeats repeat(s); load average before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg)"
[[ -n "$peak_line" ]] && echo && echo "$peak_line"
echo
header="| method | ranks × threads | tern-trainer img/s, median (min–max) | PyTorch reference img/s, median (min–max) | tern / reference (medians) |"
rule="|---|---|---|---|---|"
if [[ "$device" == cuda ]]; then
  header+=" tern peak GPU MiB | reference peak GPU MiB |"; rule+="---|---|"
fi
if [[ "$flops" == true ]]; then
  header+=" tern TFLOP/s (of peak) | reference TFLOP/s (of peak) |"; rule+="---|---|"
fi
echo "$header"
echo "$rule"
declare -A tern_median ref_median
for w in $ranks_list; do
  for m in $methods; do
    # shellcheck disable=SC2086
    read -r tm tlo thi <<<"$(summarize ${tern[$m/$w]})"
    # shellcheck disable=SC2086
    read -r rm rlo rhi <<<"$(summarize ${ref[$m/$w]})"
    tern_median[$m/$w]="$tm"; ref_median[$m/$w]="$rm"
    awk -v m="$m" -v w="$w" -v t="$(threads_per_rank "$w")" -v tm="$tm" -v tlo="$tlo" -v thi="$thi" \
        -v rm="$rm" -v rlo="$rlo" -v rhi="$rhi" -v cuda="$([[ $device == cuda ]] && echo 1 || echo 0)" \
        -v tmem="${tern_mem[$m/$w]:-null}" -v rmem="${ref_mem[$m/$w]:-null}" \
        -v fl="$flops" -v fwd="${fwd_flops[$m/$w]:-null}" -v peak="$peak_tflops" 'BEGIN {
      tcell = tm == "null" ? "n/a" : sprintf("%.1f (%.1f–%.1f)", tm, tlo, thi)
      rcell = rm == "null" ? "n/a" : sprintf("%.1f (%.1f–%.1f)", rm, rlo, rhi)
      ratio = (tm == "null" || rm == "null" || rm == 0) ? "n/a" : sprintf("%.2f×", tm / rm)
      line = sprintf("| %s | %s × %s | %s | %s | %s |", m, w, t, tcell, rcell, ratio)
      if (cuda) {
        line = line sprintf(" %s | %s |", tmem == "null" ? "n/a" : sprintf("%.0f", tmem / 1048576),
                                          rmem == "null" ? "n/a" : sprintf("%.0f", rmem / 1048576))
      }
      if (fl == "true") {
        for (side = 0; side < 2; side++) {
          ips = side == 0 ? tm : rm
          if (ips == "null" || fwd == "null" || peak == "null") { line = line " n/a |"; continue }
          achieved = 3 * fwd * ips / 1e12
          line = line sprintf(" %.1f (%.1f%%) |", achieved, 100 * achieved / peak)
        }
      }
      print line }'
  done
done
# Ternary step time relative to FP (FP images/s over ternary images/s).
for w in $ranks_list; do
  fp="${tern_median[fp/$w]:-}"; fp_ref="${ref_median[fp/$w]:-}"
  [[ -z "$fp" ]] && continue
  for m in $methods; do
    [[ "$m" == fp ]] && continue
    awk -v m="$m" -v w="$w" -v fp="$fp" -v q="${tern_median[$m/$w]}" -v fpr="$fp_ref" \
        -v qr="${ref_median[$m/$w]}" 'BEGIN {
      t = (fp == "null" || q == "null" || q == 0) ? "n/a" : sprintf("%.2f×", fp / q)
      r = (fpr == "null" || qr == "null" || qr == 0) ? "n/a" : sprintf("%.2f×", fpr / qr)
      printf "\n%s step time / FP step time at %s rank(s): tern-trainer %s, reference %s", m, w, t, r }'
  done
done
echo
echo
echo "Every run (images/s, in repeat order):"
for w in $ranks_list; do
  for m in $methods; do
    echo "- $m, $w rank(s): tern-trainer ${tern[$m/$w]% }; reference ${ref[$m/$w]% }"
  done
done
[[ -n "$keep" ]] && echo && echo "(specs, events and logs kept in $work)"
exit 0

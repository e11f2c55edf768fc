#!/usr/bin/env bash
# Training throughput of tern-trainer next to the PyTorch reference trainer
# (bench/reference/reference_trainer.py): same model, method, batch, threads
# and number of steps; prints a markdown table of images/s and their ratio.
#
#   bench/trainer_throughput.sh [--trainer build/worker/trainer/tern-trainer]
#       [--methods "fp hla"] [--threads 2] [--batch 128] [--steps 40]
#       [--warmup 10] [--width 1.0] [--granularity tensor]
#       [--device cpu|cuda] [--bf16] [--channels-last] [--compile]
#       [--python /usr/bin/python3] [--data /usr/share/datasets/fashion-mnist]
#       [--keep DIR]
#
# How the two are made comparable:
# - Both train ResNet-20 (x --width) on the first steps×batch Fashion-MNIST
#   images for one epoch, so the HLA schedules (FP phase 1 for the first 30%,
#   then ternary) cover the same steps in both.
# - tern-trainer reports images/s per window of events.progress_every_steps
#   (= --warmup) steps; the first window (warm-up, loader start) is dropped and
#   the rest are combined (total images / total time). The reference times
#   the same steps (its --warmup-steps) and skips evaluation; tern-trainer's
#   end-of-run evaluation and export fall outside its progress windows.
# - tern-trainer gets dataset.num_workers = 1 (one loader thread beside the
#   --threads compute threads); the reference prepares batches inline.
# Needs jq. Exit status 1 when a run fails (its log is kept and shown).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
trainer="$root/build/worker/trainer/tern-trainer"
python=/usr/bin/python3
data=/usr/share/datasets/fashion-mnist
methods="fp hla"
threads=2 batch=128 steps=40 warmup=10 width=1.0 granularity=tensor
device=cpu bf16=false channels_last=false compile=false keep=""

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --trainer) trainer="$2"; shift 2 ;;
    --methods) methods="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --width) width="$2"; shift 2 ;;
    --granularity) granularity="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --bf16) bf16=true; shift ;;
    --channels-last) channels_last=true; shift ;;
    --compile) compile=true; shift ;;
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
[[ -x "$trainer" ]] || { echo "trainer_throughput.sh: no tern-trainer at $trainer (--trainer)" >&2; exit 2; }
command -v jq >/dev/null || { echo "trainer_throughput.sh: needs jq" >&2; exit 2; }

if [[ -n "$keep" ]]; then
  work="$keep"; mkdir -p "$work"
else
  work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
fi
max_train=$(( steps * batch ))
device_kind=DEVICE_CPU; [[ "$device" == cuda ]] && device_kind=DEVICE_CUDA

# tern.v1.JobSpec as proto3 JSON (snake_case keys, enum names).
write_spec() {  # method -> spec path
  local method="$1" spec="$work/spec-$1.json"
  jq -n --arg name "throughput-$method" --arg method "METHOD_${method^^}" \
        --arg granularity "GRANULARITY_${granularity^^}" --arg data "$data" \
        --arg device "$device_kind" --arg ckpt "$work/ckpt-$method" \
        --argjson width "$width" --argjson max_train "$max_train" --argjson batch "$batch" \
        --argjson threads "$threads" --argjson warmup "$warmup" \
        --argjson bf16 "$bf16" --argjson channels_last "$channels_last" '{
    name: $name,
    model: {arch: "resnet20", width_multiplier: $width},
    dataset: {kind: "DATASET_IDX", path: $data, max_train_examples: $max_train,
              max_eval_examples: 512, num_workers: 1},
    quantization: {method: $method, granularity: $granularity},
    optimization: {epochs: 1, batch_size: $batch, seed: 0, bf16: $bf16,
                   channels_last: $channels_last},
    resources: {ranks: 1, device_kind: $device, threads_per_rank: $threads},
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

run_tern() {  # method -> images/s
  local method="$1" spec events
  spec="$(write_spec "$method")"
  events="$work/tern-$method.jsonl"
  if ! "$trainer" --spec "$spec" --workdir "$work/work-$method" >"$events" 2>"$work/tern-$method.log"; then
    echo "tern-trainer failed for $method; last lines of its log:" >&2
    tail -n 20 "$work/tern-$method.log" >&2; tail -n 3 "$events" >&2; exit 1
  fi
  tern_ips "$events"
}

run_reference() {  # method -> images/s
  local method="$1"
  local out="$work/reference-$method.json"
  local extra=()
  [[ "$bf16" == true ]] && extra+=(--bf16)
  [[ "$channels_last" == true ]] && extra+=(--channels-last)
  [[ "$compile" == true ]] && extra+=(--compile)
  if ! "$python" "$root/bench/reference/reference_trainer.py" --method "$method" \
      --width-multiplier "$width" --granularity "$granularity" --data "$data" \
      --max-train "$max_train" --epochs 1 --batch-size "$batch" --steps "$steps" \
      --warmup-steps "$warmup" --threads "$threads" --device "$device" --no-eval --json \
      "${extra[@]}" >"$out" 2>"$work/reference-$method.log"; then
    echo "reference trainer failed for $method; last lines of its log:" >&2
    tail -n 20 "$work/reference-$method.log" >&2; exit 1
  fi
  jq '.images_per_second' "$out"
}

declare -A tern ref
for m in $methods; do
  echo "== $m: tern-trainer" >&2; tern[$m]="$(run_tern "$m")"
  echo "== $m: reference" >&2;    ref[$m]="$(run_reference "$m")"
done

echo
echo "Training throughput, ResNet-20 x$width, batch $batch, $threads threads, $device" \
     "(bf16 $bf16); steps $((warmup + 1))-$steps of $steps timed; load average at the end:" \
     "$(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| method | tern-trainer (img/s) | PyTorch reference (img/s) | tern / reference |"
echo "|---|---|---|---|"
for m in $methods; do
  awk -v m="$m" -v t="${tern[$m]}" -v r="${ref[$m]}" 'BEGIN {
    if (t == "null" || r == "null" || r == 0) printf "| %s | %s | %s | n/a |\n", m, t, r;
    else printf "| %s | %.1f | %.1f | %.2f× |\n", m, t, r, t / r }'
done
[[ -n "$keep" ]] && echo && echo "(specs, events and logs kept in $work)"
exit 0

#!/usr/bin/env bash
# Detection accuracy of FP, TWN and HLA (and any other methods) on the
# synthetic COCO shapes set, or on a COCO-format set you point at: one
# tern-trainer run per method and seed, same spec otherwise. Prints a markdown
# table of the re-loaded artifact's COCO AP (IoU 0.50:0.95), AP50 and AP75,
# and the FP twin's AP50, mean ± standard deviation over the seeds.
#
#   bench/detection/detection_results.sh [--trainer build/worker/trainer/tern-trainer]
#       [--synth build/worker/detection/tern-synth-coco] [--data DIR (skip generation)]
#       [--methods "fp twn hla"] [--seeds "1"] [--epochs 6] [--batch 16] [--lr 0.03]
#       [--width 0.5] [--arch resnet20] [--input-size 64] [--threads 1] [--parallel 2]
#       [--keep DIR]
#
# The synthetic set: 1024 train and 128 val images of 64x64 px, 1-3 shapes of
# 4 classes each (tern-synth-coco --seed 5). Needs jq.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
trainer="$root/build/worker/trainer/tern-trainer"
synth="$root/build/worker/detection/tern-synth-coco"
data="" methods="fp twn hla" seeds="1" epochs=6 batch=16 lr=0.03 width=0.5
arch=resnet20 input_size=64 threads=1 parallel=2 keep=""

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --trainer) trainer="$2"; shift 2 ;;
    --synth) synth="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --methods) methods="$2"; shift 2 ;;
    --seeds) seeds="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --lr) lr="$2"; shift 2 ;;
    --width) width="$2"; shift 2 ;;
    --arch) arch="$2"; shift 2 ;;
    --input-size) input_size="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --parallel) parallel="$2"; shift 2 ;;
    --keep) keep="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "detection_results.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
[[ -x "$trainer" ]] || { echo "detection_results.sh: no tern-trainer at $trainer" >&2; exit 2; }
work="${keep:-$(mktemp -d)}"
mkdir -p "$work"
[[ -n "$keep" ]] || trap 'rm -rf "$work"' EXIT
if [[ -z "$data" ]]; then
  data="$work/shapes"
  "$synth" --output "$data" --image-size 64 --train-images 1024 --val-images 128 \
    --max-objects 3 --num-classes 4 --seed 5 >/dev/null
fi

run() {  # method seed
  local dir="$work/$1-s$2"
  mkdir -p "$dir"
  jq -n --arg m "METHOD_${1^^}" --arg data "$data" --arg arch "$arch" \
    --argjson width "$width" --argjson input "$input_size" --argjson epochs "$epochs" \
    --argjson batch "$batch" --argjson lr "$lr" --argjson seed "$2" --argjson threads "$threads" \
    '{name: ("det-" + $m), task: "TASK_DETECTION",
      model: {arch: $arch, width_multiplier: $width},
      dataset: {kind: "DATASET_COCO", path: $data, input_size: $input, num_workers: 1},
      quantization: {method: $m},
      optimization: {epochs: $epochs, batch_size: $batch, lr: $lr, seed: $seed,
                     weight_decay: 0.0001, warmup_epochs: 0.25},
      resources: {threads_per_rank: $threads},
      checkpoint: {every_steps: 100000}, events: {progress_every_steps: 1000}}' > "$dir/spec.json"
  if ! "$trainer" --spec "$dir/spec.json" --workdir "$dir" > "$dir/events.jsonl" 2> "$dir/log"; then
    echo "detection_results.sh: $1 seed $2 failed:" >&2; tail -5 "$dir/log" >&2; return 1
  fi
}

jobs_running=0
for m in $methods; do
  for s in $seeds; do
    run "$m" "$s" &
    jobs_running=$((jobs_running + 1))
    if (( jobs_running >= parallel )); then wait -n; jobs_running=$((jobs_running - 1)); fi
  done
done
wait

stat() {  # jq path over the finished events of one method -> "mean ± sd"
  local m="$1" path="$2"
  for s in $seeds; do tail -1 "$work/$m-s$s/events.jsonl" | jq "$path"; done |
    awk '{x[NR]=$1; t+=$1} END {m=t/NR; v=0; for(i=1;i<=NR;i++) v+=(x[i]-m)^2;
         sd=(NR>1)?sqrt(v/(NR-1)):0; if (NR>1) printf "%.1f ± %.1f", 100*m, 100*sd; else printf "%.1f", 100*m}'
}
echo "| method | AP | AP50 | AP75 | FP-twin AP50 | bits/weight |"
echo "|---|---|---|---|---|---|"
for m in $methods; do
  first=$(echo $seeds | cut -d' ' -f1)
  bits=$(tail -1 "$work/$m-s$first/events.jsonl" | jq '.bits_per_weight')
  echo "| $m | $(stat "$m" .artifact.ap) | $(stat "$m" .artifact.ap50) | $(stat "$m" .artifact.ap75) | $(stat "$m" .fp.ap50) | $bits |"
done

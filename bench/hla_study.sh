#!/usr/bin/env bash
# The HLA recipe study (issue 33; docs/RESULTS.md, "The HLA recipe study"):
# trains a grid of (config, seed) runs with tern-trainer, paired by seed (the
# same initial model, batch order and validation split for every config of a
# seed), `--parallel` at a time, writes study.csv (bench/hla_study.py csv) and
# prints the paired differences and verdicts of the decision rule stated in
# bench/hla_study.py BEFORE any run (bench/hla_study.py analyze).
#
#   bench/hla_study.sh [--grid scratch|finetune] [--cpu-smoke]
#       [--task classification|detection]
#       [--trainer build/worker/trainer/tern-trainer] [--device cpu|cuda]
#       [--seeds "0 1 2"] [--epochs 15] [--finetune-epochs 3] [--batch 256]
#       [--lr 0.1] [--finetune-lr 0.01] [--finetune-wd 1e-4] [--width 1.0]
#       [--arch resnet20] [--all-ternary] [--max-train 0] [--max-eval 0]
#       [--val-images 5000] [--parallel 1] [--threads 2] [--workers 2]
#       [--data /usr/share/datasets/fashion-mnist] [--out DIR]
#       [--configs "NAME ..."]
#       detection: [--synth build/worker/detection/tern-synth-coco]
#       [--synth-train 2048] [--synth-test 512] [--input-size 64]
#
# Grids (full budget: HLA.md section 6's recipe, for a GPU):
#   scratch   FP, TWN, TTQ, LAT, and HLA with lambda_max in {0, 1e-2, 1e-1, 1}
#             x switch point (reg_fraction) in {0.3, 0.5, 0.7}, from random
#             weights, --epochs each (HLA's FP phase inside the budget).
#   finetune  FP trained for --epochs first (the scratch grid's FP runs when
#             --out already holds them), then TWN, TTQ, LAT, HLA (lambda 1e-1,
#             switch 0.3), HLA without the FP phase (lambda 1e-1, switch 0) and
#             HLA without the regularizer (and so without the FP phase), each
#             starting from FP seed s's exported model (model.init_from) for
#             --finetune-epochs at --finetune-lr (cosine) and weight decay
#             --finetune-wd. The FP runs are a grid of their own there
#             ("finetune-base"): starting points, not rivals.
# --configs runs only the named configs of the grid (their names: the run
# directories' prefixes, e.g. "fp twn hla-l1e-1-s0.3"); the finetune grid
# trains FP first all the same. A screening run with less time than the grid.
# Harder settings: the same grids with --all-ternary, --width 0.5 or
# --arch resnet56 (use a separate --out per setting).
# --cpu-smoke: a mechanics check for a 2-core machine (under 15 minutes):
# FP, TWN, HLA lambda in {0, 1e-1} at switch 0.5, seeds 0 1, 2 epochs on 4000
# training images (500 of them held out for validation), 1000 test images,
# ResNet-20 x0.5, batch 128, lr 0.05, a progress line (and regularizer sample)
# every 4 steps; options after --cpu-smoke override these. It decides nothing
# (2 seeds).
# Progress lines, and with them the regularizer's samples, come every 50 steps
# otherwise.
# --task detection: CenterNet (docs/METHOD.md) on --arch (say resnet18) with
# the metric AP50 instead of top-1. --data is a COCO-format directory; without
# it the synthetic shapes set is generated into --out/shapes (tern-synth-coco
# --seed 5: --synth-train training images, whose validation split is held out
# of them, and --synth-test val-annotation images, the test split, of 64 px,
# 1-3 shapes of 4 classes). Detection defaults: --batch 16, --lr 0.03,
# weight decay 1e-4, warm-up 0.25 epochs, augmentation on.
# The validation split is --val-images of the training images (after
# --max-train), chosen from the seed. Every run is rank 0 of world size 1; on
# CUDA all runs share GPU 0. Needs python3. Exit 1 when a run fails.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
trainer="$root/build/worker/trainer/tern-trainer"
grid=scratch device=cpu seeds="0 1 2" epochs=15 finetune_epochs=3 batch=256 lr=0.1
finetune_lr=0.01 finetune_wd=1e-4 width=1.0 arch=resnet20 all_ternary=false
max_train=0 max_eval=0 val_images=5000 parallel=1 threads=2 workers=2
data="" out="" smoke=false progress_every=50 only="" task=classification
synth="$root/build/worker/detection/tern-synth-coco" synth_train=2048 synth_test=512 input_size=64
batch_set=false lr_set=false
usage() { sed -n '2,55p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --grid) grid="$2"; shift 2 ;;
    --cpu-smoke)  # the smoke budget; options after it override it
      smoke=true seeds="0 1" epochs=2 batch=128 lr=0.05 width=0.5 max_train=4000 max_eval=1000
      val_images=500 workers=1 progress_every=4
      shift ;;
    --trainer) trainer="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --seeds) seeds="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --finetune-epochs) finetune_epochs="$2"; shift 2 ;;
    --batch) batch="$2" batch_set=true; shift 2 ;;
    --lr) lr="$2" lr_set=true; shift 2 ;;
    --finetune-lr) finetune_lr="$2"; shift 2 ;;
    --finetune-wd) finetune_wd="$2"; shift 2 ;;
    --width) width="$2"; shift 2 ;;
    --arch) arch="$2"; shift 2 ;;
    --all-ternary) all_ternary=true; shift ;;
    --max-train) max_train="$2"; shift 2 ;;
    --max-eval) max_eval="$2"; shift 2 ;;
    --val-images) val_images="$2"; shift 2 ;;
    --parallel) parallel="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --configs) only="$2"; shift 2 ;;
    --task) task="$2"; shift 2 ;;
    --synth) synth="$2"; shift 2 ;;
    --synth-train) synth_train="$2"; shift 2 ;;
    --synth-test) synth_test="$2"; shift 2 ;;
    --input-size) input_size="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "hla_study.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
[[ -x "$trainer" ]] || { echo "hla_study.sh: no tern-trainer at $trainer (--trainer)" >&2; exit 2; }
[[ "$grid" == scratch || "$grid" == finetune ]] || { echo "hla_study.sh: --grid scratch or finetune" >&2; exit 2; }
[[ "$device" == cpu || "$device" == cuda ]] || { echo "hla_study.sh: --device cpu or cuda" >&2; exit 2; }
(( parallel >= 1 )) || { echo "hla_study.sh: --parallel must be >= 1" >&2; exit 2; }
[[ "$task" == classification || "$task" == detection ]] || {
  echo "hla_study.sh: --task classification or detection" >&2; exit 2; }
suffix=""
[[ "$smoke" == true ]] && suffix=-smoke
[[ "$task" == detection ]] && suffix="-detection$suffix"
out="${out:-$root/build/hla-study-$grid$suffix}"
mkdir -p "$out"
if [[ "$task" == detection ]]; then
  [[ "$batch_set" == true ]] || batch=16
  [[ "$lr_set" == true ]] || lr=0.03
  if [[ -z "$data" ]]; then
    data="$out/shapes"
    if [[ ! -f "$data/annotations/instances_val.json" ]]; then
      [[ -x "$synth" ]] || { echo "hla_study.sh: no tern-synth-coco at $synth (--synth)" >&2; exit 2; }
      "$synth" --output "$data" --image-size 64 --train-images "$synth_train" \
        --val-images "$synth_test" --max-objects 3 --num-classes 4 --seed 5 >/dev/null
    fi
    images=$synth_train
  else
    images=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))['images']))" \
      "$data/annotations/instances_train.json")
  fi
  train_total=$(( max_train > 0 && max_train < images ? max_train : images ))
else
  data="${data:-/usr/share/datasets/fashion-mnist}"
  train_total=$(( max_train > 0 ? max_train : 60000 ))
fi
# The validation fraction that holds out --val-images of the training images.
val_fraction=$(python3 -c "print($val_images / $train_total)")

# config name, method, lambda_max ("-" = default), reg_fraction ("-" = default)
configs=()
if [[ "$smoke" == true ]]; then
  configs=("fp fp - -" "twn twn - -" "hla-l0-s0.5 hla 0 0.5" "hla-l1e-1-s0.5 hla 0.1 0.5")
elif [[ "$grid" == scratch ]]; then
  configs=("fp fp - -" "twn twn - -" "ttq ttq - -" "lat lat - -")
  for l in 0 1e-2 1e-1 1; do
    for s in 0.3 0.5 0.7; do configs+=("hla-l$l-s$s hla $l $s"); done
  done
else
  configs=("twn twn - -" "ttq ttq - -" "lat lat - -" "hla-l1e-1-s0.3 hla 0.1 0.3"
           "hla-l1e-1-s0 hla 0.1 0" "hla_no_regularizer hla_no_regularizer - -")
fi
if [[ -n "$only" ]]; then
  known=""
  for c in "${configs[@]}"; do known+=" ${c%% *}"; done
  picked=()
  for name in $only; do
    [[ " $known " == *" $name "* ]] || {
      echo "hla_study.sh: --configs: no config '$name' in the $grid grid (it has:$known)" >&2; exit 2; }
    for c in "${configs[@]}"; do
      if [[ "${c%% *}" == "$name" ]]; then picked+=("$c"); fi
    done
  done
  configs=("${picked[@]}")
fi

write_spec() {  # dir config method lambda switch seed init_from
  python3 - "$@" <<PY
import json, sys
d, config, method, lam, switch, seed, init_from = sys.argv[1:8]
finetune = bool(init_from)
spec = {
  "name": f"hla-study-{config}-seed{seed}",
  "model": {"arch": "$arch", "width_multiplier": $width},
  "dataset": {"kind": "DATASET_IDX", "path": "$data", "max_train_examples": $max_train,
              "max_eval_examples": $max_eval, "val_fraction": $val_fraction,
              "num_workers": $workers},
  "quantization": {"method": "METHOD_" + method.upper()},
  "optimization": {"epochs": $finetune_epochs if finetune else $epochs, "batch_size": $batch,
                   "lr": $finetune_lr if finetune else $lr, "seed": int(seed)},
  "resources": {"ranks": 1, "device_kind": "DEVICE_${device^^}", "threads_per_rank": $threads},
  "checkpoint": {"every_steps": 1000000, "directory": d + "/ckpt"},
  "events": {"progress_every_steps": $progress_every},
}
if finetune:
    spec["model"]["init_from"] = init_from
    spec["optimization"]["weight_decay"] = $finetune_wd
if lam != "-":
    spec["quantization"]["lambda_max"] = float(lam)
if switch != "-":
    spec["quantization"]["reg_fraction"] = float(switch)
if "$all_ternary" == "true":
    spec["quantization"].update({"keep_first_fp": False, "keep_last_fp": False})
if "$task" == "detection":
    spec["task"] = "TASK_DETECTION"
    spec["dataset"].update({"kind": "DATASET_COCO", "input_size": $input_size})
    spec["optimization"].setdefault("weight_decay", 1e-4)
    spec["optimization"]["warmup_epochs"] = 0 if finetune else 0.25
json.dump(spec, open(d + "/spec.json", "w"), indent=1)
# The finetune grid's FP runs are its starting points, not rivals: a grid of
# their own in the analysis.
grid = "$grid" + ("-detection" if "$task" == "detection" else "") + \
    ("-smoke" if "$smoke" == "true" else "")
if "$grid" == "finetune" and not finetune:
    grid += "-base"
json.dump({"grid": grid, "config": config,
           "method": method, "lambda": "" if lam == "-" else lam,
           "switch": "" if switch == "-" else switch, "seed": seed,
           "epochs": spec["optimization"]["epochs"]}, open(d + "/run.json", "w"))
PY
}

run_one() {  # config method lambda switch seed init_from
  local dir="$out/$1-seed$5"
  if [[ -f "$dir/events.jsonl" ]] && grep -q '"event":"finished"' "$dir/events.jsonl"; then
    echo "== $1 seed $5: already finished in $dir" >&2
    return 0
  fi
  rm -rf "$dir" && mkdir -p "$dir"
  write_spec "$dir" "$@"
  if ! "$trainer" --spec "$dir/spec.json" --workdir "$dir/work" >"$dir/events.jsonl" 2>"$dir/stderr.log"; then
    echo "hla_study.sh: $1 seed $5 failed; last lines of its log:" >&2
    tail -n 20 "$dir/stderr.log" >&2
    return 1
  fi
  echo "== $1 seed $5 done" >&2
}

failed=0
run_all() {  # init_from_fp(true|false) config...
  local from_fp="$1"; shift
  local -a pids=()
  for c in "$@"; do
    read -r name method lam switch <<<"$c"
    for s in $seeds; do
      while (( $(jobs -rp | wc -l) >= parallel )); do wait -n || failed=1; done
      local init=""
      [[ "$from_fp" == true ]] && init="$out/fp-seed$s/work/model.tern"
      echo "== $name seed $s" >&2
      run_one "$name" "$method" "$lam" "$switch" "$s" "$init" & pids+=($!)
    done
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  (( failed == 0 )) || exit 1
}
start=$(date +%s)
if [[ "$grid" == finetune ]]; then
  run_all false "fp fp - -"
  run_all true "${configs[@]}"
else
  run_all false "${configs[@]}"
fi
echo "== all runs done in $(( $(date +%s) - start )) s; results in $out" >&2
python3 "$root/bench/hla_study.py" csv "$out" >"$out/study.csv"
python3 "$root/bench/hla_study.py" analyze "$out/study.csv"

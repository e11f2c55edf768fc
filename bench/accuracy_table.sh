#!/usr/bin/env bash
# The HLA.md section 5 ablation grid on Fashion-MNIST: trains every (method,
# seed) with tern-trainer, `--parallel` runs at a time, and prints the
# docs/RESULTS.md table: ternary top-1 of the exported .tern (re-loaded),
# mean ± sample std over seeds, the gap to FP seed by seed, per-seed values,
# share of zeros in the ternary layers, bits per weight, wall time.
#
#   bench/accuracy_table.sh [--trainer build/worker/trainer/tern-trainer]
#       [--methods "fp twn ttq lat hla_no_regularizer hla_no_rescale hla"]
#       [--seeds "0 1 2"] [--epochs 15] [--batch 256] [--lr 0.1]
#       [--warmup-epochs 0] [--width 1.0] [--max-train 0] [--max-eval 0]
#       [--val-fraction 0] [--all-ternary] [--init-from-fp] [--device cpu|cuda]
#       [--parallel 1] [--threads 2] [--workers 2]
#       [--data /usr/share/datasets/fashion-mnist] [--keep DIR]
#
# Defaults are HLA.md section 6's full budget: ResNet-20, 15 epochs, batch
# 256, SGD Nesterov lr 0.1 cosine, wd 5e-4, first conv and classifier FP
# (--all-ternary: every layer ternary); bf16 + channels_last on CUDA.
# --init-from-fp: the FP runs go first and every other method of seed s starts
# from FP seed s's exported model (model.init_from), with the same epochs on
# top: ternary fine-tuning of a trained FP model, as ternary methods are
# mostly used (HLA.md section 6). Every
# run is rank 0 of world size 1; on CUDA all runs share GPU 0 (small models
# leave it mostly idle, so --parallel 4..7 raises throughput). Needs python3.
# Exit status 1 when a run fails (its log is shown).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
trainer="$root/build/worker/trainer/tern-trainer"
methods="fp twn ttq lat hla_no_regularizer hla_no_rescale hla" seeds="0 1 2"
epochs=15 batch=256 lr=0.1 warmup_epochs=0 width=1.0 max_train=0 max_eval=0 val_fraction=0
all_ternary=false init_from_fp=false device=cpu parallel=1 threads=2 workers=2
data=/usr/share/datasets/fashion-mnist keep=""
usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --trainer) trainer="$2"; shift 2 ;;
    --methods) methods="$2"; shift 2 ;;
    --seeds) seeds="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --lr) lr="$2"; shift 2 ;;
    --warmup-epochs) warmup_epochs="$2"; shift 2 ;;
    --width) width="$2"; shift 2 ;;
    --max-train) max_train="$2"; shift 2 ;;
    --max-eval) max_eval="$2"; shift 2 ;;
    --val-fraction) val_fraction="$2"; shift 2 ;;
    --all-ternary) all_ternary=true; shift ;;
    --init-from-fp) init_from_fp=true; shift ;;
    --device) device="$2"; shift 2 ;;
    --parallel) parallel="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --keep) keep="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "accuracy_table.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
[[ -x "$trainer" ]] || { echo "accuracy_table.sh: no tern-trainer at $trainer (--trainer)" >&2; exit 2; }
(( parallel >= 1 )) || { echo "accuracy_table.sh: --parallel must be >= 1" >&2; exit 2; }
if [[ "$init_from_fp" == true && " $methods " != *" fp "* ]]; then
  echo "accuracy_table.sh: --init-from-fp needs fp among --methods" >&2; exit 2
fi
[[ "$device" == cpu || "$device" == cuda ]] || { echo "accuracy_table.sh: --device cpu or cuda" >&2; exit 2; }
if [[ -n "$keep" ]]; then
  work="$keep"; mkdir -p "$work"
else
  work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
fi

write_spec() {  # method seed dir
  python3 - "$@" <<PY
import json, sys
method, seed, d, init_from = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
spec = {
  "name": f"accuracy-{method}-seed{seed}",
  "model": {"arch": "resnet20", "width_multiplier": $width},
  "dataset": {"kind": "DATASET_IDX", "path": "$data", "max_train_examples": $max_train,
              "max_eval_examples": $max_eval, "val_fraction": $val_fraction, "num_workers": $workers},
  "quantization": {"method": "METHOD_" + method.upper()},
  "optimization": {"epochs": $epochs, "batch_size": $batch, "lr": $lr, "seed": seed,
                   "warmup_epochs": $warmup_epochs},
  "resources": {"ranks": 1, "device_kind": "DEVICE_${device^^}", "threads_per_rank": $threads},
  "checkpoint": {"every_steps": 1000000, "directory": d + "/ckpt"},
  "events": {"progress_every_steps": 100},
}
if init_from:
    spec["model"]["init_from"] = init_from
if "$all_ternary" == "true":
    spec["quantization"].update({"keep_first_fp": False, "keep_last_fp": False})
json.dump(spec, open(d + "/spec.json", "w"), indent=1)
PY
}

run_one() {  # method seed
  local dir="$work/$1-seed$2" init=""
  rm -rf "$dir" && mkdir -p "$dir"
  [[ "$init_from_fp" == true && "$1" != fp ]] && init="$work/fp-seed$2/work/model.tern"
  write_spec "$1" "$2" "$dir" "$init"
  if ! "$trainer" --spec "$dir/spec.json" --workdir "$dir/work" >"$dir/events.jsonl" 2>"$dir/stderr.log"; then
    echo "accuracy_table.sh: $1 seed $2 failed; last lines of its log:" >&2
    tail -n 20 "$dir/stderr.log" >&2
    return 1
  fi
  # One line per finished run, so a grid cut short still shows what it measured.
  echo "== $1 seed $2 done: $(python3 -c 'import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e.get("event") == "finished":
        top1, wall = 100 * e["artifact"]["top1"], e["wall_seconds"]
        print(f"top-1 {top1:.2f}, {wall:.0f} s")' "$dir/events.jsonl" 2>/dev/null)" >&2
}

start=$(date +%s)
failed=0
run_all() {  # methods
  local -a pids=()
  for m in "$@"; do
    for s in $seeds; do
      while (( $(jobs -rp | wc -l) >= parallel )); do wait -n || failed=1; done
      echo "== $m seed $s" >&2
      run_one "$m" "$s" & pids+=($!)
    done
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  (( failed == 0 )) || exit 1
}
if [[ "$init_from_fp" == true ]]; then
  run_all fp
  # shellcheck disable=SC2046
  run_all $(tr ' ' '\n' <<<"$methods" | grep -vx fp | grep . || true)
else
  # shellcheck disable=SC2086
  run_all $methods
fi
elapsed=$(( $(date +%s) - start ))

python3 - "$work" "$methods" "$seeds" <<PY
import json, statistics, sys
work, methods, seeds = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
def finished(m, s):
    for line in open(f"{work}/{m}-seed{s}/events.jsonl"):
        e = json.loads(line)
        if e.get("event") == "finished":
            return e
    raise SystemExit(f"{m} seed {s}: no finished event")
def ms(v):
    return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"
def bits(e):  # FP exports report 0 ternary bits
    return f"{e['bits_per_weight']:.2f}" if e["bits_per_weight"] > 0 else "32"
runs = {m: [finished(m, s) for s in seeds] for m in methods}
top1 = {m: [100 * e["artifact"]["top1"] for e in runs[m]] for m in methods}
examples = runs[methods[0]][0]["artifact"].get("examples", "?")
print(f"Fashion-MNIST test top-1 (%) of the re-loaded .tern, {examples} test images; ResNet-20 x$width, "
      f"$epochs epochs, batch $batch, lr $lr, {'every layer ternary' if '$all_ternary' == 'true' else 'first conv and classifier FP'}"
      f"{', ternary runs start from the FP run of their seed' if '$init_from_fp' == 'true' else ''}; "
      f"seeds {', '.join(seeds)}; $device, {$parallel} run(s) at a time, $elapsed s in all")
print()
print("| method | ternary top-1 (%) | gap to FP (pt) | per seed | sparsity | bits/weight | time per run (s) |")
print("|---|---|---|---|---|---|---|")
for m in methods:
    gap = "n/a"
    if "fp" in top1:
        gap = "0" if m == "fp" else ms([f - t for f, t in zip(top1["fp"], top1[m])])
    layers = [l for l in runs[m][0]["layers"] if l["quantized"]]
    zeros = sum(l["sparsity"] * l["numel"] for l in layers)
    count = sum(l["numel"] for l in layers)
    sparsity = f"{100 * zeros / count:.1f}%" if count else "0"
    seconds = statistics.mean(e["wall_seconds"] for e in runs[m])
    print(f"| {m} | {ms(top1[m])} | {gap} | {', '.join(f'{v:.2f}' for v in top1[m])} | {sparsity} "
          f"| {bits(runs[m][0])} | {seconds:.0f} |")
PY

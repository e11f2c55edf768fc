#!/usr/bin/env bash
# Tiny runs of the benchmark scripts; fails when a table lacks a row or column.
# Exit 77 (skipped) without Fashion-MNIST or the reference's PyTorch.
# usage: bench_scripts_test.sh TERN_TRAINER
set -euo pipefail
trainer="${1:?usage: bench_scripts_test.sh TERN_TRAINER}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
data=/usr/share/datasets/fashion-mnist
[[ -d "$data" ]] || { echo "SKIPPED: no Fashion-MNIST at $data"; exit 77; }
/usr/bin/python3 -c 'import torch, numpy' 2>/dev/null || { echo "SKIPPED: no python3-torch"; exit 77; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
expect() {  # file pattern what
  grep -qE "$2" "$1" || { cat "$1"; fail "$3"; }
}

# The accuracy grid, FP then HLA started from the FP run of each seed.
bash "$root/bench/accuracy_table.sh" --trainer "$trainer" --methods "fp hla" --seeds "0 1" \
  --epochs 1 --max-train 256 --max-eval 64 --batch 64 --width 0.25 --threads 1 --workers 1 \
  --parallel 2 --init-from-fp --keep "$work/acc" >"$work/acc.md" 2>"$work/acc.log" \
  || { tail -20 "$work/acc.log"; fail "accuracy_table.sh failed"; }
expect "$work/acc.md" '^\| fp \| [0-9.]+ ± [0-9.]+ \| 0 \| [0-9.]+, [0-9.]+ \| 0 \| 32 \|' "no FP row"
expect "$work/acc.md" '^\| hla \| [0-9.]+ ± [0-9.]+ \| -?[0-9.]+ ± [0-9.]+ \| .* \| 2\.00 \|' "no HLA row"
expect "$work/acc.md" 'start from the FP run' "the header does not say the runs started from FP"
jq -s -e 'map(select(.event == "started"))[0].init_from.loaded > 0' "$work/acc/hla-seed1/events.jsonl" >/dev/null \
  || fail "HLA seed 1 did not start from the FP model"

# The HLA study's smoke grid, made tiny: paired runs, the CSV, the rule's output.
bash "$root/bench/hla_study.sh" --cpu-smoke --trainer "$trainer" --max-train 320 --val-images 64 \
  --max-eval 64 --batch 32 --width 0.25 --epochs 1 --threads 1 --out "$work/study" \
  >"$work/study.txt" 2>"$work/study.log" || { tail -20 "$work/study.log"; fail "hla_study.sh failed"; }
[[ $(wc -l <"$work/study/study.csv") -eq 9 ]] || { cat "$work/study/study.csv"; fail "not 8 runs in study.csv"; }
expect "$work/study.txt" '^DECISION RULE' "the analysis does not state the rule"
expect "$work/study.txt" 'hla-l1e-1-s0.5 vs hla-l0-s0.5: s0 [-+][0-9.]+, s1 [-+][0-9.]+; .*NO VERDICT \(2 seeds < 3\)' \
  "no paired lambda comparison"
expect "$work/study.txt" 'at the switch: FP [0-9.]+ -> ternary [0-9.]+ -> after BN [0-9.]+' "no switch diagnostics"
grep -q "unpaired seeds \\['" "$work/study.txt" && fail "paired runs were reported unpaired"

# The fine-tuning grid cut to three configs (--configs): its FP starting
# points are a grid of their own, and HLA without the FP phase is paired with
# HLA without the regularizer as lambda > 0 against lambda = 0.
bash "$root/bench/hla_study.sh" --grid finetune --configs "twn hla-l1e-1-s0 hla_no_regularizer" \
  --trainer "$trainer" --seeds "0 1" --epochs 1 --finetune-epochs 1 --max-train 320 \
  --val-images 64 --max-eval 64 --batch 32 --width 0.25 --threads 1 --workers 1 --parallel 2 \
  --out "$work/ft" >"$work/ft.txt" 2>"$work/ft.log" || { tail -20 "$work/ft.log"; fail "finetune grid failed"; }
[[ $(wc -l <"$work/ft/study.csv") -eq 9 ]] || { cat "$work/ft/study.csv"; fail "not 8 runs in the finetune CSV"; }
expect "$work/ft.txt" '^== grid finetune-base:' "the FP starting points are not a grid of their own"
expect "$work/ft.txt" 'hla-l1e-1-s0 vs hla_no_regularizer: s0 [-+][0-9.]+, s1 [-+][0-9.]+;' \
  "HLA without the FP phase is not paired with HLA without the regularizer"
jq -s -e 'map(select(.event == "started"))[0].init_from.loaded > 0' \
  "$work/ft/twn-seed1/events.jsonl" >/dev/null || fail "TWN seed 1 did not start from the FP model"
if bash "$root/bench/hla_study.sh" --configs "fp nope" --trainer "$trainer" --out "$work/bad" \
     2>"$work/bad.log"; then
  fail "an unknown config was accepted"
fi
expect "$work/bad.log" "no config 'nope' in the scratch grid" "the unknown config is not named"

# Throughput: ResNet-18 on synthetic 32×32 input, with FLOP/s against the matmul rate.
bash "$root/bench/trainer_throughput.sh" --trainer "$trainer" --methods "fp hla" --arch resnet18 \
  --synthetic --input-size 32 --width 0.125 --threads 2 --batch 8 --steps 4 --warmup 1 --flops \
  >"$work/tp.md" 2>"$work/tp.log" || { tail -20 "$work/tp.log"; fail "trainer_throughput.sh failed"; }
expect "$work/tp.md" 'resnet18 x0.125 on synthetic 32×32' "the header does not name the model and input"
expect "$work/tp.md" 'TFLOP/s \(of peak\)' "no FLOP/s columns"
expect "$work/tp.md" '^\| fp \| 1 × 2 \| [0-9.]+ \(' "no FP row with images/s"
expect "$work/tp.md" '^hla step time / FP step time at 1 rank\(s\): tern-trainer [0-9.]+×, reference [0-9.]+×' \
  "no ternary/FP step-time line"
echo "PASS"

#!/usr/bin/env bash
# The README's run command: installs, builds, then runs the service demo
# (scripts/demo.sh): ternd + one tern-agent with 2 CPU slots on loopback, two
# 2-rank ResNet-20 jobs on Fashion-MNIST (FP and HLA ternary) submitted with
# ternctl, progress, artifacts fetched, FP vs ternary accuracy printed,
# everything shut down. `tern-trainer compare` runs the same comparison
# without the service (and the full ablation grid: see docs/RESULTS.md).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/build.sh" >&2
exec "$root/scripts/demo.sh" "$@"

#!/usr/bin/env bash
# The README's run command: installs, builds, then trains a half-width
# ResNet-20 on Fashion-MNIST as full precision, TWN and HLA with the same seed
# and budget, and prints FP vs ternary accuracy read back from each exported
# .tern artifact. Extra arguments go to `tern-trainer compare` (for example
# --methods fp,twn,ttq,lat,hla --epochs 3 --max-train 60000).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/build.sh" >&2
build_dir="${TERN_BUILD_DIR:-$root/build}"
workdir="${TERN_DEMO_DIR:-$root/build/demo}"
exec "$build_dir/worker/trainer/tern-trainer" compare --workdir "$workdir" "$@"

#!/usr/bin/env bash
# Coverage-guided fuzzing with libFuzzer: builds the fuzz targets (fuzz/)
# with clang, -fsanitize=fuzzer, AddressSanitizer and UndefinedBehaviorSanitizer
# into build-fuzz/, then runs each target for TERN_FUZZ_SECONDS (default 60)
# from its built-in seeds plus what earlier runs found (build-fuzz/corpus/).
#   scripts/fuzz.sh                      # every target
#   scripts/fuzz.sh image_fuzz coco_fuzz # some
# A finding is saved by libFuzzer as build-fuzz/findings/<target>/crash-*;
# replay it with any build of the target: build/fuzz/<target> FILE.
# Installs clang through scripts/install-deps.sh when it is missing. Not part
# of CI (the quick mutation runs of the same targets are, via ctest).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/install-deps.sh" clang libclang-rt-14-dev
build_dir="${TERN_FUZZ_BUILD_DIR:-$root/build-fuzz}"
seconds="${TERN_FUZZ_SECONDS:-60}"
export CCACHE_BASEDIR="$root" CCACHE_NOHASHDIR=1

flags="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined,fuzzer-no-link"
CC=clang CXX=clang++ cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Debug \
  -DTERN_WITH_TORCH=OFF -DTERN_LIBFUZZER=ON -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cd "$root/fuzz" && ls ./*_fuzz.cc | sed 's|^\./||; s|\.cc$||')
fi
seed_targets=()
for t in "${targets[@]}"; do seed_targets+=("$t" "${t}_seeds"); done
cmake --build "$build_dir" -j "${TERN_JOBS:-$(nproc)}" --target "${seed_targets[@]}"

export ASAN_OPTIONS="detect_leaks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
failed=()
for t in "${targets[@]}"; do
  corpus="$build_dir/corpus/$t" findings="$build_dir/findings/$t"
  mkdir -p "$corpus" "$findings"
  "$build_dir/fuzz/${t}_seeds" --write-seeds "$corpus" >/dev/null
  echo "== $t: ${seconds} s"
  regressions=()
  [[ -d "$root/fuzz/regressions/$t" ]] && regressions=("$root/fuzz/regressions/$t")
  if ! "$build_dir/fuzz/$t" "$corpus" "${regressions[@]}" -max_total_time="$seconds" \
       -rss_limit_mb=4096 \
       -artifact_prefix="$findings/" -print_final_stats=1 2>"$build_dir/$t.log"; then
    failed+=("$t")
  fi
  grep -E '^(stat::number_of_executed_units|stat::new_units_added|#[0-9]+ +DONE)' \
    "$build_dir/$t.log" || true
done
if ((${#failed[@]} > 0)); then
  echo "fuzz.sh: findings in ${failed[*]}: see $build_dir/<target>.log and $build_dir/findings/" >&2
  exit 1
fi
echo "fuzz.sh: no findings in ${targets[*]}"

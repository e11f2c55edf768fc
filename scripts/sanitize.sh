#!/usr/bin/env bash
# Builds the LibTorch-free targets (common, scheduler, proto, server, agent,
# cli, detection data, the fuzz targets) with AddressSanitizer and
# UndefinedBehaviorSanitizer into build-asan/ and runs their tests there,
# the end-to-end scripts included: ternd, tern-agent and ternctl run
# instrumented, and each must exit 0 after SIGTERM, so a leak or an error
# found at exit fails the test. The trainer they start is the normal
# build's (LibTorch is not instrumented; run scripts/build.sh first), found
# at $TERN_BUILD_DIR/worker/trainer/tern-trainer; without it the tests that
# need it are left out, and the script says so.
# Environment: TERN_SANITIZE_BUILD_DIR (default build-asan), TERN_BUILD_DIR
# (default build), TERN_JOBS, TERN_TEST_JOBS; extra arguments go to ctest.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build_dir="${TERN_SANITIZE_BUILD_DIR:-$root/build-asan}"
main_build="${TERN_BUILD_DIR:-$root/build}"

flags="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all"
TERN_BUILD_DIR="$build_dir" TERN_BUILD_TYPE=Debug "$root/scripts/build.sh" -DTERN_WITH_TORCH=OFF \
  -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined"

# Deployment checks (rendered manifests, images, Compose) and the multi-host
# network tests run once, in scripts/test.sh: under the sanitizers they would
# repeat minutes of the same work without instrumenting anything new.
ctest_args=(-LE 'deploy|container|multihost')
# The submission load test at a third of its size: the same code paths under
# the sanitizers, without minutes of instrumented throughput.
export TERN_SUBMIT_LOAD_CLIENTS="${TERN_SUBMIT_LOAD_CLIENTS:-32}"
export TERN_SUBMIT_LOAD_JOBS="${TERN_SUBMIT_LOAD_JOBS:-500}"
trainer="$main_build/worker/trainer/tern-trainer"
if [[ -x "$trainer" ]]; then
  # The e2e scripts look for every binary in the build they are given.
  mkdir -p "$build_dir/worker/trainer"
  ln -sfn "$trainer" "$build_dir/worker/trainer/tern-trainer"
  export TERN_TRAINER_BINARY="$trainer"
else
  echo "sanitize.sh: no tern-trainer at $trainer (run scripts/build.sh first):" \
       "leaving out the end-to-end tests that need it" >&2
  ctest_args+=(-E '^E2e')
fi

# Leaks are errors; UBSan stops at the first report (-fno-sanitize-recover).
# UBSan aborts (not exits) so that the fuzz driver's SIGABRT handler saves the input.
asan="detect_leaks=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1"
export ASAN_OPTIONS="$asan${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
# Third-party leaks at thread exit (scripts/lsan.supp says which, and why).
export LSAN_OPTIONS="suppressions=$root/scripts/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:abort_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
# Only the programs of scripts/tools.list, as in scripts/test.sh.
"$root/scripts/check-tools.sh" --link "$build_dir/tool-path"
cd "$build_dir"
PATH="$build_dir/tool-path" ctest --output-on-failure -j "${TERN_TEST_JOBS:-2}" "${ctest_args[@]}" "$@"

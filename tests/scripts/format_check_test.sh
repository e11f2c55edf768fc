#!/usr/bin/env bash
# scripts/format-check.sh in a scratch repository: only lines changed since
# the base are checked (old unformatted code is left alone), a badly formatted
# changed line fails naming its file, --fix formats exactly those lines, a
# moved file counts only its edited lines, CUDA sources (.cu) count too, and a
# base that is no commit is a usage error. Skips (77) without clang-format,
# which .ci/run installs.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
if ! command -v clang-format >/dev/null 2>&1; then
  echo "SKIP: clang-format not installed (scripts/install-deps.sh clang-format)"
  exit 77
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/tern-format.XXXXXX")"
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

cd "$work"
git init -q .
git config user.email test@example.com
git config user.name test
mkdir -p scripts src
cp "$root/scripts/format-check.sh" scripts/
cp "$root/.clang-format" .
# Unformatted old code: two statements on a line, odd spacing.
printf 'int old_code( ) {int a=1;return a ;}\n' > src/old.cc
printf 'int moved( ) {return 2 ;}\n\nint keep() { return 3; }\n' > src/moved.cc
git add -A && git commit -qm base
base="$(git rev-parse HEAD)"
printf '# base\n%s\n' "$base" > scripts/format-base

# 1. Nothing changed: clean, although old.cc is unformatted.
bash scripts/format-check.sh >/dev/null 2>&1 || fail "unchanged tree reported"

# 2. A formatted new line passes; an unformatted one fails naming its file.
printf '\nint added() { return 4; }\n' >> src/old.cc
bash scripts/format-check.sh >/dev/null 2>&1 || fail "formatted addition reported"
printf 'int bad_added( int x ){return x+1;}\n' > src/new.cc
git add src/new.cc  # new files count once git knows them
status=0
out="$(bash scripts/format-check.sh 2>&1)" || status=$?
[[ $status -eq 1 ]] || fail "unformatted addition: exit $status, want 1"
grep -q "src/new.cc" <<<"$out" || fail "file not named: $out"
if grep -q "src/old.cc" <<<"$out"; then fail "old lines reported: $out"; fi

# 3. --fix formats the changed lines only; then the check passes.
bash scripts/format-check.sh --fix >/dev/null 2>&1 || fail "--fix failed"
[[ "$(cat src/new.cc)" == "int bad_added(int x) { return x + 1; }" ]] || fail "not fixed: $(cat src/new.cc)"
grep -q "int old_code( ) {int a=1;return a ;}" src/old.cc || fail "--fix touched an old line"
bash scripts/format-check.sh >/dev/null 2>&1 || fail "still reported after --fix"

# 4. A moved file counts only its edited lines.
git add -A && git commit -qm more
git mv src/moved.cc src/renamed.cc
sed -i 's/int keep() { return 3; }/int keep( ) {return 3;}/' src/renamed.cc
out="$(bash scripts/format-check.sh 2>&1)" && fail "edited line of a moved file passed"
grep -q "+int keep() { return 3; }" <<<"$out" || fail "edited line not shown: $out"
if grep -q "^+int moved() { return 2; }" <<<"$out"; then fail "unedited line of a moved file reported: $out"; fi

# 5. CUDA sources (.cu) are checked too.
bash scripts/format-check.sh --fix >/dev/null 2>&1 || fail "--fix failed"
git add -A && git commit -qm moved
bash scripts/format-check.sh >/dev/null 2>&1 || fail "reported after --fix and commit"
printf '__global__ void Kernel( float* x ){x[threadIdx.x]=0;}\n' > src/kernel.cu
git add src/kernel.cu
out="$(bash scripts/format-check.sh 2>&1)" && fail "unformatted .cu passed"
grep -q "src/kernel.cu" <<<"$out" || fail ".cu file not named: $out"
bash scripts/format-check.sh --fix >/dev/null 2>&1 || fail "--fix failed on .cu"
bash scripts/format-check.sh >/dev/null 2>&1 || fail ".cu still reported after --fix"

# 6. Usage errors: a base that is no commit, an unknown option.
status=0; bash scripts/format-check.sh 0123456789abcdef >/dev/null 2>&1 || status=$?
[[ $status -eq 2 ]] || fail "bad base: exit $status, want 2"
status=0; bash scripts/format-check.sh --nope >/dev/null 2>&1 || status=$?
[[ $status -eq 2 ]] || fail "unknown option: exit $status, want 2"
echo "PASS"

#!/usr/bin/env bash
# Checks that the C++ (and CUDA: .cu, .cuh) lines changed since a base commit are formatted as
# .clang-format says (Google style, 100 columns), or with --fix formats them
# in place. Only changed lines count, so old code is reformatted when it is
# next touched, not in one sweeping commit.
#
#   scripts/format-check.sh [--fix] [BASE]
#
# BASE defaults to the commit named in scripts/format-base (the point from
# which the rule holds); renames are followed, so a moved file counts only
# its edited lines. Exit 0: clean; 1: lines to format (each file is named,
# with clang-format's diff); 2: usage error (unknown option, BASE not a
# commit of this repository, no clang-format).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
fix=0
base=""
for arg in "$@"; do
  case "$arg" in
    --fix) fix=1 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "format-check.sh: unknown option $arg" >&2; exit 2 ;;
    *) base="$arg" ;;
  esac
done
if [[ -z "$base" ]]; then
  base="$(grep -v '^#' scripts/format-base | tr -d '[:space:]')"
fi
if ! git rev-parse --verify --quiet "$base^{commit}" >/dev/null; then
  echo "format-check.sh: base '$base' is not a commit of this repository" >&2
  exit 2
fi
clang_format="$(command -v clang-format || true)"
if [[ -z "$clang_format" ]]; then
  echo "format-check.sh: clang-format not found (Debian package clang-format; scripts/install-deps.sh)" >&2
  exit 2
fi

# "file<TAB>--lines=a:b --lines=c:d" for every C++ file with added lines.
ranges="$(git diff -M -U0 --no-color --diff-filter=AMR "$base" -- '*.cc' '*.h' '*.cu' '*.cuh' | awk '
  /^\+\+\+ / { file = substr($0, 7); next }
  /^@@ / {
    split($3, added, ",")
    start = substr(added[1], 2); count = (length(added) > 1) ? added[2] : 1
    if (count > 0) lines[file] = lines[file] " --lines=" start ":" (start + count - 1)
  }
  END { for (f in lines) printf "%s\t%s\n", f, lines[f] }' | sort)"

status=0
checked=0
while IFS=$'\t' read -r file line_args; do
  [[ -z "$file" ]] && continue
  checked=$((checked + 1))
  # shellcheck disable=SC2086  # line_args is a list of --lines=a:b words
  if [[ $fix == 1 ]]; then
    "$clang_format" --style=file -i $line_args "$file"
  elif ! "$clang_format" --style=file $line_args "$file" | diff -u --label "$file" --label "$file (formatted)" "$file" - ; then
    status=1
  fi
done <<< "$ranges"
if [[ $fix == 1 ]]; then
  echo "format-check.sh: formatted the changed lines of $checked file(s) since ${base:0:12}"
elif [[ $status != 0 ]]; then
  echo "format-check.sh: lines changed since ${base:0:12} are not formatted; run scripts/format-check.sh --fix" >&2
else
  echo "format-check.sh: the changed lines of $checked file(s) since ${base:0:12} are formatted"
fi
exit "$status"

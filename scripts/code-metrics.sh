#!/usr/bin/env bash
# Prints the layout measures of docs/ARCHITECTURE.md's "Keeping it readable":
# the longest functions, the source files over 600 lines, and how many folders
# each cross-cutting concept spans (tests left out). Read-only; run from any
# directory. Needs universal-ctags (Debian package universal-ctags).
#
#   scripts/code-metrics.sh [N]   # N longest functions (default 10)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
top="${1:-10}"
command -v ctags >/dev/null || { echo "code-metrics.sh: ctags not found (universal-ctags)" >&2; exit 2; }

echo "## Longest functions (lines; tests left out)"
git ls-files '*.cc' '*.h' | grep -v '^tests/' | ctags -L - -o - --c++-kinds=f --fields=+ne 2>/dev/null |
  awk -F'\t' '{ for (i = 4; i <= NF; i++) { if ($i ~ /^line:/) l = substr($i, 6); if ($i ~ /^end:/) e = substr($i, 5) }
               if (e) print e - l + 1, $2, $1; l = e = "" }' | sort -rn | awk -v n="$top" 'NR <= n'
echo
echo "## Source files over 600 lines"
git ls-files '*.cc' '*.h' | xargs wc -l | awk '$2 != "total" && $1 > 600' | sort -rn
echo
echo "## Folders a concept spans (files naming it, tests left out)"
for word in lease token spec; do
  folders="$(git grep -il "$word" -- '*.cc' '*.h' ':!tests' | xargs -n1 dirname | sort -u)"
  echo "$word: $(wc -l <<<"$folders") ($(tr '\n' ' ' <<<"$folders"))"
done

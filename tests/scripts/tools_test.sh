#!/usr/bin/env bash
# scripts/check-tools.sh and scripts/tools.list: a missing required program
# fails naming its package, --link makes a directory of exactly the listed
# programs, and (under scripts/test.sh) the tests' PATH holds nothing else.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/tern-tools.XXXXXX")"
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

# 1. The project's list is complete enough for this machine's required set.
bash "$root/scripts/check-tools.sh" >/dev/null 2>&1 || fail "check-tools.sh fails on this machine"

# 2. A required program that is absent: exit 1, naming program and package.
cat > "$work/list" <<'LIST'
bash                    bash                 required  test
tern-no-such-program-x  tern-no-such-package required  test
python3:tern_no_such_module  python3-tern-nope  required  test
tern-no-such-optional   some-package         optional  test
LIST
status=0
out="$(TERN_TOOLS_LIST="$work/list" bash "$root/scripts/check-tools.sh" 2>&1)" || status=$?
[[ $status -eq 1 ]] || fail "missing required program: exit $status, want 1"
grep -q "tern-no-such-program-x (package tern-no-such-package)" <<<"$out" || fail "program not named: $out"
grep -q "python module tern_no_such_module (package python3-tern-nope)" <<<"$out" || fail "module not named: $out"
grep -q "optional tern-no-such-optional" <<<"$out" || fail "absent optional not reported: $out"

# 3. A malformed line is refused.
printf 'bash bash sometimes test\n' > "$work/bad"
status=0
TERN_TOOLS_LIST="$work/bad" bash "$root/scripts/check-tools.sh" >/dev/null 2>&1 || status=$?
[[ $status -eq 2 ]] || fail "malformed need: exit $status, want 2"

# 4. --link: exactly the listed programs that exist.
printf 'bash bash required t\nsed sed required t\ntern-no-such-optional x optional t\n' > "$work/ok"
TERN_TOOLS_LIST="$work/ok" bash "$root/scripts/check-tools.sh" --link "$work/path" 2>/dev/null
[[ "$(ls "$work/path" | tr '\n' ' ')" == "bash sed " ]] || fail "--link made: $(ls "$work/path")"
[[ "$(PATH="$work/path" bash -c 'command -v sed')" == "$work/path/sed" ]] || fail "sed not found through the link"
PATH="$work/path" bash -c 'command -v awk' >/dev/null && fail "an unlisted program is reachable"

# 4b. A program off PATH named by an absolute path glob (PostgreSQL's server
#     programs): the last match is linked under its own name; none is missing.
mkdir -p "$work/opt/1/bin" "$work/opt/2/bin"
printf '#!/bin/sh\necho one\n' > "$work/opt/1/bin/tern-offpath"
printf '#!/bin/sh\necho two\n' > "$work/opt/2/bin/tern-offpath"
chmod +x "$work/opt/1/bin/tern-offpath" "$work/opt/2/bin/tern-offpath"
printf '%s x required t\n' "$work/opt/*/bin/tern-offpath" > "$work/glob"
TERN_TOOLS_LIST="$work/glob" bash "$root/scripts/check-tools.sh" --link "$work/globpath" ||
  fail "an absolute path glob that matches is reported missing"
[[ "$(readlink "$work/globpath/tern-offpath")" == "$work/opt/2/bin/tern-offpath" ]] ||
  fail "glob linked $(readlink "$work/globpath/tern-offpath"), want the last match"
printf '%s x required t\n' "$work/opt/*/bin/tern-absent" > "$work/noglob"
status=0
out="$(TERN_TOOLS_LIST="$work/noglob" bash "$root/scripts/check-tools.sh" 2>&1)" || status=$?
[[ $status -eq 1 && "$out" == *"tern-absent (package x)"* ]] || fail "unmatched glob: exit $status: $out"

# 5. --packages: the required lines' packages, which install-deps.sh installs.
pkgs="$(bash "$root/scripts/check-tools.sh" --packages | tr '\n' ' ')"
for p in curl jq openssl prometheus procps postgresql; do
  [[ " $pkgs" == *" $p "* ]] || fail "package $p not among the required packages: $pkgs"
done

# 6. Under scripts/test.sh the tests' PATH is the tool directory alone: perl is
#    on every Debian machine but not in the list, so it must not be found.
if [[ "$PATH" == */tool-path ]]; then
  command -v perl >/dev/null && fail "PATH=$PATH reaches perl, which is not in tools.list"
  command -v curl >/dev/null || fail "curl is listed but not on the tests' PATH"
  echo "PATH restricted to $PATH"
else
  echo "NOTE: not run through scripts/test.sh (PATH is not a tool-path); restriction not checked here"
fi
echo "PASS"

#!/usr/bin/env bash
# Checks that every program and Python module in scripts/tools.list is
# present: required ones must be (exit 1 naming each missing program and the
# Debian package that brings it), optional ones are reported.
#   --link DIR   also make DIR a directory of links to exactly the listed
#                programs found (required and optional), to be used as PATH
#                by scripts/test.sh: a test calling an unlisted program then
#                fails with "command not found" on every machine.
#   --packages   print the Debian packages of the required lines and exit
#                (scripts/install-deps.sh installs them).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
list="${TERN_TOOLS_LIST:-$root/scripts/tools.list}"
link_dir=""
case "${1:-}" in
  --link) link_dir="${2:?--link needs a directory}" ;;
  --packages)
    awk '!/^[[:space:]]*(#|$)/ && $3 == "required" { print $2 }' "$list" | sort -u
    exit 0 ;;
  "") ;;
  *) echo "usage: check-tools.sh [--link DIR | --packages]" >&2; exit 2 ;;
esac

python=/usr/bin/python3
missing=()
if [[ -n "$link_dir" ]]; then
  rm -rf "$link_dir"
  mkdir -p "$link_dir"
fi
while read -r program package need _; do
  [[ -z "$program" || "$program" == \#* ]] && continue
  if [[ "$need" != required && "$need" != optional ]]; then
    echo "check-tools: $list: '$program' has need '$need' (required or optional)" >&2
    exit 2
  fi
  if [[ "$program" == python3:* ]]; then
    module="${program#python3:}"
    if ! "$python" -c "import $module" >/dev/null 2>&1; then
      [[ "$need" == required ]] && missing+=("python module $module (package $package)")
    fi
    continue
  fi
  if [[ "$program" == /* ]]; then
    # A program off PATH, named by its absolute path or a glob (PostgreSQL's
    # /usr/lib/postgresql/*/bin/initdb): the last match, linked by its name.
    path=""
    for candidate in $program; do
      [[ -x "$candidate" ]] && path="$candidate"
    done
    program="${program##*/}"
  elif path="$(command -v "$program" 2>/dev/null)" && [[ "$path" == /* ]]; then
    :
  else
    # Shell builtins (true, kill) also exist as programs; only programs count.
    path=""
    for dir in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
      [[ -x "$dir/$program" ]] && { path="$dir/$program"; break; }
    done
  fi
  if [[ -z "$path" ]]; then
    if [[ "$need" == required ]]; then
      missing+=("$program (package $package)")
    else
      echo "check-tools: optional $program (package $package) is not installed" >&2
    fi
    continue
  fi
  if [[ -n "$link_dir" ]]; then
    # python3 means Debian's interpreter, whose modules the list names.
    [[ "$program" == python3 && -x "$python" ]] && path="$python"
    ln -s "$path" "$link_dir/$program"
  fi
done < "$list"

if ((${#missing[@]} > 0)); then
  echo "check-tools: missing (scripts/install-deps.sh installs these):" >&2
  printf '  %s\n' "${missing[@]}" >&2
  exit 1
fi

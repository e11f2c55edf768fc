#!/usr/bin/env bash
# Compile-checks every LibTorch-using source against LibTorch 2.x headers of a
# CUDA build, with the CUDA/NCCL code paths switched on (TERN_WITH_CUDA,
# TERN_WITH_NCCL), on a machine without a GPU. The CPU build uses Debian 12's
# LibTorch 1.13; the GPU machine a PyTorch 2.x wheel. This catches API drift
# in the code that only the GPU build compiles before GPU time is spent on it.
#
#   scripts/check-torch2-headers.sh [BUILD_DIR]     (default build/)
#
# Fetches (once, cached in $TERN_TORCH2_CACHE, default ~/.cache/tern-torch2,
# about 1.1 GB) Debian 13's libtorch-dev, libtorch-cuda-dev (LibTorch 2.6),
# nvidia-cuda-dev, libcu++-dev and libnccl-dev with apt, from the mirror this
# machine's apt sources name, and unpacks their headers. Runs g++
# -fsyntax-only per source with the flags of BUILD_DIR's compile commands
# (Ninja), nproc at a time. Nothing is linked or run: link-level and runtime
# behaviour still need scripts/gpu-check.sh on the GPU machine.
# Exit status: 0 when every source compiles, 1 otherwise (logs are kept).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="$(cd "${1:-$root/build}" && pwd)"
cache="${TERN_TORCH2_CACHE:-$HOME/.cache/tern-torch2}"
headers="$cache/root/usr/include"
[[ -f "$build/build.ninja" ]] || { echo "check-torch2-headers: $build is not a Ninja build (scripts/build.sh)" >&2; exit 2; }

if [[ ! -f "$cache/unpacked" ]]; then
  mkdir -p "$cache/lists/partial" "$cache/debs" "$cache/root"
  uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [[ -n "$uri" ]] || uri=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list)
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri trixie main contrib non-free" \
    >"$cache/sources.list"
  apt_opts=(-o Dir::Etc::SourceList="$cache/sources.list" -o Dir::Etc::SourceParts=/nonexistent
            -o Dir::State::Lists="$cache/lists" -o Debug::NoLocking=1)
  apt-get "${apt_opts[@]}" update >/dev/null
  (cd "$cache/debs" && apt-get "${apt_opts[@]}" download libtorch-dev libtorch-cuda-dev \
     nvidia-cuda-dev libcu++-dev libnccl-dev >/dev/null)
  # libtorch-dev first: the CUDA variant's headers overwrite it where they differ.
  for deb in "$cache"/debs/libtorch-dev_*.deb "$cache"/debs/*.deb; do dpkg -x "$deb" "$cache/root"; done
  touch "$cache/unpacked"
fi
version=$(awk '/define TORCH_VERSION_(MAJOR|MINOR|PATCH)/ {v = v (v ? "." : "") $3} END {print v}' \
  "$headers/torch/csrc/api/include/torch/version.h")
echo "LibTorch headers $version (CUDA build) from $headers"

logs="$build/torch2-check"
rm -rf "$logs" && mkdir -p "$logs"
(cd "$build" && ninja -t compdb) >"$logs/compdb.json"
python3 - "$logs" "$headers" <<'PY'
import json, os, shlex, sys
logs, headers = sys.argv[1], sys.argv[2]
seen, lines = set(), []
for entry in json.load(open(os.path.join(logs, "compdb.json"))):
    args = shlex.split(entry["command"])
    if "torch/csrc/api/include" not in entry["command"] or entry["file"] in seen:
        continue
    seen.add(entry["file"])
    if args[0].endswith("ccache"):
        args = args[1:]
    out, i = [args[0], "-I" + headers, "-I" + headers + "/torch/csrc/api/include",
              "-DTERN_WITH_CUDA", "-DTERN_WITH_NCCL", "-DUSE_C10D_NCCL", "-DUSE_CUDA", "-fsyntax-only"], 1
    while i < len(args):
        a = args[i]
        if a in ("-o", "-MT", "-MF"):
            i += 2
            continue
        if a == "-isystem" and args[i + 1].endswith("torch/csrc/api/include"):
            i += 2
            continue
        if a not in ("-MD", "-c", "-g"):
            out.append(a)
        i += 1
    name = os.path.relpath(entry["file"]).replace("/", "_").replace("..", "")
    lines.append(f'cd {shlex.quote(entry["directory"])} && {shlex.join(out)} '
                 f'>{shlex.quote(os.path.join(logs, name))}.log 2>&1 '
                 f'&& echo "ok   {entry["file"]}" || echo "FAIL {entry["file"]}"')
open(os.path.join(logs, "commands.sh"), "w").write("\n".join(lines) + "\n")
print(f"{len(lines)} LibTorch-using sources")
PY
tr '\n' '\0' <"$logs/commands.sh" | xargs -0 -P "$(nproc)" -I{} bash -c '{}' | sort | tee "$logs/summary.txt"
if grep -q '^FAIL' "$logs/summary.txt"; then
  echo "errors (logs in $logs):"
  grep -h -m5 'error' "$logs"/*.log || true
  exit 1
fi
echo "all compile against LibTorch $version"

#!/usr/bin/env bash
# Installs every Debian 12 package tern needs (build, tests, benchmarks, demo):
# the libraries below, and the packages of every program the scripts and
# tests run (scripts/tools.list). Idempotent: when everything is present it
# only runs dpkg-query and exits in well under a second. Needs root (or sudo) only when something is missing.
# Arguments name extra packages for optional tools (scripts/fuzz.sh: clang).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
# Packages of the programs the scripts and tests run (curl, jq, openssl,
# promtool, ...): one list, scripts/tools.list.
mapfile -t tool_packages < <(awk '!/^[[:space:]]*(#|$)/ && $3 == "required" { print $2 }' \
  "$root/scripts/tools.list" | sort -u)

packages=(
  build-essential
  libtorch-dev libgloo-dev              # LibTorch 1.13 CPU, c10d + Gloo headers
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libsqlite3-dev libboost-dev libboost-system-dev
  libpq-dev                             # PostgreSQL job store (its server: tools.list)
  libgtest-dev libgmock-dev googletest
  nlohmann-json3-dev libcli11-dev libstb-dev zlib1g-dev libyaml-cpp-dev
  libjpeg62-turbo-dev libpng-dev libwebp-dev  # image decoding (worker/trainer/image_decode.cc)
  dataset-fashion-mnist                 # real data, /usr/share/datasets/fashion-mnist
  "${tool_packages[@]}"
  "$@"
)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "installed" ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
# A package that no longer brings its program (or a wrong line in
# tools.list) shows here, at install time, rather than in a test.
"$root/scripts/check-tools.sh"

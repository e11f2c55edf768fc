#!/usr/bin/env bash
# Run on a normal (Debian 12) machine before scripts/gpu-check.sh: gathers what
# the GPU machine lacks into the git-ignored .carry/ (well under 64 MiB):
# Debian's gRPC and its dependencies, protobuf 3.21 (the one gRPC was built
# with: the image's headers and library do not form a linkable set), Gloo's
# headers (the torch wheel's ProcessGroupGloo.hpp includes them but the wheel
# does not ship them; its Gloo is linked into libtorch_cpu), header-only
# libraries, libjpeg-turbo, libpng and libwebp, Fashion-MNIST.
# Then: device run with carry [".carry"] and command "bash scripts/gpu-check.sh".
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
carry="$root/.carry"
mkdir -p "$carry/debs" "$carry/fashion-mnist"
packages=(libgrpc++-dev libgrpc-dev libgrpc29 libgrpc++1.51 protobuf-compiler-grpc
  libabsl20220623 libabsl-dev libc-ares2 libc-ares-dev libre2-9 libre2-dev libprotoc32
  libprotobuf-dev libprotobuf32 libprotobuf-lite32 protobuf-compiler libgloo-dev
  libssl-dev zlib1g-dev nlohmann-json3-dev libcli11-dev libstb-dev libstb0
  libyaml-cpp-dev libyaml-cpp0.7 libsqlite3-dev libgtest-dev libgmock-dev jq libjq1 libonig5
  libjpeg62-turbo-dev libjpeg62-turbo libpng-dev libpng16-16 libwebp-dev libwebp7
  ninja-build)
(cd "$carry/debs" && apt-get download "${packages[@]}")
cp /usr/share/datasets/fashion-mnist/*.gz "$carry/fashion-mnist/"
du -sh "$carry"

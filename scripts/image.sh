#!/usr/bin/env bash
# Builds tern's container image (docker/Dockerfile) with podman, without a
# registry: what CI runs, and what works on a fresh Debian 12 machine (as root).
#
#   scripts/image.sh                 the runtime image: localhost/tern:<short sha>
#                                    (<short sha>-dirty for an uncommitted tree)
#                                    and localhost/tern:dev
#   scripts/image.sh --target test   the test stage: the README's e2e tests
#                                    (scripts/test.sh -L e2e) inside a minimal
#                                    Debian 12 root, so a missing install step
#                                    fails the build (localhost/tern-test:dev)
#   scripts/image.sh --base          only make the base image
#   scripts/image.sh --prometheus    also build deploy/compose's Prometheus image
#                                    (localhost/tern-prometheus:dev)
#   scripts/image.sh --cuda-carry    also build docker/Dockerfile.cuda's Debian stage
#                                    (scripts/gpu-carry.sh in a minimal root: the
#                                    part of that image the build machines can build)
#   scripts/image.sh --worktree      build the working tree as it is (tag
#                                    <short sha>-dirty when it differs from
#                                    HEAD) instead of the commit
#   extra arguments after -- go to podman build (e.g. -- --no-cache)
#
# 1. Installs podman, buildah, debootstrap and podman-compose if missing (and
#    podman's helpers: catatonit, container name resolution).
# 2. Uses a private podman root (scripts/podman-env.sh; TERN_PODMAN_ROOT,
#    default /var/tmp/tern-podman) with the settings the build machines need.
# 3. Makes the base image once: debootstrap --variant=minbase bookworm from
#    the mirror apt uses here, with the dpkg/apt settings of Debian's official
#    slim images (no docs, man pages or locales; no apt caches), imported and
#    tagged docker.io/library/debian:bookworm-slim, so that the Dockerfile's
#    unchanged FROM resolves locally (no registry is needed or reached).
# 4. Builds the commit (HEAD, exported with git archive: uncommitted changes
#    are left out unless --worktree) reproducibly: SOURCE_DATE_EPOCH is the
#    commit's time, used for
#    every timestamp (--timestamp) and the OCI created label; the revision and
#    version labels come from git. The compile reuses this machine's ccache
#    (mounted read-write at build time; the Dockerfile's own cache mount is
#    used when building without this script), and prints its hit rate.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

target=runtime
base_only=false
prometheus=false
cuda_carry=false
worktree=false
extra=()
while (($#)); do
  case "$1" in
    --target) target="${2:?--target needs runtime or test}"; shift 2 ;;
    --base) base_only=true; shift ;;
    --prometheus) prometheus=true; shift ;;
    --worktree) worktree=true; shift ;;
    --cuda-carry) cuda_carry=true; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

# 1. Tools. Installed without Debian's "Recommends", so podman's helpers are
# named too: catatonit (the pause process of `podman kube play`), and name
# resolution between containers on either network backend (the CNI dnsname
# plugin; netavark with aardvark-dns). A fresh machine without them failed the
# Compose test (agents never reached ternd by name) and the kube play test.
packages=(podman buildah runc debootstrap podman-compose uidmap catatonit
          golang-github-containernetworking-plugin-dnsname netavark aardvark-dns)
missing=()
for p in "${packages[@]}"; do
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" == installed ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "image.sh: installing ${missing[*]}" >&2
  sudo_cmd=()
  [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "image.sh: run as root (podman's private root under ${TERN_PODMAN_ROOT:-/var/tmp/tern-podman})" >&2
  exit 1
fi

# 2. Private podman configuration.
source "$root/scripts/podman-env.sh"

# 3. The base image.
base=docker.io/library/debian:bookworm-slim
mirror_uri() {  # the first URI of apt's sources for the suite bookworm
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    awk '/^URIs:/ {uri=$2} /^Suites:/ && / bookworm( |$)/ {print uri; exit}' "$f"
  done | head -1
  awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true
}
make_base() {
  local tar="$tern_podman_root/base/debian-bookworm-minbase.tar"
  if [[ ! -f "$tar" ]]; then
    local mirror dir
    mirror=$(mirror_uri | head -1)
    mirror=${mirror:-http://deb.debian.org/debian}
    dir="$tern_podman_root/base/rootfs"
    rm -rf "$dir"
    mkdir -p "$dir"
    echo "image.sh: debootstrap --variant=minbase bookworm from $mirror" >&2
    debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$tern_podman_root/base/debootstrap.log" 2>&1 ||
      { tail -20 "$tern_podman_root/base/debootstrap.log" >&2; exit 1; }
    # apt's sources as on this machine (bookworm, -updates, -security), in the
    # deb822 form the official image uses.
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
      grep -v '^#' /etc/apt/sources.list.d/debian.sources >"$dir/etc/apt/sources.list.d/debian.sources"
      rm -f "$dir/etc/apt/sources.list"
    fi
    # The official slim image's settings: no documentation, manuals or
    # translations installed; apt keeps no downloaded packages.
    cat >"$dir/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    cat >"$dir/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' >"$dir/etc/apt/apt.conf.d/docker-no-languages"
    echo 'APT::AutoRemove::SuggestsImportant "false";' >"$dir/etc/apt/apt.conf.d/docker-autoremove-suggests"
    find "$dir/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete 2>/dev/null || true
    find "$dir/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
    rm -rf "$dir"/usr/share/{man,info,groff,lintian,linda}/* "$dir"/var/cache/apt/archives/*.deb \
      "$dir"/var/cache/apt/*.bin "$dir"/var/lib/apt/lists/* "$dir"/var/log/* "$dir"/tmp/*
    find "$dir/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
    tar -C "$dir" --numeric-owner --sort=name -cf "$tar.tmp" .
    mv "$tar.tmp" "$tar"
    rm -rf "$dir"
  fi
  podman import --quiet --change 'CMD ["/bin/bash"]' "$tar" "$base" >/dev/null
  podman tag "$base" localhost/debian:bookworm-slim
  echo "image.sh: base image $base ($(du -h "$tar" | cut -f1) tar)" >&2
}
podman image exists "$base" || make_base
$base_only && exit 0

# 4. The image.
sha=$(git rev-parse --short HEAD)
revision=$(git rev-parse HEAD)
tag=$sha
context="$root"
if $worktree; then
  [[ -n "$(git status --porcelain 2>/dev/null)" ]] && tag="$sha-dirty"
else
  context=$(mktemp -d "$tern_podman_root/context.XXXXXX")
  trap 'rm -rf "$context"' EXIT
  git archive --format=tar HEAD | tar -x -C "$context"
  # One modification time for every file: a layer's cache key covers the
  # files' times, so only changed contents invalidate a COPY (and what
  # follows it; the install step's layer survives most commits).
  find "$context" -exec touch -h -d @0 {} +
fi
export SOURCE_DATE_EPOCH
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)
version=$(git describe --tags --always 2>/dev/null || echo "$sha")
[[ "$tag" == *-dirty ]] && version="$version-dirty"
source_url=${TERN_IMAGE_SOURCE:-$(git remote get-url origin 2>/dev/null || echo https://github.com/tern/tern)}
ccache_dir=${CCACHE_DIR:-$(ccache -k cache_dir 2>/dev/null || echo "$HOME/.cache/ccache")}
mkdir -p "$ccache_dir"
# The host's compilers (mtime and SHA-256), which docker/with-ccache.sh
# matches in the build so that the host's ccache results are hits there.
host_compilers=""
for compiler in c++ cc; do
  path=$(readlink -f "$(command -v "$compiler" 2>/dev/null)" 2>/dev/null) || continue
  [[ -f "$path" ]] || continue
  host_compilers+="$path=$(stat -c %Y "$path"):$(sha256sum "$path" | cut -d' ' -f1) "
done
case "$target" in
  runtime) names=(-t "localhost/tern:$tag" -t localhost/tern:dev) ;;
  test) names=(-t localhost/tern-test:dev) ;;
  *) echo "image.sh: --target runtime or test" >&2; exit 2 ;;
esac
echo "image.sh: building target $target of docker/Dockerfile (revision $sha, SOURCE_DATE_EPOCH $SOURCE_DATE_EPOCH)" >&2
start=$(date +%s)
podman build --pull=never --layers --file "$context/docker/Dockerfile" \
  --ignorefile "$context/docker/Dockerfile.dockerignore" \
  --target "$target" --timestamp "$SOURCE_DATE_EPOCH" \
  --build-arg VERSION="$version" \
  --build-arg REVISION="$revision" --build-arg SOURCE="$source_url" \
  --build-arg CREATED="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)" \
  --build-arg TERN_CCACHE_DIR=/host-ccache --volume "$ccache_dir:/host-ccache" \
  --build-arg TERN_HOST_COMPILERS="$host_compilers" \
  "${names[@]}" "${extra[@]}" "$context"
echo "image.sh: target $target built in $(( $(date +%s) - start )) s" >&2
if [[ "$target" == runtime ]]; then
  size=$(podman image inspect --format '{{.Size}}' localhost/tern:dev)
  echo "image.sh: localhost/tern:$tag = localhost/tern:dev, $((size / 1000000)) MB," \
    "id $(podman image inspect --format '{{.Id}}' localhost/tern:dev | cut -c1-12)" >&2
fi
# Keep the layer cache of this build (its build stage, tagged) and drop
# earlier builds' stages: each is gigabytes.
podman build --pull=never --layers --file "$context/docker/Dockerfile" \
  --ignorefile "$context/docker/Dockerfile.dockerignore" --target build --timestamp "$SOURCE_DATE_EPOCH" \
  --build-arg TERN_CCACHE_DIR=/host-ccache --volume "$ccache_dir:/host-ccache" \
  --build-arg TERN_HOST_COMPILERS="$host_compilers" \
  -t localhost/tern-build:cache -q "$context" >/dev/null
# Earlier commits' images (localhost/tern:<sha>) go too.
for old in $(podman images --format '{{.Repository}}:{{.Tag}}' localhost/tern); do
  [[ "$old" == "localhost/tern:dev" || "$old" == "localhost/tern:$tag" ]] || podman rmi "$old" >/dev/null || true
done
podman image prune -f >/dev/null
if $prometheus; then
  podman build --pull=never --layers --file "$context/deploy/compose/prometheus.Dockerfile" \
    --timestamp "$SOURCE_DATE_EPOCH" -t localhost/tern-prometheus:dev "$context/deploy/compose"
  podman image prune -f >/dev/null
fi
if $cuda_carry; then
  podman build --pull=never --layers --file "$context/docker/Dockerfile.cuda" \
    --ignorefile "$context/docker/Dockerfile.cuda.dockerignore" --target carry \
    --timestamp "$SOURCE_DATE_EPOCH" -t localhost/tern-cuda-carry:dev "$context"
  podman run --rm localhost/tern-cuda-carry:dev sh -c \
    'ls /src/.carry/debs/*.deb >/dev/null && ls /src/.carry/fashion-mnist/*.gz >/dev/null' ||
    { echo "image.sh: the CUDA image's carry stage holds no packages or data" >&2; exit 1; }
  echo "image.sh: docker/Dockerfile.cuda's carry stage built" >&2
fi
tern_podman_host_cleanup
exit 0

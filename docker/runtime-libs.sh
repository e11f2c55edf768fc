#!/usr/bin/env bash
# Run in the image's build stage: copies the shared libraries that the given
# binaries load (their whole ldd closure) into DEST, under the same
# directories, leaving out those whose Debian package the base image already
# has (BASE_PACKAGES: one package name a line). Each library's Debian
# copyright file comes along (DEST/usr/share/doc/PACKAGE/copyright), and
# DEST/usr/share/doc/tern/runtime-libraries.txt lists what was copied from
# which package and version.
#
# Copying the closure rather than apt-installing the libraries' packages:
# LibTorch 1.13's libtorch1.13 package depends on the whole of OpenCV, FFmpeg,
# Qt and more for Caffe2 operators tern never calls; the files libtorch_cpu.so
# actually loads are a subset (see docs/DEPLOY.md for the measured sizes).
#
# usage: runtime-libs.sh DEST BASE_PACKAGES BINARY...
set -euo pipefail
dest="${1:?usage: runtime-libs.sh DEST BASE_PACKAGES BINARY...}"
base_packages="${2:?}"
shift 2
mkdir -p "$dest/usr/share/doc/tern"
manifest="$dest/usr/share/doc/tern/runtime-libraries.txt"
: >"$manifest"

owner() {  # path -> the Debian package that ships it (usrmerge: /lib = /usr/lib)
  local p="$1" alt
  case "$p" in
    /usr/lib/*) alt="/lib/${p#/usr/lib/}" ;;
    /lib/*) alt="/usr/lib/${p#/lib/}" ;;
    *) alt="$p" ;;
  esac
  { dpkg -S "$p" 2>/dev/null || dpkg -S "$alt" 2>/dev/null; } | head -1 | cut -d: -f1
}

declare -A seen=()
status=0
for bin in "$@"; do
  if ldd "$bin" | grep -q "not found"; then
    echo "runtime-libs: $bin: $(ldd "$bin" | grep "not found" | tr -s ' \t' ' ')" >&2
    status=1
  fi
  while read -r lib; do
    [[ -n "${seen[$lib]:-}" ]] && continue
    seen[$lib]=1
    real=$(realpath "$lib")
    package=$(owner "$real")
    [[ -n "$package" ]] || package=$(owner "$lib")
    if [[ -z "$package" ]]; then
      echo "runtime-libs: no Debian package owns $lib ($real)" >&2
      status=1
      continue
    fi
    grep -qx "$package" "$base_packages" && continue
    # The file under the name the loader looks for, in the canonical
    # directory (a regular file: alternatives' links such as libblas.so.3
    # are resolved here).
    dir=$(realpath "$(dirname "$lib")")
    mkdir -p "$dest$dir"
    cp "$real" "$dest$dir/$(basename "$lib")"
    if [[ -f "/usr/share/doc/$package/copyright" && ! -f "$dest/usr/share/doc/$package/copyright" ]]; then
      mkdir -p "$dest/usr/share/doc/$package"
      cp "/usr/share/doc/$package/copyright" "$dest/usr/share/doc/$package/copyright"
    fi
    echo "$dir/$(basename "$lib") $package $(dpkg-query -W -f='${Version}' "$package")" >>"$manifest"
  done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3}')
done
sort -o "$manifest" "$manifest"
echo "runtime-libs: $(wc -l <"$manifest") libraries from" \
  "$(cut -d' ' -f2 "$manifest" | sort -u | wc -l) packages, $(du -sh "$dest" | cut -f1)" >&2
exit "$status"

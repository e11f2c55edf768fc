#!/bin/sh
# Runs a command (scripts/build.sh) in the image's build with ccache set up:
#   - TERN_CCACHE_DIR (a directory mounted at build time, e.g. the host's
#     cache by scripts/image.sh) becomes CCACHE_DIR; otherwise the Dockerfile's
#     cache mount at /root/.cache/ccache is used;
#   - TERN_HOST_COMPILERS ("PATH=MTIME:SHA256 ..."): buildah --timestamp gives
#     every file of the installed packages the commit's time, while ccache keys
#     its results on the compiler's mtime (and size). A compiler here that is
#     byte for byte the host's (same SHA-256) gets the host's mtime back, so the
#     host's cached objects are hits here (CCACHE_BASEDIR and NOHASHDIR, set by
#     scripts/build.sh, already make the paths relative);
#   - this build's hit rate is printed at the end.
set -eu
if [ -n "${TERN_CCACHE_DIR:-}" ]; then
  export CCACHE_DIR="$TERN_CCACHE_DIR"
  for spec in ${TERN_HOST_COMPILERS:-}; do
    path=${spec%%=*} stamp=${spec#*=}
    mtime=${stamp%%:*} sum=${stamp#*:}
    if [ -f "$path" ] && [ "$(sha256sum "$path" | cut -d' ' -f1)" = "$sum" ]; then
      touch -d "@$mtime" "$path"
    fi
  done
fi
export CCACHE_STATSLOG=/tmp/ccache-stats.log
rm -f "$CCACHE_STATSLOG"
status=0
"$@" || status=$?
echo "ccache in this build step:"
ccache --show-log-stats 2>/dev/null | grep -E "Hits|Misses" || echo "  no compilation"
rm -f "$CCACHE_STATSLOG"
exit "$status"

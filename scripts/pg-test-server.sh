#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests of the PostgreSQL job store.
#
#   pg-test-server.sh start DIR   initdb into DIR/data and start the server; prints its URL
#   pg-test-server.sh url DIR     prints the URL: postgresql:///tern?host=DIR&user=tern
#   pg-test-server.sh stop DIR    stops it and removes DIR
#
# The server listens only on a Unix socket in DIR (listen_addresses='', no TCP
# port to clash with anything), which only its user (and root) can open; the
# superuser "tern" logs in without a password (trust) through that socket.
# fsync stays on (PostgreSQL's default), as in production. It starts empty
# with one database, "tern"; tests make their own databases in it. A server
# left running in DIR by an interrupted run is stopped first.
#
# PostgreSQL refuses to run as root: as root the server runs as the user
# "postgres" (Debian's postgresql package creates it) through runuser, and DIR
# belongs to that user. Debian keeps the server programs (initdb, pg_ctl,
# postgres) in /usr/lib/postgresql/VERSION/bin, off PATH: scripts/tools.list
# names them by that path (a glob, newest version first), so that
# check-tools.sh checks them and links them into the tests' PATH; this script
# takes them from PATH when they are there, else from the same directory.
# ctest runs start and stop as the fixture "postgres" (tests/CMakeLists.txt).
set -euo pipefail

usage() { echo "usage: pg-test-server.sh start|stop|url DIR" >&2; exit 2; }
(($# == 2)) || usage
command="$1"
dir="$2"
[[ "$dir" == /* ]] || { echo "pg-test-server: DIR must be absolute: $dir" >&2; exit 2; }
# A Unix socket path holds at most 107 bytes (DIR/.s.PGSQL.5432).
((${#dir} <= 90)) || { echo "pg-test-server: DIR is too long for a socket path: $dir" >&2; exit 2; }
url="postgresql:///tern?host=$dir&user=tern"

bindir=""
if pg_ctl_path="$(command -v pg_ctl 2>/dev/null)"; then
  bindir="$(dirname "$(readlink -f "$pg_ctl_path")")"
else
  for candidate in /usr/lib/postgresql/*/bin; do
    [[ -x "$candidate/pg_ctl" ]] && bindir="$candidate"  # the glob sorts; the last is newest
  done
fi
if [[ -z "$bindir" || ! -x "$bindir/initdb" || ! -x "$bindir/postgres" ]]; then
  echo "pg-test-server: no PostgreSQL server programs (initdb, pg_ctl, postgres) on PATH or" \
       "in /usr/lib/postgresql/*/bin: install the package postgresql (scripts/install-deps.sh)" >&2
  exit 1
fi

as_server=()
if [[ $(id -u) -eq 0 ]]; then
  if ! id postgres >/dev/null 2>&1; then
    echo "pg-test-server: running as root, and there is no user postgres to run the server as" \
         "(the package postgresql creates it)" >&2
    exit 1
  fi
  as_server=(runuser -u postgres --)
fi

stop_server() {
  if [[ -f "$dir/data/postmaster.pid" ]]; then
    (cd / && "${as_server[@]}" "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null) ||
      (cd / && "${as_server[@]}" "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null) ||
      true
  fi
}

case "$command" in
  url)
    echo "$url" ;;
  stop)
    stop_server
    rm -rf "$dir" ;;
  start)
    stop_server
    rm -rf "$dir"
    mkdir -p "$dir"
    chmod 0700 "$dir"
    if ((${#as_server[@]} > 0)); then chown postgres: "$dir"; fi
    cd "$dir"  # the server's user must be able to enter the working directory
    # -N: initdb skips its own final sync (throwaway files); the server runs with fsync on.
    if ! "${as_server[@]}" "$bindir/initdb" -D "$dir/data" -U tern --auth=trust -E UTF8 \
        --locale=C -N >"$dir/initdb.log" 2>&1; then
      cat "$dir/initdb.log" >&2
      echo "pg-test-server: initdb failed (log above)" >&2
      exit 1
    fi
    if ! "${as_server[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses='' -k $dir -c fsync=on -c max_connections=200" \
        start >/dev/null; then
      cat "$dir/server.log" >&2 || true
      echo "pg-test-server: the server did not start (log above)" >&2
      exit 1
    fi
    "${as_server[@]}" "$bindir/createdb" -h "$dir" -U tern tern
    echo "$url" ;;
  *) usage ;;
esac

#!/usr/bin/env bash
# How long a ternd on PostgreSQL takes to load N jobs when it takes the
# leader lease (issue 28: a leader whose loading outlasts --leader-lease-ttl
# would lose the lease while loading). A throwaway PostgreSQL server
# (scripts/pg-test-server.sh), one ternd that 64 clients fill with N queued
# jobs (tern_service_load_bench --submit-jobs: the fill rate is printed too),
# SIGKILL, a second ternd on the same store; prints its "loaded" and
# "leading ... after X ms of loading" lines.
#   bench/service/pg_load_time.sh [--build build] [--jobs 100000]
# Run from the repository root after building ternd and tern_service_load_bench;
# needs PostgreSQL's server programs (scripts/tools.list) and root or their user.
set -euo pipefail
build=build jobs=100000
while [[ $# -gt 0 ]]; do
  case $1 in
    --build) build=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    *) echo "pg_load_time.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
name=pg_load_time.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export PATH="$build/tool-path:$PATH"  # check-tools.sh --link tool-path: pg_ctl and co.
# Not under $T (0700): the server runs as user postgres under root.
pg="$(mktemp -u "${TMPDIR:-/tmp}/tern-bench-pg.XXXXXX")"
bench_db=$(bash "$root/scripts/pg-test-server.sh" start "$pg" | tail -n 1)
trap '[[ -n $pid ]] && kill -9 $pid 2>/dev/null; bash "$root/scripts/pg-test-server.sh" stop "$pg" >/dev/null 2>&1; rm -rf "$T"' EXIT
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$T/key"
chmod 600 "$T/key"
start_ternd --rendezvous-key-file "$T/key"
echo "# $(date -u +%FT%TZ) $(uname -n) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)," \
  "commit $(git rev-parse --short HEAD 2>/dev/null || echo ?)"
"$build/bench/service/tern_service_load_bench" --server "$addr" --submit-jobs "$jobs" \
  --concurrency 64 --ack-file "$T/acks" | tail -n 1
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
pid=
mv "$T/run/log" "$T/first.log"
start_ternd --rendezvous-key-file "$T/key"
for _ in $(seq 600); do grep -q "leading (epoch" "$T/run/log" && break; sleep 0.2; done
grep -h "loaded\|leading (epoch" "$T/run/log"

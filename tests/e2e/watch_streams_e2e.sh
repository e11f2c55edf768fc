#!/usr/bin/env bash
# WatchJob streams cost ternd no thread each: 2,000 streams held open on a
# queued job (one client process) leave ternd's thread count where it was,
# every stream is answered, and SIGTERM still ends ternd (and every stream)
# in time. A per-caller limit (--max-watch-streams-per-caller) refuses the
# streams beyond it with RESOURCE_EXHAUSTED and serves the rest.
# usage: watch_streams_e2e.sh BUILD_DIR [STREAMS]
set -euo pipefail
build="$(cd "${1:?usage: watch_streams_e2e.sh BUILD_DIR [STREAMS]}" && pwd)"
streams="${2:-2000}"
here="$(dirname "${BASH_SOURCE[0]}")"
source "$here/lib.sh"
bench="$build/bench/service/tern_watch_streams_bench"
[[ -x "$bench" ]] || fail "$bench is not built"
json_field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval('d' + sys.argv[1]))" "$1"; }

# No agent: the job stays QUEUED and its streams stay open. No per-caller
# limit for this part (the default, 1000, is tested below with a lower one).
ternd_flags=(--max-watch-streams-per-caller 0)
start_ternd
write_small_job "$work/job.yaml"
tc=("$build/cli/ternctl" --server "$server" --owner watcher)
job=$("${tc[@]}" submit "$work/job.yaml")
echo "job $job"
out=$("$bench" --server "$server" --job "$job" --streams "$streams" --pid "$ternd" \
  --owner watcher --hold-seconds 1)
echo "$out"
[[ $(json_field '["open"]' <<<"$out") -eq $streams ]] || fail "not every stream stayed open"
before=$(json_field '["ternd_threads_before"]' <<<"$out")
threads=$(json_field '["ternd_threads"]' <<<"$out")
# A thread per stream would add $streams; gRPC's own pools add a few.
(( threads <= before + 16 )) || fail "ternd went from $before to $threads threads with $streams streams"
# The streams were served: the job's history reached each (its first event).
"${tc[@]}" get "$job" | grep -q QUEUED || fail "job $job is not QUEUED"
shut_down "$ternd" 10

# A limit per caller: the streams beyond it are refused, the rest served.
ternd_flags=(--max-watch-streams-per-caller 100)
start_ternd
tc=("$build/cli/ternctl" --server "$server" --owner watcher)
out=$("$bench" --server "$server" --job "$job" --streams 150 --pid "$ternd" --owner watcher \
  --hold-seconds 0)
echo "$out"
[[ $(json_field '["open"]' <<<"$out") -eq 100 ]] || fail "want 100 open streams"
[[ $(json_field '["ended"]["RESOURCE_EXHAUSTED"]' <<<"$out") -eq 50 ]] || fail "want 50 refused"
# Another caller has an allowance of its own (without authentication any
# caller may read the job).
out=$("$bench" --server "$server" --job "$job" --streams 10 --owner other --hold-seconds 0)
echo "$out"
[[ $(json_field '["open"]' <<<"$out") -eq 10 ]] || fail "another caller's streams were refused"
echo PASS

#!/usr/bin/env bash
# ternd on the PostgreSQL job store, end to end: a job submitted to a ternd
# whose --db is a URL on the test server (the ctest fixture "postgres",
# scripts/pg-test-server.sh, in TERN_TEST_POSTGRES_URL), ternd SIGKILLed, a
# new ternd on the same URL: the job is still there, with its idempotency
# key, and once an agent joins it runs to SUCCEEDED. The database is one of
# its own on that server. Without TERN_TEST_POSTGRES_URL it fails (the
# server comes with scripts/install-deps.sh).
# usage: postgres_e2e.sh BUILD_DIR
set -euo pipefail
build="$(cd "${1:?usage: postgres_e2e.sh BUILD_DIR}" && pwd)"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
base_url="${TERN_TEST_POSTGRES_URL:-}"
[[ -n "$base_url" ]] || fail "TERN_TEST_POSTGRES_URL is not set (run through ctest: fixture postgres)"
socket_dir="${base_url#*host=}"
socket_dir="${socket_dir%%&*}"
database="tern_e2e_$$"
createdb -h "$socket_dir" -U tern "$database" || fail "createdb $database on $socket_dir"
ternd_db="postgresql:///$database?host=$socket_dir&user=tern"
ternd_listen="127.0.0.1:$(free_port)"  # the restarted ternd listens here again
ternd_flags=(--rendezvous-key-file "$work/rendezvous.key")

start_ternd
# "listening" comes before the lease is taken; "serving on ..., store" after.
wait_for_line "$ternd_log" "store postgresql:///$database" >/dev/null
ternctl=("$build/cli/ternctl" --server "$server" --owner e2e)
write_small_job "$work/job.yaml"
job=$("${ternctl[@]}" submit --idempotency-key pg-e2e-1 "$work/job.yaml")
echo "submitted job $job"

crash "$ternd"
start_ternd
"${ternctl[@]}" get "$job" --json >"$work/job.json" || fail "job $job is gone after the restart"
jq -e '.state == "JOB_STATE_QUEUED"' "$work/job.json" >/dev/null ||
  fail "job $job after the restart: $(cat "$work/job.json")"
again=$("${ternctl[@]}" submit --idempotency-key pg-e2e-1 "$work/job.yaml")
[[ "$again" == "$job" ]] || fail "the same idempotency key made job $again besides $job"

start_agent
"${ternctl[@]}" watch "$job" >"$work/watch.log" 2>&1 || fail "job $job did not succeed"
"${ternctl[@]}" get "$job" --json >"$work/job.json"
jq -e '.state == "JOB_STATE_SUCCEEDED"' "$work/job.json" >/dev/null ||
  fail "job $job: $(cat "$work/job.json")"
echo "job $job survived a SIGKILLed ternd on PostgreSQL and SUCCEEDED"

#!/usr/bin/env bash
# End to end over mutual TLS: ternd serves gRPC with a certificate and
# requires client certificates from a test CA; tern-agent and ternctl present
# theirs, and a tiny 1-rank job runs to SUCCEEDED, owned by the client
# certificate's name, and its artifact is fetched. A plaintext ternctl and
# one without a client certificate are refused (exit 4, unavailable). These
# are PERMISSION_DENIED (exit 5): an --owner other than the certificate's
# name; another certificate's list of the job's owner (an admin's,
# --tls-admin-names, sees it); its cancel and get are NOT_FOUND (exit 3)
# exactly as for an absent job; an agent whose certificate is outside
# --tls-agent-names or that registers under another name. ternd refuses to
# start with a key that is not its certificate's (exit 1, naming the flag).
# usage: tls_e2e.sh BUILD_DIR
set -euo pipefail
build="$(cd "${1:?usage: tls_e2e.sh BUILD_DIR}" && pwd)"
here="$(dirname "${BASH_SOURCE[0]}")"
source "$here/lib.sh"
make_test_certs

# A key that does not match: ternd must not start.
status=0
"$build/server/ternd" --listen 127.0.0.1:0 --db "$work/bad.db" --metrics-listen "" \
  --tls-cert "$c/server.pem" --tls-key "$c/client.key" >"$work/bad.out" 2>"$work/bad.log" || status=$?
[[ $status -eq 1 ]] || fail "ternd with a mismatched key exited $status, want 1"
grep -q -- "--tls-key: .*client.key is not the private key of --tls-cert" "$work/bad.log" ||
  fail "unexpected error: $(cat "$work/bad.log")"
echo "ternd refuses a key that is not its certificate's"

ternd_flags=(--tls-cert "$c/server.pem" --tls-key "$c/server.key" --tls-client-ca "$c/ca.pem"
  --tls-agent-names 'cl?ent' --tls-admin-names 'serv*')
client_flags=(--tls-ca "$c/ca.pem" --tls-cert "$c/client.pem" --tls-key "$c/client.key")
start_service
# The certificate names the caller: no --owner.
ternctl=("$build/cli/ternctl" --server "$server" "${client_flags[@]}")

write_small_job "$work/small.yaml"
job=$("${ternctl[@]}" submit "$work/small.yaml")
"${ternctl[@]}" watch "$job" >"$work/watch.log" 2>&1 || fail "job $job did not succeed over TLS"
"${ternctl[@]}" fetch "$job" -o "$work/small.tern" >/dev/null || fail "fetch over TLS failed"
[[ "$(head -c 4 "$work/small.tern")" == "TERN" ]] || fail "fetched file is not a .tern artifact"
owner=$("${ternctl[@]}" get "$job" --json | jq -r .spec.owner)
[[ "$owner" == client ]] || fail "job owner is '$owner', want the certificate's name 'client'"
echo "job $job SUCCEEDED over mutual TLS, owned by 'client', artifact fetched"
[[ $("${ternctl[@]}" whoami | head -1) == "client (client certificate; sees its own jobs)" ]] ||
  fail "whoami over mutual TLS: $("${ternctl[@]}" whoami)"

expect_denied() {  # what, then a ternctl command line; it must exit 5 saying why
  local what="$1" status=0; shift
  "$@" >"$work/denied.out" 2>&1 || status=$?
  [[ $status -eq 5 ]] && grep -q "$what" "$work/denied.out" ||
    fail "want exit 5 and '$what', got $status: $(cat "$work/denied.out")"
}
expect_denied "differs from the client certificate's name" "${ternctl[@]}" --owner mallory list
other=("$build/cli/ternctl" --server "$server" --tls-ca "$c/ca.pem"
  --tls-cert "$c/other-client.pem" --tls-key "$c/other-client.key")
# Another owner's job answers exactly like an absent one (NOT_FOUND, exit 3).
expect_not_found() {  # a ternctl command line on job $job; it must say what an absent job says
  local status=0
  "$@" >"$work/hidden.out" 2>&1 || status=$?
  [[ $status -eq 3 ]] && grep -q "NOT_FOUND: job $job not found" "$work/hidden.out" &&
    grep -q "reason: JOB_NOT_FOUND" "$work/hidden.out" && ! grep -q "client" "$work/hidden.out" ||
    fail "want exit 3 and 'job $job not found' naming no owner, got $status: $(cat "$work/hidden.out")"
}
expect_not_found "${other[@]}" cancel "$job"
expect_not_found "${other[@]}" get "$job"
expect_denied 'may list only its own jobs' "${other[@]}" list --owner client
[[ $("${other[@]}" list --json | jq '.jobs | length') -eq 0 ]] ||
  fail "other-client's list shows others' jobs"
# An admin certificate (--tls-admin-names) sees every owner's jobs.
admin=("$build/cli/ternctl" --server "$server" --tls-ca "$c/ca.pem"
  --tls-cert "$c/server.pem" --tls-key "$c/server.key")
[[ $("${admin[@]}" list --json | jq -r '.jobs[].id') == "$job" ]] ||
  fail "the admin does not see job $job"
"${admin[@]}" get "$job" >/dev/null || fail "the admin cannot read job $job"
echo "a foreign --owner and another certificate's list are PERMISSION_DENIED, its cancel and get" \
  "NOT_FOUND; an admin sees every job"

# The agent registered under its certificate's name. A certificate outside
# --tls-agent-names cannot register as an agent, nor can an agent register
# under another name than its certificate's.
grep -q "agent client (127.0.0.1, version" "$work/ternd.log" ||
  fail "the agent did not register as its certificate's name 'client'"
intruder() {  # name, certificate, expected refusal, extra flags...
  local name="$1" cert="$2" refused="$3"; shift 3
  "$build/worker/agent/tern-agent" --server "$server" --cpu-slots 1 "$@" \
    --trainer "$build/worker/trainer/tern-trainer" --workdir "$work/$name" --metrics-listen "" \
    --tls-ca "$c/ca.pem" --tls-cert "$c/$cert.pem" --tls-key "$c/$cert.key" \
    >"$work/$name.out" 2>"$work/$name.log" &
  pids=("$!" "${pids[@]}")
  process_names[$!]=$name
  for i in $(seq 1 100); do
    grep -q "Register: PERMISSION_DENIED: $refused" "$work/$name.log" && return 0
    sleep 0.1
  done
  fail "$name was not refused: $(cat "$work/$name.log")"
}
intruder outsider other-client 'the client certificate "other-client" may not act as an agent'
intruder impostor client 'agent_id "someone-else" differs from the client certificate' \
  --agent-id someone-else
echo "an outside certificate and a name other than the certificate's are refused as agents"

for variant in plaintext no-client-cert; do
  flags=()
  [[ $variant == no-client-cert ]] && flags=(--tls-ca "$c/ca.pem")
  status=0
  "$build/cli/ternctl" --server "$server" --timeout 3 "${flags[@]}" get "$job" \
    >"$work/$variant.out" 2>&1 || status=$?
  [[ $status -eq 4 ]] || fail "$variant ternctl exited $status, want 4: $(cat "$work/$variant.out")"
done
echo "plaintext and certificate-less clients refused"
echo "PASS"

#!/usr/bin/env bash
# End to end with bearer tokens: ternd serves TLS (no client certificates)
# and takes the tokens of a --token-file that `ternctl token new` made; the
# agent proves itself with a token of the agent role, and a user's tiny job
# runs to SUCCEEDED owned by the token's name. Refused: a call without a
# token or with an unknown one (UNAUTHENTICATED, exit 5), another user's
# cancel and get (NOT_FOUND, as for an absent job), a user's token acting as an agent, a
# token over plaintext (exit 2), and ternd with tokens but no TLS (exit 1).
# An admin token sees every job; deleting a token's line revokes it without
# a restart, and an expiring token (--expires) is refused once expired.
# Quotas (--quota-file) apply to the token's name: whoami shows them, and a
# job beyond them is refused.
# usage: token_e2e.sh BUILD_DIR
set -euo pipefail
umask 077  # ternd refuses a token file that its group or others may write
build="$(cd "${1:?usage: token_e2e.sh BUILD_DIR}" && pwd)"
here="$(dirname "${BASH_SOURCE[0]}")"
source "$here/lib.sh"
make_test_certs
tc=("$build/cli/ternctl")

# Tokens: the token to its holder, the hash line to ternd.
touch "$work/tokens" && chmod g+w "$work/tokens"
status=0
"$build/server/ternd" --listen 127.0.0.1:0 --db "$work/bad.db" --metrics-listen "" \
  --tls-cert "$c/server.pem" --tls-key "$c/server.key" --token-file "$work/tokens" \
  >"$work/bad.out" 2>"$work/bad.log" || status=$?
[[ $status -eq 1 ]] && grep -q "is writable by its group or others" "$work/bad.log" ||
  fail "ternd with a group-writable token file: exit $status: $(cat "$work/bad.log")"
chmod go-w "$work/tokens"
for who in alice:"" bob:"" ops:--admin node-1:--agent; do
  name="${who%%:*}" role="${who#*:}"
  "${tc[@]}" token new "$name" $role -o "$work/$name.token" >>"$work/tokens"
done
[[ $(stat -c %a "$work/alice.token") == 600 ]] || fail "token file is not mode 0600"
grep -q "^sha256:[0-9a-f]\{64\} node-1 agent$" "$work/tokens" || fail "bad token line: $(cat "$work/tokens")"
grep -q "$(cat "$work/alice.token")" "$work/tokens" && fail "the token file of ternd holds a token"

status=0
"$build/server/ternd" --listen 127.0.0.1:0 --db "$work/bad.db" --metrics-listen "" \
  --token-file "$work/tokens" >"$work/bad.out" 2>"$work/bad.log" || status=$?
[[ $status -eq 1 ]] && grep -q "token_file: needs TLS" "$work/bad.log" ||
  fail "ternd with tokens and no TLS: exit $status: $(cat "$work/bad.log")"

printf 'alice cpu=2 jobs=3\n* cuda=0\n' >"$work/quotas"
ternd_flags=(--tls-cert "$c/server.pem" --tls-key "$c/server.key" --token-file "$work/tokens"
  --quota-file "$work/quotas")
client_flags=(--tls-ca "$c/ca.pem")
agent_flags=(--token-file "$work/node-1.token" --agent-id node-1)
start_service
as() { local who="$1"; shift; "${tc[@]}" --server "$server" --tls-ca "$c/ca.pem" --token-file "$work/$who.token" "$@"; }

write_small_job "$work/small.yaml"
job=$(as alice submit "$work/small.yaml")
as alice watch "$job" >"$work/watch.log" 2>&1 || fail "alice's job $job did not succeed"
[[ $(as alice get "$job" --json | jq -r .spec.owner) == alice ]] || fail "job $job is not alice's"
grep -q "agent node-1 (127.0.0.1, version" "$work/ternd.log" || fail "the agent did not register as node-1"
echo "job $job SUCCEEDED, owned by the token's name 'alice', run by agent 'node-1' (agent token)"
[[ $(as alice whoami) == "alice (bearer token; sees its own jobs)
quota: cpu 0 of 2 slots, cuda 0 slots, 0 of 3 unfinished jobs
server: ternd "[0-9]* ]] ||
  fail "alice's whoami: $(as alice whoami)"
[[ $(as ops whoami --json | jq -r '.name + " " + (.sees_every_job|tostring)') == "ops true" ]] ||
  fail "ops's whoami: $(as ops whoami --json)"

expect_exit() {  # code, text, then a command line
  local want="$1" what="$2" status=0; shift 2
  "$@" >"$work/refused.out" 2>&1 || status=$?
  [[ $status -eq $want ]] && grep -q "$what" "$work/refused.out" ||
    fail "want exit $want and '$what', got $status: $(cat "$work/refused.out")"
}
expect_exit 5 "requires a bearer token" "${tc[@]}" --server "$server" --tls-ca "$c/ca.pem" list
"${tc[@]}" token new mallory -o "$work/mallory.token" >/dev/null
expect_exit 5 "unknown or revoked bearer token" as mallory list
# alice's job answers bob exactly as an absent job does (NOT_FOUND, exit 3), naming no owner.
expect_exit 3 "NOT_FOUND: job $job not found" as bob cancel "$job"
expect_exit 3 "NOT_FOUND: job $job not found" as bob get "$job"
grep -q alice "$work/refused.out" && fail "bob's get names the owner: $(cat "$work/refused.out")"
expect_exit 3 "NOT_FOUND: job 99999 not found" as bob get 99999
[[ $(as bob list --json | jq '.jobs | length') -eq 0 ]] || fail "bob sees alice's jobs"
[[ $(as ops list --json | jq -r '.jobs[].id') == "$job" ]] || fail "the admin token does not see job $job"
expect_exit 2 "needs TLS" "${tc[@]}" --server "$server" --token-file "$work/alice.token" list
echo "no token, an unknown one, bob's cancel and get, and a plaintext token are refused; ops (admin) sees every job"
expect_exit 5 "alice's quota lets owner alice hold at most 2" as alice submit "$work/small.yaml" --ranks 4
expect_exit 5 "the default quota (\*) lets owner bob hold at most 0" \
  as bob submit "$work/small.yaml" --device cuda
echo "quotas: alice's 4-rank job and bob's CUDA job are refused"

# A user's token cannot act as an agent.
"$build/worker/agent/tern-agent" --server "$server" --cpu-slots 1 --agent-id alice \
  --trainer "$build/worker/trainer/tern-trainer" --workdir "$work/intruder" --metrics-listen "" \
  --tls-ca "$c/ca.pem" --token-file "$work/alice.token" >"$work/intruder.out" 2>"$work/intruder.log" &
pids=("$!" "${pids[@]}")
process_names[$!]=intruder
for i in $(seq 1 100); do
  grep -q 'the bearer token of "alice" may not act as an agent' "$work/intruder.log" && break
  [[ $i -eq 100 ]] && fail "alice's token was not refused as an agent: $(cat "$work/intruder.log")"
  sleep 0.1
done
echo "a user's token is refused as an agent"

# Revoking: delete the line; ternd notices within seconds, without a restart.
grep -v " bob$" "$work/tokens" >"$work/tokens.new" && mv "$work/tokens.new" "$work/tokens"
for i in $(seq 1 50); do
  as bob list >/dev/null 2>&1 || break
  [[ $i -eq 50 ]] && fail "bob's token still works 5 s after its line was deleted"
  sleep 0.1
done
expect_exit 5 "unknown or revoked bearer token" as bob list
as alice list >/dev/null || fail "alice's token stopped working"
echo "bob's token revoked by deleting its line"

# An expiring token works until its time, then is refused as expired.
"${tc[@]}" token new carol --expires 3s -o "$work/carol.token" >>"$work/tokens"
grep -q " carol expires=20[0-9-]*T[0-9:]*Z$" "$work/tokens" || fail "no expiry in: $(tail -1 "$work/tokens")"
for i in $(seq 1 50); do
  as carol list >/dev/null 2>&1 && break
  [[ $i -eq 50 ]] && fail "carol's new token was not taken within 5 s"
  sleep 0.1
done
sleep 3
expect_exit 5 'the bearer token of "carol" expired at' as carol list
expect_exit 2 "expected a duration" "${tc[@]}" token new dave --expires soon
echo "carol's token expired on time"
echo "PASS"

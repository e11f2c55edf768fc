#!/usr/bin/env bash
# End to end over mutual TLS: ternd serves gRPC with a certificate and
# requires client certificates from a test CA; tern-agent and ternctl present
# theirs, and a tiny 1-rank job runs to SUCCEEDED and its artifact is fetched.
# A plaintext ternctl and one without a client certificate are refused
# (exit 4, unavailable), and ternd refuses to start with a key that is not
# its certificate's (exit 1, naming the flag).
# usage: tls_e2e.sh BUILD_DIR
set -euo pipefail
build="$(cd "${1:?usage: tls_e2e.sh BUILD_DIR}" && pwd)"
here="$(dirname "${BASH_SOURCE[0]}")"
source "$here/lib.sh"
command -v openssl >/dev/null || { echo "SKIP: no openssl command"; exit 77; }
bash "$here/../tls/make_test_certs.sh" "$work/certs"
c="$work/certs"

# A key that does not match: ternd must not start.
status=0
"$build/server/ternd" --listen 127.0.0.1:0 --db "$work/bad.db" --metrics-listen "" \
  --tls-cert "$c/server.pem" --tls-key "$c/client.key" >"$work/bad.out" 2>"$work/bad.log" || status=$?
[[ $status -eq 1 ]] || fail "ternd with a mismatched key exited $status, want 1"
grep -q -- "--tls-key: .*client.key is not the private key of --tls-cert" "$work/bad.log" ||
  fail "unexpected error: $(cat "$work/bad.log")"
echo "ternd refuses a key that is not its certificate's"

ternd_flags=(--tls-cert "$c/server.pem" --tls-key "$c/server.key" --tls-client-ca "$c/ca.pem")
client_flags=(--tls-ca "$c/ca.pem" --tls-cert "$c/client.pem" --tls-key "$c/client.key")
start_service

cat >"$work/small.yaml" <<'YAML'
model: {arch: resnet20, width_multiplier: 0.25}
dataset: {kind: idx, path: /usr/share/datasets/fashion-mnist, max_train_examples: 256, max_eval_examples: 64}
quantization: {method: hla}
optimization: {epochs: 1, batch_size: 32}
resources: {ranks: 1, device_kind: cpu}
YAML
job=$("${ternctl[@]}" submit "$work/small.yaml")
"${ternctl[@]}" watch "$job" >"$work/watch.log" 2>&1 || fail "job $job did not succeed over TLS"
"${ternctl[@]}" fetch "$job" -o "$work/small.tern" >/dev/null || fail "fetch over TLS failed"
[[ "$(head -c 4 "$work/small.tern")" == "TERN" ]] || fail "fetched file is not a .tern artifact"
echo "job $job SUCCEEDED over mutual TLS, artifact fetched"

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

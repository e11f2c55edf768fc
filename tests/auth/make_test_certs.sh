#!/usr/bin/env bash
# Test certificates (EC P-256, valid 2 days) in DIR, made with the openssl
# command line: ca.pem/.key, server.pem/.key (signed by ca; names localhost
# and 127.0.0.1), client.pem/.key and other-client.pem/.key (signed by ca;
# common names "client" and "other-client"), an unrelated other-ca.pem/.key
# and other-server.pem/.key (signed by other-ca, the server's names). Used by tests/auth and tests/e2e/tls_e2e.sh.
# usage: make_test_certs.sh DIR
set -euo pipefail
dir="${1:?usage: make_test_certs.sh DIR}"
mkdir -p "$dir"
cd "$dir"
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >san.ext
new_key=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
for ca in ca other-ca; do
  openssl req -x509 "${new_key[@]}" -keyout "$ca.key" -out "$ca.pem" -days 2 -subj "/CN=$ca" \
    2>/dev/null
done
for who in server:ca client:ca other-client:ca other-server:other-ca; do
  name="${who%%:*}" ca="${who#*:}"
  openssl req "${new_key[@]}" -keyout "$name.key" -out "$name.csr" -subj "/CN=$name" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA "$ca.pem" -CAkey "$ca.key" -CAcreateserial -days 2 \
    -extfile san.ext -out "$name.pem" 2>/dev/null
done

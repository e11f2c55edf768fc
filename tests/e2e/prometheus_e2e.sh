#!/usr/bin/env bash
# End-to-end check of the metrics endpoints through a real Prometheus server:
# starts ternd and one tern-agent (2 CPU slots) on loopback with ephemeral
# ports, lints both /metrics outputs with `promtool check metrics`, starts
# Prometheus scraping both every second (honor_labels, as in
# deploy/prometheus/prometheus.yml), runs a tiny 2-rank job through ternctl,
# and reads the job's tern_job_step and ternd's tern_grpc_requests_total back
# through Prometheus's HTTP query API. Both /metrics endpoints serve HTTPS
# (--metrics-tls-cert, a test CA that Prometheus trusts through tls_config)
# and require a bearer token (--metrics-token-file), which Prometheus sends
# from the same file (authorization: credentials_file); without it they
# answer 401.
# usage: prometheus_e2e.sh BUILD_DIR   (exit 77 = skipped: no prometheus/promtool)
set -euo pipefail
build="$(cd "${1:?usage: prometheus_e2e.sh BUILD_DIR}" && pwd)"
prometheus="${TERN_PROMETHEUS:-$(command -v prometheus || echo /usr/bin/prometheus)}"
promtool="${TERN_PROMTOOL:-$(command -v promtool || echo /usr/bin/promtool)}"
for tool in "$prometheus" "$promtool"; do
  if [[ ! -x "$tool" ]]; then
    echo "SKIP: $tool not found (Debian package prometheus)"
    exit 77
  fi
done
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
make_test_certs
"$build/cli/ternctl" token new prometheus -o "$work/metrics.token" >/dev/null
https=(--metrics-tls-cert "$c/server.pem" --metrics-tls-key "$c/server.key")
ternd_flags=(--metrics-token-file "$work/metrics.token" "${https[@]}")
agent_flags=(--metrics-token-file "$work/metrics.token" "${https[@]}")
start_service
scrape_auth="Authorization: Bearer $(cat "$work/metrics.token")"
get() { curl -sS --max-time 10 --cacert "$c/ca.pem" "$@"; }
for endpoint in "$ternd_metrics" "$agent_metrics"; do
  code=$(get -o /dev/null -w '%{http_code}' "https://$endpoint/metrics")
  [[ "$code" == 401 ]] || fail "https://$endpoint/metrics without a token answered $code, want 401"
  code=$(get -o /dev/null -w '%{http_code}' "https://$endpoint/healthz")
  [[ "$code" == 200 ]] || fail "https://$endpoint/healthz answered $code, want 200"
  curl -s --max-time 5 "http://$endpoint/healthz" >/dev/null 2>&1 &&
    fail "http://$endpoint answered plain HTTP"
done
echo "both /metrics endpoints serve HTTPS only and refuse a scrape without the token (401);" \
  "/healthz stays open"

lint() {  # name address
  get -f -H "$scrape_auth" "https://$2/metrics" >"$work/$1.metrics" ||
    fail "cannot GET https://$2/metrics"
  if ! "$promtool" check metrics <"$work/$1.metrics" >"$work/$1.promtool" 2>&1; then
    cat "$work/$1.promtool"
    fail "promtool check metrics rejects $1's /metrics"
  fi
  echo "promtool check metrics: $1 OK ($(grep -c '^# TYPE' "$work/$1.metrics") families)"
}
lint ternd "$ternd_metrics"
lint agent "$agent_metrics"

prom_port=$(free_port)
cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: ternd
    honor_labels: true
    scheme: https
    tls_config: {ca_file: "$c/ca.pem"}
    authorization: {credentials_file: "$work/metrics.token"}
    static_configs: [{targets: ["$ternd_metrics"]}]
  - job_name: tern-agent
    honor_labels: true
    scheme: https
    tls_config: {ca_file: "$c/ca.pem"}
    authorization: {credentials_file: "$work/metrics.token"}
    static_configs: [{targets: ["$agent_metrics"]}]
YAML
"$promtool" check config "$work/prometheus.yml" >/dev/null || fail "promtool rejects the scrape config"
"$prometheus" --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.out" 2>"$work/prometheus.log" &
pids+=($!)
process_names[$!]=prometheus
prom="http://127.0.0.1:$prom_port"
for i in $(seq 1 600); do
  curl -fsS --max-time 2 "$prom/-/ready" >/dev/null 2>&1 && break
  [[ $i -eq 600 ]] && fail "prometheus did not become ready on $prom"
  sleep 0.1
done
echo "prometheus on $prom"

cat >"$work/job.yaml" <<'YAML'
model: {arch: resnet20, width_multiplier: 0.25}
dataset: {kind: idx, path: /usr/share/datasets/fashion-mnist, max_train_examples: 512, max_eval_examples: 64}
optimization: {epochs: 2, batch_size: 32}
resources: {ranks: 2, device_kind: cpu}
events: {progress_every_steps: 2}
YAML
id=$("${ternctl[@]}" submit "$work/job.yaml" --name e2e-prometheus)
[[ "$id" =~ ^[0-9]+$ ]] || fail "ternctl submit printed '$id', not a job id"
echo "submitted job $id"

# While it runs, check promtool again on the agent's output with live per-rank series.
for _ in $(seq 1 1200); do
  # Captured, not piped: under pipefail, grep -q quitting early would fail
  # the writer of a longer output (SIGPIPE) and so the test.
  scraped=$(get -f -H "$scrape_auth" "https://$agent_metrics/metrics" 2>/dev/null || true)
  if grep -q "^tern_job_step{job=\"$id\"" <<<"$scraped"; then
    lint agent-during-job "$agent_metrics"
    break
  fi
  "${ternctl[@]}" get "$id" --json 2>/dev/null | grep -qE '"state": *"(SUCCEEDED|FAILED|CANCELLED)' && break
  sleep 0.1
done
lint ternd-during-job "$ternd_metrics"

"${ternctl[@]}" watch "$id" >"$work/watch.out" 2>&1 || { cat "$work/watch.out"; fail "job $id did not succeed"; }
"${ternctl[@]}" get "$id" --json >"$work/job.json"
state=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("state",""))' "$work/job.json")
[[ "$state" == *SUCCEEDED* ]] || fail "job $id ended in state '$state'"
echo "job $id: $state"
lint ternd-after-job "$ternd_metrics"

# query PROMQL -> prints "labels value" lines of the instant vector
query() {
  curl -fsS --max-time 10 -G "$prom/api/v1/query" --data-urlencode "query=$1" |
    python3 -c '
import json, sys
r = json.load(sys.stdin)
assert r["status"] == "success", r
for s in r["data"]["result"]:
    print(json.dumps(s["metric"], sort_keys=True), s["value"][1])'
}
poll() {  # promql description -> succeeds once the query returns a sample with value > 0
  for _ in $(seq 1 60); do
    out=$(query "$1" 2>/dev/null || true)
    if [[ -n "$out" ]] && awk '{ if ($NF + 0 > 0) found = 1 } END { exit !found }' <<<"$out"; then
      echo "prometheus has $2:"; sed 's/^/  /' <<<"$out"
      return 0
    fi
    sleep 0.5
  done
  echo "last answer to '$1': ${out:-<empty>}"
  fail "prometheus has no $2 with a value > 0 after 30 s"
}
poll "tern_job_step{job=\"$id\"}" "tern_job_step for job $id"
poll "tern_job_accuracy{job=\"$id\",weights=\"ternary\"}" "tern_job_accuracy for job $id"
poll "sum(tern_grpc_requests_total{job=\"ternd\",method=\"SubmitJob\",code=\"OK\"})" "ternd's tern_grpc_requests_total for SubmitJob"
poll "tern_agent_slots{job=\"tern-agent\",device_kind=\"cpu\"}" "the agent's tern_agent_slots"
echo "PASS"

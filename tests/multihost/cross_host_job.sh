#!/usr/bin/env bash
# A 2-rank job with its ranks on two test hosts (own network namespaces and
# addresses, one bridge): rank 0's TCPStore rendezvous and Gloo's all-reduce
# cross the link. Each trainer listens for its peers on its host's advertised
# address (tern-agent --host -> TERN_BIND_ADDR), not on loopback.
# usage: cross_host_job.sh BUILD_DIR
set -euo pipefail
build="$(cd "${1:?usage: cross_host_job.sh BUILD_DIR}" && pwd)"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
mh_host srv 10
mh_host n1 11
mh_host n2 12
ternd_flags=(--lease-ttl 4s --tick-interval 250ms --restart-backoff 200ms --max-restart-backoff 1s)
agent_flags=(--shutdown-grace 5 --rpc-timeout 2)
mh_start_ternd srv
mh_start_agent n1
mh_start_agent n2

mh_write_job cross 1536 1   # 96 steps
job=$(mh_submit cross)
wait_job "$job" '.state == "JOB_STATE_RUNNING"' 60
# While it trains: the ranks' Gloo connections run between the hosts'
# addresses (not loopback), besides rank 1's connection to the TCPStore.
for i in $(seq 1 100); do
  [[ $(progress_step "$job" 1) -ge 2 ]] && break
  [[ $i -eq 100 ]] && fail "job $job made no progress: $(cat "$work/job.json")"
  sleep 0.2
done
rdv_port=$(grep -oE "rendezvous [0-9.]+:[0-9]+" "$ternd_log" | head -1 | cut -d: -f2)
for host in n1 n2; do
  other=n1; [[ $host == n1 ]] && other=n2
  conns=$(mh_tcp "$host")
  # The host runs only its agent (whose connections go to ternd) and its
  # trainer: a connection between the two hosts' addresses on ports other
  # than the TCPStore's is Gloo's (established, or closed by a fast end).
  gloo=$(awk -v me="${mh_ip[$host]}:" -v peer="${mh_ip[$other]}:" -v rdv=":$rdv_port" \
           '($3 == "01" || $3 == "06") && index($1, me) == 1 && index($2, peer) == 1 &&
            substr($1, length($1) - length(rdv) + 1) != rdv && substr($2, length($2) - length(rdv) + 1) != rdv' \
           <<<"$conns")
  [[ -n "$gloo" ]] || fail "no Gloo connection between ${mh_ip[$host]} and ${mh_ip[$other]} on $host: $conns"
  if awk '$3 == "01" && ($1 ~ /^127\./ || $2 ~ /^127\./)' <<<"$conns" | grep -q .; then
    fail "loopback connections on $host: $conns"
  fi
done
echo "the ranks' Gloo connections run between ${mh_ip[n1]} and ${mh_ip[n2]}"
wait_job "$job" '.state == "JOB_STATE_SUCCEEDED" or .state == "JOB_STATE_FAILED"' 180
jq -e '.state == "JOB_STATE_SUCCEEDED" and (.restarts // 0) == 0' "$work/job.json" >/dev/null ||
  fail "unexpected end: $(cat "$work/job.json")"
[[ "$(placement "$job" 1)" == $'0 n1\n1 n2' ]] || fail "ranks not on n1 and n2: $(placement "$job" 1)"
rendezvous=$(grep -oE "rendezvous [0-9.]+:[0-9]+" "$ternd_log" | head -1)
[[ "$rendezvous" == "rendezvous ${mh_ip[n1]}:"* ]] || fail "rendezvous not on n1's address: $rendezvous"
mh_check_history "$job"
mh_check_jobs_kept
mh_check_no_split_brain
events "$job"
python3 - "$work/events-$job.jsonl" <<'PY'
import json, sys, datetime
ev = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def t(e):
    w, _, f = e["time"].rstrip("Z").partition(".")
    return datetime.datetime.strptime(w, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc).timestamp() + float("0." + (f or "0"))
p = [e for e in ev if "progress" in e]
print("RESULT cross-host job: %d steps across the link in %.1f s (%.0f ms/step), submit to SUCCEEDED %.1f s"
      % (p[-1]["progress"]["step"], t(p[-1]) - t(p[0]), 1000 * (t(p[-1]) - t(p[0])) / max(1, p[-1]["progress"]["step"] - p[0]["progress"]["step"]),
         t(ev[-1]) - t(ev[0])))
PY
echo "PASS: job $job ran rank 0 on n1 (${mh_ip[n1]}), rank 1 on n2 (${mh_ip[n2]}): $rendezvous, SUCCEEDED"

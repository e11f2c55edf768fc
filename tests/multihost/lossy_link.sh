#!/usr/bin/env bash
# 20% packet loss and 50 ms delay each way between the two rank hosts (tc
# netem, or its NFQUEUE stand-in where the kernel lacks sch_netem): the job
# still succeeds. The same job on the clean link first gives the slowdown.
# usage: lossy_link.sh BUILD_DIR
set -euo pipefail
build="$(cd "${1:?usage: lossy_link.sh BUILD_DIR}" && pwd)"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
mh_host srv 10
mh_host n1 11
mh_host n2 12
mh_impair_check n1
ternd_flags=(--lease-ttl 4s --tick-interval 250ms --restart-backoff 200ms --max-restart-backoff 1s)
agent_flags=(--shutdown-grace 5 --rpc-timeout 2)
mh_start_ternd srv
mh_start_agent n1
mh_start_agent n2

# Seconds job $1 spent training (first to last progress event), and
# submission to SUCCEEDED.
timing() {
  events "$1"
  python3 - "$work/events-$1.jsonl" <<'PY'
import json, sys, datetime
ev = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def t(e):
    w, _, f = e["time"].rstrip("Z").partition(".")
    return datetime.datetime.strptime(w, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc).timestamp() + float("0." + (f or "0"))
p = [e for e in ev if "progress" in e]
print("%.2f %.2f %d" % (t(p[-1]) - t(p[0]), t(ev[-1]) - t(ev[0]), p[-1]["progress"]["step"] - p[0]["progress"]["step"]))
PY
}
run_job() {
  local job
  job=$(mh_submit "$1")
  wait_job "$job" '.state == "JOB_STATE_SUCCEEDED" or .state == "JOB_STATE_FAILED"' "$2"
  jq -e '.state == "JOB_STATE_SUCCEEDED"' "$work/job.json" >/dev/null ||
    fail "job $1 ($job) ended $(cat "$work/job.json")"
  mh_check_history "$job"
  echo "$job $(jq -r ".restarts // 0" "$work/job.json")"
}
mh_write_job clean 256 1   # 16 steps
read -r clean_job _ <<<"$(run_job clean 120)"
read -r clean_train clean_total steps <<<"$(timing "$clean_job")"
echo "clean link: $steps steps in $clean_train s, submit to SUCCEEDED $clean_total s"

mh_impair n1 n2 50 0.2
echo "link n1 <-> n2: 50 ms delay and 20% loss each way ($mh_impair_method)"
mh_write_job lossy 256 1 60   # the same job; a collective may take longer over this link
read -r lossy_job restarts <<<"$(run_job lossy 240)"
read -r lossy_train lossy_total steps <<<"$(timing "$lossy_job")"
mh_check_jobs_kept
mh_check_no_split_brain
cat "$work"/impair-*.out 2>/dev/null | grep passed | sed 's/^/netimpair: /' || true
slowdown=$(awk -v a="$lossy_train" -v b="$clean_train" 'BEGIN { printf "%.1f", a / b }')
echo "RESULT lossy link (50 ms, 20% loss each way, $mh_impair_method): $steps steps in $lossy_train s against $clean_train s clean (${slowdown}x), submit to SUCCEEDED $lossy_total s against $clean_total s, $restarts restarts"
echo "PASS: job $lossy_job SUCCEEDED over the lossy link"

#!/usr/bin/env bash
# SubmitJob/GetJob load (tern_service_load_bench, 1 and 16 clients, 5 s each)
# against a fresh ternd without agents, with or without a --quota-file that
# binds the bench's owner (a slot limit and a jobs limit: every submit checks
# the owner's unfinished jobs, every admission pass its held slots).
#   bench/service/quota_overhead.sh none|quota   (from the repository root,
#   after building ternd and tern_service_load_bench in build/)
set -euo pipefail
mode=${1:?usage: quota_overhead.sh none|quota}
T=$(mktemp -d)
flags=()
if [[ $mode == quota ]]; then
  printf 'bench cpu=4 jobs=1000000 priority=10\n* cuda=0\n' > $T/quotas
  flags=(--quota-file $T/quotas)
fi
build/server/ternd --listen 127.0.0.1:0 --db $T/ternd.db --artifact-root $T/art --checkpoint-root $T/ck \
  --metrics-listen 127.0.0.1:0 "${flags[@]}" > $T/out 2> $T/log &
pid=$!
for i in $(seq 50); do grep -q "listening on" $T/out 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/ternd listening on //p' $T/out)
build/bench/service/tern_service_load_bench --server $addr --concurrency 1,16 --seconds 5 | sed "s/^/$mode /"
kill $pid; wait $pid || true
rm -rf $T

#!/usr/bin/env bash
# The web console in a real browser: ternd (bearer tokens, TLS on gRPC, the
# console on --web-listen 127.0.0.1:0) with one tern-agent runs a real tiny
# Fashion-MNIST job; headless Chromium (Debian's /usr/bin/chromium, driven by
# playwright-core from tests/web/package-lock.json) checks, through the pages
# alone: a browser without a token is refused, the job is listed, its loss
# curve gets points while it runs, it reaches SUCCEEDED with its result and a
# working download, its epochs and HLA's switch listed with top-1, a job
# cancelled with ternctl shows CANCELLED with its reason, and the agents page
# lists the agent. Screenshots are left in
# BUILD_DIR/tests/web/screenshots.
# usage: console_e2e.sh BUILD_DIR
set -euo pipefail
umask 077
build="$(cd "${1:?usage: console_e2e.sh BUILD_DIR}" && pwd)"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../e2e/lib.sh"
command -v chromium >/dev/null || fail "chromium is not installed (scripts/install-deps.sh)"
npm_dir="$build/tests/web/npm"
status=0
bash "$here/../deploy/npm_install.sh" "$npm_dir" "$here" || status=$?
[[ $status -eq 0 ]] || exit "$status"  # 77: no node or npm (optional tools)
shots="$build/tests/web/screenshots"
rm -rf "$shots" && mkdir -p "$shots"
make_test_certs
tc=("$build/cli/ternctl")

touch "$work/tokens"
for who in alice:"" node-1:--agent; do
  name="${who%%:*}" role="${who#*:}"
  "${tc[@]}" token new "$name" $role -o "$work/$name.token" >>"$work/tokens"
done
ternd_flags=(--tls-cert "$c/server.pem" --tls-key "$c/server.key" --token-file "$work/tokens"
  --web-listen 127.0.0.1:0)
client_flags=(--tls-ca "$c/ca.pem")
agent_flags=(--token-file "$work/node-1.token" --agent-id node-1)
start_service
web=$(wait_for_line "$work/ternd.out" "web console on")
echo "web console on http://$web/"
as() { "${tc[@]}" --server "$server" --tls-ca "$c/ca.pem" --token-file "$work/alice.token" "$@"; }

# Long enough (3 epochs of 4096 images, a progress event every step) for the
# browser to see the curve grow while the job runs.
cat >"$work/job.yaml" <<'YAML'
name: web-console-e2e
model: {arch: resnet20, width_multiplier: 0.25}
dataset: {kind: idx, path: /usr/share/datasets/fashion-mnist, max_train_examples: 4096, max_eval_examples: 64}
quantization: {method: hla}
optimization: {epochs: 3, batch_size: 32}
resources: {ranks: 1, device_kind: cpu}
events: {progress_every_steps: 1}
YAML
job=$(as submit "$work/job.yaml")
write_small_job "$work/small.yaml"
cancelled=$(as submit "$work/small.yaml")
reason="stopped by console_e2e"
as cancel "$cancelled" --reason "$reason" >/dev/null
echo "job $job submitted; job $cancelled cancelled"

WEB_URL="http://$web/" TOKEN="$(cat "$work/alice.token")" JOB="$job" CANCELLED_JOB="$cancelled" \
  CANCEL_REASON="$reason" AGENT=node-1 SCREENSHOTS="$shots" NPM_DIR="$npm_dir" \
  CHROMIUM="$(command -v chromium)" HOME="$work" \
  node "$here/console_check.mjs" || fail "the browser checks failed"
[[ $(as get "$job" --json | jq -r .state) == JOB_STATE_SUCCEEDED ]] || fail "job $job did not succeed"
[[ -s "$shots/job.png" && -s "$shots/jobs.png" ]] || fail "no screenshots in $shots"
# The console's download is the artifact itself, and its summary ternctl's.
"${tc[@]}" inspect "$shots/artifact.tern" >"$work/inspect.txt" || fail "ternctl inspect of the download failed"
grep -q "bits each" "$work/inspect.txt" || fail "ternctl inspect: $(cat "$work/inspect.txt")"
echo "PASS: the web console showed the job live, its success, the cancelled job and the agent; screenshots in $shots"

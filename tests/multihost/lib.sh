# Test hosts for the multihost tests (source it; needs `build`, the build
# directory, set first). Each test host is a network namespace with its own
# address on 10.77.0.0/24, joined to the others through one bridge that lives
# in a namespace of its own: nothing is added to the machine's own network,
# and all traffic between the hosts stays on their own addresses. ternd and
# the agents run inside the hosts with the flags a real deployment uses:
# listening on the host's address, advertising it (tern-agent --host).
#
#   mh_host NAME OCTET       a host at 10.77.0.OCTET
#   mh_start_ternd HOST      ternd there ($server), flags: ternd_flags
#   mh_start_agent HOST      an agent there (id = HOST, 1 CPU slot), flags: agent_flags
#   mh_ctl ARGS...           ternctl against $server (from ternd's host)
#   mh_link HOST down|up     pulls / plugs the host's cable (its bridge port)
#   mh_block A B / mh_unblock A B   cuts A and B off from each other
#   mh_tcp HOST              the host's TCP connections
#   mh_impair A B MS LOSS    delay and loss on A<->B (tc netem, else NFQUEUE + netimpair.py);
#                            mh_impair_check HOST first skips (77) where neither works
#
# Every trainer runs under a wrapper that writes its start and end (one
# clock for all hosts: they share the machine) to $ledger, so that
# mh_check_no_split_brain can prove that no rank ran twice at once.
# Everything (processes, namespaces, impairers) is torn down on exit, also
# when a check fails. Exit 77 (skip) with the reason where namespaces cannot
# be made.

for bin in server/ternd worker/agent/tern-agent cli/ternctl worker/trainer/tern-trainer; do
  [[ -x "$build/$bin" ]] || { echo "FAIL: $build/$bin is not built"; exit 1; }
done
mh_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mh_id="tmh$$"           # namespace names: $mh_id-sw, $mh_id-<host>
mh_subnet=10.77.0
declare -A mh_ip=()     # host -> address
declare -A process_names=()
mh_hosts=()
pids=()                 # stopped (SIGTERM) in this order at exit
mh_side_pids=()         # impairers: SIGTERM, not checked
work=""

mh_skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }
now_ms() { date +%s%3N; }

# Whether this machine can make test hosts; skips (77) saying why not.
mh_preflight() {
  [[ $EUID -eq 0 ]] || mh_skip "network namespaces need root (running as uid $EUID)"
  command -v ip >/dev/null || mh_skip "no ip command (Debian package iproute2)"
  local probe="$mh_id-probe" err
  if ! err=$(ip netns add "$probe" 2>&1); then
    mh_skip "cannot create network namespaces: $err"
  fi
  if ! err=$( { ip -n "$probe" link add p0 type veth peer name p1 &&
                ip -n "$probe" link add b0 type bridge; } 2>&1 >/dev/null); then
    ip netns del "$probe" 2>/dev/null
    mh_skip "network namespaces lack veth pairs or bridges: $err"
  fi
  ip netns del "$probe"
}

mh_cleanup() {
  local rc=$? pid status ns
  trap - EXIT
  # Links back first, so that agents can drain and deregister.
  for ns in "${mh_hosts[@]}"; do
    ip -n "$mh_id-sw" link set "p-$ns" up 2>/dev/null || true
  done
  for pid in "${mh_side_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  # Agents first (they stop their trainers), then ternd: each must exit 0
  # within 20 s of SIGTERM, as in tests/e2e.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
      echo "FAIL: process $pid (${process_names[$pid]:-?}) did not exit within 20 s of SIGTERM"
      [[ $rc -eq 0 ]] && rc=1
    fi
    status=0
    wait "$pid" 2>/dev/null || status=$?
    if [[ $status -ne 0 && $rc -eq 0 ]]; then
      echo "FAIL: process $pid (${process_names[$pid]:-?}) exited with status $status after SIGTERM"
      rc=1
    fi
  done
  for pid in "${mh_side_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  # Whatever still runs in a test host was started by this test (a trainer
  # orphaned by a killed agent, a wrapper's watcher): by its pid.
  for ns in "${mh_hosts[@]}"; do
    for pid in $(ip netns pids "$mh_id-$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
  done
  for ns in "${mh_hosts[@]}" sw; do
    for _ in $(seq 1 50); do
      [[ -z "$(ip netns pids "$mh_id-$ns" 2>/dev/null)" ]] && break
      sleep 0.1
    done
    ip netns del "$mh_id-$ns" 2>/dev/null || true
  done
  if [[ $rc -ne 0 && $rc -ne 77 && -n "$work" ]]; then
    for log in "$work"/*.log "$work"/*.out; do
      [[ -f "$log" ]] || continue
      echo "--- tail of $log"; tail -n 40 "$log"
    done
    [[ -f "$work/ledger" ]] && { echo "--- ledger"; cat "$work/ledger"; }
  fi
  if [[ -n "${MH_KEEP:-}" ]]; then echo "kept $work"; elif [[ -n "$work" ]]; then rm -rf "$work"; fi
  exit "$rc"
}
trap mh_cleanup EXIT
trap 'exit 143' TERM INT

mh_preflight
work="$(mktemp -d "${TMPDIR:-/tmp}/tern-multihost.XXXXXX")"
ledger="$work/ledger"
: >"$ledger"
ip netns add "$mh_id-sw"
ip -n "$mh_id-sw" link add br0 type bridge
ip -n "$mh_id-sw" link set br0 up

# A test host NAME at $mh_subnet.OCTET: its own namespace, loopback and
# eth0, whose peer is port p-NAME of the bridge.
mh_host() {
  local name=$1 ns="$mh_id-$1" ip="$mh_subnet.$2"
  ip netns add "$ns"
  mh_hosts+=("$name")
  mh_ip[$name]=$ip
  ip link add eth0 netns "$ns" type veth peer name "p-$name" netns "$mh_id-sw"
  ip -n "$mh_id-sw" link set "p-$name" master br0
  ip -n "$mh_id-sw" link set "p-$name" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$ip/24" dev eth0
  ip -n "$ns" link set eth0 up
}
# Runs a command on host $1. Background processes whose pid matters are
# started with `ip netns exec` itself (it execs: same pid), not through this
# function (a function in the background is a subshell).
mh_exec() { local host=$1; shift; ip netns exec "$mh_id-$host" "$@"; }

# Host HOST's cable pulled (down) or plugged in again (up): its bridge port.
mh_link() { ip -n "$mh_id-sw" link set "p-$1" "$2"; }

# Hosts A and B cut off from each other (each drops what it would send the
# other: a blackhole route, silent as a partition, no error to the sender's
# sockets), or joined again; their traffic with every other host flows.
mh_block() {
  mh_exec "$1" ip route add blackhole "${mh_ip[$2]}/32"
  mh_exec "$2" ip route add blackhole "${mh_ip[$1]}/32"
}
mh_unblock() {
  mh_exec "$1" ip route del blackhole "${mh_ip[$2]}/32"
  mh_exec "$2" ip route del blackhole "${mh_ip[$1]}/32"
}

# The TCP connections of host $1 (its namespace's /proc/net/tcp and tcp6,
# IPv4-mapped addresses as IPv4), one "LOCAL_IP:PORT REMOTE_IP:PORT STATE"
# line each (STATE 01: established, 0A: listening).
mh_tcp() {
  mh_exec "$1" cat /proc/net/tcp /proc/net/tcp6 | python3 -c '
import socket, struct, sys
def addr(a):
    ip, port = a.split(":")
    words = struct.pack("<" + "I" * (len(ip) // 8), *[int(ip[i:i + 8], 16) for i in range(0, len(ip), 8)])
    if len(words) == 16 and words[:12] == b"\0" * 10 + b"\xff\xff":
        words = words[12:]
    family = socket.AF_INET if len(words) == 4 else socket.AF_INET6
    return "%s:%d" % (socket.inet_ntop(family, words), int(port, 16))
for line in sys.stdin.read().splitlines():
    f = line.split()
    if len(f) > 3 and ":" in f[1] and f[0] != "sl":
        print(addr(f[1]), addr(f[2]), f[3])'
}

# Packets from A to B and from B to A delayed by MS milliseconds and lost
# with probability LOSS (e.g. 0.2), each way, as tc netem does on each host's
# interface; traffic with other hosts is left alone. Packets leave as the
# wire carries them (gso_max_segs 1), not as 64 KB veth super-packets. Uses
# tc netem (under an htb class, selected by a u32 filter on the peer's
# address) where the kernel has sch_netem, else an NFQUEUE rule and
# netimpair.py in each host; sets mh_impair_method.
# How mh_impair will work between the hosts (sets mh_impair_method), or a
# skip (77) saying why it cannot: call before spending time on a baseline.
mh_impair_check() {
  if mh_exec "$1" tc qdisc add dev eth0 root handle 9: netem delay 1ms 2>/dev/null; then
    mh_exec "$1" tc qdisc del dev eth0 root
    mh_impair_method="tc netem"
  elif command -v iptables >/dev/null; then
    mh_impair_method="NFQUEUE + netimpair.py (this kernel has no sch_netem)"
  else
    mh_skip "this kernel has no sch_netem and there is no iptables command for the NFQUEUE stand-in (Debian package iptables; scripts/tools.list)"
  fi
}

mh_impair() {
  local a=$1 b=$2 ms=$3 loss=$4 pair from to queue=7 out
  mh_impair_method="tc netem"
  for pair in "$a $b" "$b $a"; do
    read -r from to <<<"$pair"
    mh_exec "$from" ip link set dev eth0 gso_max_segs 1
    if [[ "$mh_impair_method" == "tc netem" ]] &&
       mh_exec "$from" tc qdisc add dev eth0 root handle 1: htb default 1 2>/dev/null &&
       mh_exec "$from" tc class add dev eth0 parent 1: classid 1:1 htb rate 10gbit 2>/dev/null &&
       mh_exec "$from" tc class add dev eth0 parent 1: classid 1:2 htb rate 10gbit 2>/dev/null &&
       mh_exec "$from" tc qdisc add dev eth0 parent 1:2 handle 20: netem delay "${ms}ms" \
         loss "$(awk -v l="$loss" 'BEGIN { print l * 100 }')%" 2>/dev/null &&
       mh_exec "$from" tc filter add dev eth0 parent 1: protocol ip prio 1 u32 \
         match ip dst "${mh_ip[$to]}/32" flowid 1:2 2>/dev/null; then
      continue
    fi
    mh_exec "$from" tc qdisc del dev eth0 root 2>/dev/null || true
    [[ "$from" == "$a" ]] || fail "tc netem worked on $a but not on $from"
    mh_impair_method="NFQUEUE + netimpair.py (this kernel has no sch_netem)"
    break
  done
  [[ "$mh_impair_method" == "tc netem" ]] && return 0
  command -v iptables >/dev/null ||
    mh_skip "this kernel has no sch_netem and there is no iptables command for the NFQUEUE stand-in (Debian package iptables; scripts/tools.list)"
  for pair in "$a $b" "$b $a"; do
    read -r from to <<<"$pair"
    out="$work/impair-$from.out"
    ip netns exec "$mh_id-$from" python3 "$mh_dir/netimpair.py" --queue "$queue" --delay-ms "$ms" --loss "$loss" \
      >"$out" 2>&1 &
    mh_side_pids+=($!)
    for i in $(seq 1 50); do
      grep -q ready "$out" 2>/dev/null && break
      [[ $i -eq 50 ]] && fail "netimpair.py did not start on $from: $(cat "$out")"
      sleep 0.1
    done
    mh_exec "$from" iptables -A OUTPUT -d "${mh_ip[$to]}" -j NFQUEUE --queue-num "$queue"
  done
}

# file pattern [pid] -> prints the first HOST:PORT of the first matching
# line; fails after 60 s, or at once when process pid has exited.
wait_for_line() {
  for _ in $(seq 1 600); do
    if [[ -n "${3:-}" ]] && ! kill -0 "$3" 2>/dev/null && ! grep -q "$2" "$1" 2>/dev/null; then
      fail "process $3 (${process_names[$3]:-?}) exited before writing '$2' to $1: $(tail -n 5 "${1%.out}.log" 2>/dev/null)"
    fi
    if grep -q "$2" "$1" 2>/dev/null; then
      grep -m1 "$2" "$1" | grep -oE '[0-9]+(\.[0-9]+){3}:[0-9]+' | head -1
      return 0
    fi
    sleep 0.1
  done
  fail "timed out waiting for '$2' in $1"
}

# The trainer wrapper: records "start TIME JOB ATTEMPT RANK AGENT PID" in the
# ledger, then execs tern-trainer (same pid, same process group: the agent's
# signals reach it unchanged). A watcher outside the process group (setsid,
# no inherited descriptors) records "end TIME ..." once the pid is gone. The
# trainer's events also go to $work/out/JOB-ATTEMPT-RANK.jsonl (through a tee
# that ignores the agent's stop signals and ends with the trainer's stdout),
# which tells how far a rank got even when its agent could not report it.
mkdir -p "$work/out"
cat >"$work/trainer-wrapper.sh" <<'SH'
#!/bin/bash
id="$TERN_JOB_ID $TERN_ATTEMPT $TERN_RANK $TERN_AGENT_ID $$"
echo "start $(date +%s.%N) $id" >>"$MH_LEDGER"
MH_PID=$$ MH_ID="$id" setsid bash -c \
  'tail --pid="$MH_PID" -s 0.05 -f /dev/null; echo "end $(date +%s.%N) $MH_ID" >>"$MH_LEDGER"' \
  </dev/null >/dev/null 2>&1 &
exec > >(trap '' USR1 INT TERM; exec tee -a "$MH_OUT/$TERN_JOB_ID-$TERN_ATTEMPT-$TERN_RANK.jsonl")
exec "$MH_TRAINER" "$@"
SH
chmod +x "$work/trainer-wrapper.sh"

# ternd on host $1, listening on the host's address. Flags: ternd_flags.
ternd_flags=()
ternd_starts=0
mh_start_ternd() {
  local host=$1 out log
  ternd_host=$host
  ternd_starts=$((ternd_starts + 1))
  out="$work/ternd-$ternd_starts.out"
  log="$work/ternd-$ternd_starts.log"
  ip netns exec "$mh_id-$host" "$build/server/ternd" --listen "${mh_ip[$host]}:7070" --db "$work/ternd.db" \
    --metrics-listen "${mh_ip[$host]}:0" \
    --artifact-root "$work/artifacts" --checkpoint-root "$work/checkpoints" \
    "${ternd_flags[@]}" >"$out" 2>"$log" &
  ternd=$!
  ternd_log=$log
  pids+=("$ternd")
  process_names[$ternd]=ternd
  server=$(wait_for_line "$out" "listening on" "$ternd")
  [[ "$server" == "${mh_ip[$host]}:7070" ]] || fail "ternd listens on $server"
}

# An agent on host $1 with id $1, 1 CPU slot, listening (metrics) on and
# advertising the host's address (another with `--host ADDR` as $2 $3).
# Flags: agent_flags, then the rest.
agent_flags=()
declare -A agent_pid=() agent_log=()
mh_start_agent() {
  local host=$1 out log n=0 advertise
  shift
  advertise=${mh_ip[$host]}
  if [[ "${1:-}" == --host ]]; then advertise=$2; shift 2; fi
  while [[ -f "$work/agent-$host-$n.log" ]]; do n=$((n + 1)); done
  out="$work/agent-$host-$n.out"
  log="$work/agent-$host-$n.log"
  ip netns exec "$mh_id-$host" env MH_LEDGER="$ledger" MH_OUT="$work/out" MH_TRAINER="$build/worker/trainer/tern-trainer" \
    "$build/worker/agent/tern-agent" --server "$server" --agent-id "$host" \
    --host "$advertise" --metrics-listen "${mh_ip[$host]}:0" --cpu-slots 1 \
    --trainer "$work/trainer-wrapper.sh" --workdir "$work/agents/$host" \
    "${agent_flags[@]}" "$@" >"$out" 2>"$log" &
  agent_pid[$host]=$!
  agent_log[$host]=$log
  process_names[$!]="tern-agent on $host"
  pids=("$!" "${pids[@]}")  # stopped first: it stops its trainers
  wait_for_line "$out" "metrics on" "$!" >/dev/null
}

mh_ctl() { mh_exec "$ternd_host" "$build/cli/ternctl" --server "$server" --owner multihost "$@"; }

# A small 2-rank job in $work/$1.yaml: ResNet-20 at width 0.25, $2 training
# images (steps = $2 / 16 per epoch: batch_size is per rank), $3 epochs, a checkpoint every 4 steps,
# progress every step, collective timeout $4 s (default 10).
mh_write_job() {
  cat >"$work/$1.yaml" <<YAML
name: $1
model: {arch: resnet20, width_multiplier: 0.25}
dataset: {kind: idx, path: /usr/share/datasets/fashion-mnist, max_train_examples: $2, max_eval_examples: 64}
quantization: {method: hla}
optimization: {epochs: $3, batch_size: 16}
checkpoint: {every_steps: 4}
events: {progress_every_steps: 1}
resources: {ranks: 2, device_kind: cpu, threads_per_rank: 1}
collective_timeout_seconds: ${4:-10}
max_restarts: 3
YAML
}

submitted=()  # every acknowledged job id
mh_submit() {
  local id
  id=$(mh_ctl submit "$work/$1.yaml") || fail "submit $1 failed"
  submitted+=("$id")
  echo "$id"
}

job_json() { mh_ctl get "$1" --json >"$work/job.json" 2>"$work/get.err"; }
# Waits up to $3 seconds (default 120) until job $1's JSON satisfies jq
# filter $2.
wait_job() {
  local i n=$(( ${3:-120} * 10 ))
  for i in $(seq 1 "$n"); do
    if job_json "$1" && jq -e "$2" "$work/job.json" >/dev/null; then return 0; fi
    sleep 0.1
  done
  fail "timed out waiting for job $1 to satisfy $2: $(cat "$work/job.json" "$work/get.err" 2>/dev/null)"
}
events() { mh_ctl logs "$1" --json >"$work/events-$1.jsonl"; }
# Newest step committed by attempt $2 of job $1 (-1: none yet).
committed_step() {
  events "$1"
  jq -s --argjson a "$2" '[.[] | select(.attempt == $a and .checkpoint_committed)
                           | .checkpoint_committed.step] | max // -1' "$work/events-$1.jsonl"
}
wait_checkpoint() {  # job attempt min-step [seconds]
  local i
  for i in $(seq 1 $(( ${4:-120} * 5 ))); do
    [[ $(committed_step "$1" "$2") -ge $3 ]] && return 0
    sleep 0.2
  done
  fail "job $1 attempt $2 committed no checkpoint at step >= $3"
}
# Newest progress step of attempt $2 of job $1 (-1: none).
progress_step() {
  events "$1"
  jq -s --argjson a "$2" '[.[] | select(.attempt == $a and .progress) | .progress.step]
                          | max // -1' "$work/events-$1.jsonl"
}
# The agents job $1's attempt $2 ran on, from the ledger: "RANK AGENT" lines.
placement() {
  awk -v j="$1" -v a="$2" '$1 == "start" && $3 == j && $4 == a { print $5, $6 }' "$ledger" | sort -u
}

# No split brain: no two processes of one rank of a job, and no processes of
# two attempts of a job, ran at the same time (ledger intervals; a process
# without an end record runs still, until now). A process runs until it is
# gone, or until its agent sent it SIGTERM or SIGKILL (agent log "stopping
# trainer ... with SIGTERM"): the trainer has no handler for those, so it runs
# no more of its own code after one, though the kernel may take a while to
# tear it down (printed as the exit lag). SIGUSR1, a drain, is not a stop: the
# trainer goes on to a checkpoint.
mh_check_no_split_brain() {
  python3 - "$ledger" "$work" <<'PY' || fail "split brain (see above)"
import datetime, glob, os, re, sys, time
starts, ends = {}, {}
for line in open(sys.argv[1]):
    kind, t, job, attempt, rank, agent, pid = line.split()
    key = (job, int(attempt), int(rank), agent, pid)
    (starts if kind == "start" else ends)[key] = float(t)
first = min(starts.values()) if starts else time.time()
day = datetime.datetime.fromtimestamp(first, datetime.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
stops = {}  # (job, attempt, rank, agent) -> first SIGTERM/SIGKILL
pattern = re.compile(r"^[IWE](\d\d):(\d\d):(\d\d\.\d+) .*\[job (\S+) attempt (\d+) rank (\d+)/\d+\] "
                     r"stopping trainer \((.*)\) with (SIGTERM|SIGKILL)")
for log in glob.glob(os.path.join(sys.argv[2], "agent-*-*.log")):
    agent = os.path.basename(log).split("-")[1]
    for line in open(log, errors="replace"):
        m = pattern.match(line)
        if not m:
            continue
        t = day.timestamp() + int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
        if t < first - 43200:
            t += 86400  # past midnight
        key = (m.group(4), int(m.group(5)), int(m.group(6)), agent)
        stops[key] = min(stops.get(key, t), t)
now = time.time()
spans, lag = [], 0.0
for k, s in starts.items():
    gone = ends.get(k, now)
    stop = stops.get(k[:4])
    end = min(gone, stop) if stop is not None and stop >= s else gone
    if stop is not None and stop >= s:
        lag = max(lag, gone - stop)
    spans.append((k, s, end))
bad = 0
for i, (a, s1, e1) in enumerate(spans):
    for b, s2, e2 in spans[i + 1:]:
        if a[0] != b[0] or a[1] == b[1] and a[2] != b[2]:
            continue  # other job, or other ranks of one attempt
        if s1 < e2 and s2 < e1:
            what = "rank %d twice" % a[2] if a[2] == b[2] and a[1] == b[1] else "two attempts"
            print("SPLIT BRAIN: job %s %s: attempt %d rank %d on %s [%.2f, %.2f] and attempt %d "
                  "rank %d on %s [%.2f, %.2f]" % (a[0], what, a[1], a[2], a[3], s1, e1,
                                                  b[1], b[2], b[3], s2, e2))
            bad += 1
if not bad:
    print("ledger: %d trainer processes, none running while another of its rank or of another attempt"
          " of its job ran (longest exit after a stop signal: %.2f s)" % (len(spans), lag))
sys.exit(1 if bad else 0)
PY
}

# Job $1's history is whole: sequence numbers increase, attempts never go
# back, and each attempt resumed from a checkpoint no older than the newest
# one any earlier attempt committed (no committed checkpoint lost).
mh_check_history() {
  events "$1"
  jq -s -e '[.[].sequence | tonumber] as $s | $s == ($s | sort) and ($s | unique | length) == ($s | length)' \
    "$work/events-$1.jsonl" >/dev/null || fail "job $1: event sequence numbers out of order or repeated"
  jq -s -e '[.[].attempt] as $a | $a == ($a | sort)' "$work/events-$1.jsonl" >/dev/null ||
    fail "job $1: events of an earlier attempt after a later one"
  local bad
  bad=$(jq -r -s '
    . as $e | [$e[] | select(.attempt_started)] as $starts
    | $starts[] | . as $s
    | ([$e[] | select(.checkpoint_committed and .attempt < $s.attempt) | .checkpoint_committed.step] | max // 0) as $newest
    | select(($s.attempt_started.resumed_from_step // 0) < $newest)
    | "attempt \($s.attempt) resumed from step \($s.attempt_started.resumed_from_step // 0), older than committed step \($newest)"' \
    "$work/events-$1.jsonl")
  [[ -z "$bad" ]] || fail "job $1 lost a committed checkpoint: $bad"
}

# Every acknowledged job is still known to ternd.
mh_check_jobs_kept() {
  local id listed
  listed=$(mh_ctl list --json | jq -r '.jobs[].id')
  for id in "${submitted[@]}"; do
    grep -qx "$id" <<<"$listed" || fail "acknowledged job $id is missing from ternd's list"
  done
}

# Fault-to-recovery numbers of job $1 for a fault injected at wall-clock
# $2 ms into attempt $3, from ternd's events: detection (the attempt leaves
# RUNNING), restart (the next attempt ADMITTED), running again (its first
# progress event), steps lost (newest step reported before the fault minus
# the step the next attempt resumed from). Prints one "RESULT" line,
# label $4.
mh_report() {
  events "$1"
  python3 - "$work/events-$1.jsonl" "$2" "$3" "$4" "$work/out/$1-$3-0.jsonl" <<'PY'
import datetime, json, sys
path, fault_ms, attempt, label, own = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def t(e):
    s = e["time"].rstrip("Z")
    whole, _, frac = s.partition(".")
    base = datetime.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return base.timestamp() + float("0." + (frac or "0"))
ev = [json.loads(l) for l in open(path) if l.strip()]
fault = fault_ms / 1000.0
def first(pred):
    for e in ev:
        if pred(e):
            return e
    return None
left = first(lambda e: e["attempt"] == attempt and "state_change" in e and
             e["state_change"].get("from_state") == "JOB_STATE_RUNNING")
admitted = first(lambda e: e["attempt"] == attempt + 1 and "state_change" in e and
                 e["state_change"].get("to_state") == "JOB_STATE_ADMITTED")
started = first(lambda e: e["attempt"] == attempt + 1 and "attempt_started" in e)
progress = first(lambda e: e["attempt"] == attempt + 1 and "progress" in e)
before = [e["progress"]["step"] for e in ev
          if e["attempt"] == attempt and "progress" in e and t(e) <= fault]
reached = max([e["progress"]["step"] for e in ev if e["attempt"] == attempt and "progress" in e] or [0])
# Steps the rank trained that ternd never heard of (its agent was cut off).
try:
    for line in open(own):
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("event") == "progress":
            reached = max(reached, e.get("step", 0))
except OSError:
    pass
resumed = (started or {}).get("attempt_started", {}).get("resumed_from_step", 0) if started else None
def since(e):
    return "%.1f s" % (t(e) - fault) if e else "-"
reason = left["state_change"].get("reason", {}) if left else {}
print("RESULT %s: detected %s (%s), restarted %s, running again %s, steps: %s at the fault, %d reached,"
      " resumed from %s, lost %s" % (
          label, since(left), reason.get("code", "-"), since(admitted), since(progress),
          max(before) if before else "-", reached, "-" if resumed is None else resumed,
          "-" if resumed is None else max(0, reached - resumed)))
PY
}

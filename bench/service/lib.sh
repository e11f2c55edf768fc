# Sourced by bench/service/*.sh: a fresh ternd without agents for each
# measurement. Needs $build (the build directory) and $name (the script's
# name, for messages) set, and ternd and tern_service_load_bench built.
# Sets T (a temp directory, removed on exit with the ternd left running).
# bench_db: another --db than a fresh SQLite file in $T/run.
for bin in server/ternd bench/service/tern_service_load_bench; do
  [[ -x $build/$bin ]] || { echo "$name: $build/$bin is not built" >&2; exit 2; }
done
T=$(mktemp -d)
pid=
trap '[[ -n $pid ]] && kill $pid 2>/dev/null; rm -rf "$T"' EXIT

# start_ternd FLAG... -> sets pid and addr: ternd on a fresh db in $T/run.
start_ternd() {
  rm -rf "$T/run" && mkdir -p "$T/run"
  "$build/server/ternd" --listen 127.0.0.1:0 --db "${bench_db:-$T/run/ternd.db}" --artifact-root "$T/run/art" \
    --checkpoint-root "$T/run/ck" --metrics-listen "" "$@" \
    > "$T/run/out" 2> "$T/run/log" &
  pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$T/run/out" 2>/dev/null && break; sleep 0.1; done
  addr=$(sed -n 's/ternd listening on //p' "$T/run/out")
  [[ -n $addr ]] || { echo "ternd did not start:"; cat "$T/run/log"; exit 1; }
}
stop_ternd() { kill "$pid"; wait "$pid" || true; pid=; }

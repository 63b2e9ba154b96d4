#!/usr/bin/env bash
# Reproducible ingest benchmark: the release binary with its default durable embedded
# log (SQLite, WAL, synchronous=FULL, group commit), driven by the shared neutral load
# client mllp-bench (one message in flight per connection, every ACK checked), plus the
# no-storage ACK echo ("ceiling") on the same machine for comparison.
#
#   scripts/bench.sh                 C=1 and C=8
#   N1=20000 N8=100000 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${ADT_ROUTER_SHARED:-$PWD/../shared}"
N1="${N1:-20000}"
N8="${N8:-100000}"
MLLP_PORT="${MLLP_PORT:-22575}"
HTTP_PORT="${HTTP_PORT:-28080}"

cargo build --quiet --release --features tools
MB="$(ADT_ROUTER_SHARED="$SHARED" scripts/build-mllp-bench.sh)"
BIN="$PWD/target/release/adt-router"

work=$(mktemp -d /tmp/adt-router-bench.XXXXXX)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)"
echo "== ceiling: mllp-bench ACK echo, no storage"
"$MB" ceiling --addr "127.0.0.1:$((MLLP_PORT + 24))" --max-seconds 120 &
pids+=($!)
sleep 0.5
"$MB" load --addr "127.0.0.1:$((MLLP_PORT + 24))" --conns 1 --n "$N1"
"$MB" load --addr "127.0.0.1:$((MLLP_PORT + 24))" --conns 8 --n "$N8"

echo "== adt-router serve, embedded log on SQLite ($work/data)"
(cd "$work" && ADT_ROUTER__MLLP__LISTEN="127.0.0.1:$MLLP_PORT" ADT_ROUTER__HTTP__LISTEN="127.0.0.1:$HTTP_PORT" \
  exec "$BIN" serve >"$work/serve.out" 2>"$work/serve.log") &
pid=$!
pids+=("$pid")
for _ in $(seq 1 100); do grep -q listening "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$work/serve.out" || { echo "error: adt-router did not start:" >&2; cat "$work/serve.log" >&2; exit 1; }
"$MB" load --addr "127.0.0.1:$MLLP_PORT" --conns 1 --n "$N1"
"$MB" load --addr "127.0.0.1:$MLLP_PORT" --conns 8 --n "$N8"
echo "server peak RSS: $(awk '/VmHWM/{print $2, $3}' /proc/"$pid"/status)"
curl -s "127.0.0.1:$HTTP_PORT/metrics" | awk '/^adt_router_event_log_commit_batch_size_(sum|count)/{v[$1]=$2} END{if (v["adt_router_event_log_commit_batch_size_count"]>0) printf "mean commit batch: %.1f messages\n", v["adt_router_event_log_commit_batch_size_sum"]/v["adt_router_event_log_commit_batch_size_count"]}'

#!/usr/bin/env bash
# Kafka-mode ingest benchmark (step 2): the release binary producing to a tansu broker
# (in-memory storage) on this machine, every ACK after the broker confirmed the write,
# driven by the shared mllp-bench client (one message in flight per connection, every
# ACK checked). Listener only (`kafka.consume = false`), a fresh broker per series.
#
#   scripts/bench-kafka.sh                 RUNS=5 runs of C=1 and C=8
#   RUNS=9 N8=50000 scripts/bench-kafka.sh
#   BIN=/tmp/other-build scripts/bench-kafka.sh   measure another binary
# (mllp-bench --corpus is not offered: some corpus messages say MSH-15 = NE, so they
# get no accept ACK by the HL7 rules, and the client waits for one until it times out.)
#
# Needs tansu on PATH (scripts/test.sh installs it in ~/.cache/adt-router/tansu/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${ADT_ROUTER_SHARED:-$PWD/../shared}"
RUNS="${RUNS:-5}"
N1="${N1:-5000}"
N8="${N8:-50000}"
export PATH="${ADT_ROUTER_CACHE:-$HOME/.cache/adt-router}/tansu/bin:$PATH"
command -v tansu >/dev/null || { echo "error: tansu is not installed (run scripts/test.sh once)" >&2; exit 1; }

# BIN=path measures another build (an A/B comparison); by default this tree's.
if [ -z "${BIN:-}" ]; then
  cargo build --quiet --release --features tools
  BIN="$PWD/target/release/adt-router"
fi
MB="$(ADT_ROUTER_SHARED="$SHARED" scripts/build-mllp-bench.sh)"

work=$(mktemp -d /tmp/adt-router-kbench.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r); tansu $(tansu --version 2>/dev/null || echo 0.6.0)"
c8=()
for run in $(seq 1 "$RUNS"); do
  kport=$(free_port); mport=$(free_port); hport=$(free_port)
  tansu broker --listener-url "tcp://127.0.0.1:$kport" --advertised-listener-url "tcp://127.0.0.1:$kport" \
    --storage-engine memory://tansu/ >/dev/null 2>&1 &
  broker=$!
  pids+=("$broker")
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$kport") 2>/dev/null && break; sleep 0.1; done
  rm -rf "$work/data"; mkdir -p "$work/data"
  (cd "$work" && ADT_ROUTER__KAFKA__BROKERS="127.0.0.1:$kport" ADT_ROUTER__KAFKA__CONSUME=false \
    ADT_ROUTER__MLLP__LISTEN="127.0.0.1:$mport" ADT_ROUTER__HTTP__LISTEN="127.0.0.1:$hport" \
    exec "$BIN" serve >"$work/serve.out" 2>"$work/serve.log") &
  server=$!
  pids+=("$server")
  for _ in $(seq 1 200); do grep -q listening "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
  grep -q listening "$work/serve.out" || { echo "error: adt-router did not start:" >&2; cat "$work/serve.log" >&2; exit 1; }
  # A short warm-up (connections, producer id, topic metadata), then the measured runs.
  "$MB" load --addr "127.0.0.1:$mport" --conns 8 --n 2000 >/dev/null
  one=$("$MB" load --addr "127.0.0.1:$mport" --conns 1 --n "$N1")
  eight=$("$MB" load --addr "127.0.0.1:$mport" --conns 8 --n "$N8")
  echo "run $run C=1: $one"
  echo "run $run C=8: $eight"
  c8+=("$(echo "$eight" | python3 -c 'import json,sys; print(json.load(sys.stdin)["msgs_per_s"])')")
  kill "$server" "$broker" 2>/dev/null || true
  wait "$server" "$broker" 2>/dev/null || true
done
printf '%s\n' "${c8[@]}" | python3 -c 'import sys, statistics; v=[float(x) for x in sys.stdin]; print(f"C=8 msgs/s over {len(v)} runs: " + " / ".join(f"{x:,.0f}" for x in v) + f"; median {statistics.median(v):,.0f}")'

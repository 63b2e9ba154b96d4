#!/usr/bin/env bash
# Routing throughput (step 4): messages/s from the event log to the outbox on SQLite,
# with a PATIENTS-patient roster (default 1,000,000) and a directory that has endpoints
# for the roster's providers.
#   1. load the roster and a synthetic NPPES directory;
#   2. store ENCOUNTERS x 4 ADT messages (A04 ED, A06, A08 move, A03) through a server
#      with routing off (`adt-router send`, every ACK checked);
#   3. `adt-router route drain` routes them all and prints messages/s.
#
#   scripts/bench-routing.sh
#   PATIENTS=100000 ENCOUNTERS=2000 scripts/bench-routing.sh     a quicker run
#
# Comparing two builds: prepare once, then route a fresh copy of the same database with
# each build in turn, interleaved (this machine's speed drifts by 10-25% within minutes).
#   PREPARED=/tmp/rb scripts/bench-routing.sh             steps 1-2 into /tmp/rb, then 3
#   PREPARED=/tmp/rb BIN=/path/to/adt-router scripts/bench-routing.sh     step 3 only
# The copy is written 4 KiB at a time, as SQLite writes: a `cp` copy sits in the kernel's
# cache in large folios and routes ~10% faster than the database in place (README).
# Prepare with the older build: a build refuses a database with migrations it lacks.
#   CALLGRIND=1 PREPARED=/tmp/rb BIN=... scripts/bench-routing.sh    instructions instead
#   of a rate (valgrind): a measure this machine's changing speed does not move.
set -euo pipefail
cd "$(dirname "$0")/.."
PATIENTS="${PATIENTS:-1000000}"
ENCOUNTERS="${ENCOUNTERS:-5000}"
PREPARED="${PREPARED:-}"
if [ -z "${BIN:-}" ]; then
  cargo build --quiet --release --features tools
  BIN="$PWD/target/release/adt-router"
fi
RULES="$PWD/routing-rules"
GEN="$PWD/scripts/gen-encounters.py"
work=$(mktemp -d /tmp/adt-router-routebench.XXXXXX)
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"' EXIT
cd "$work"
export ADT_ROUTER__DATABASE__URL="sqlite://$work/db.sqlite" ADT_ROUTER__ROUTING__RULES_DIR="$RULES"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; work dir $work"

if [ -n "$PREPARED" ] && [ -f "$PREPARED/db.sqlite" ]; then
  echo "== routing a copy of $PREPARED/db.sqlite with $BIN"
  dd if="$PREPARED/db.sqlite" of=db.sqlite bs=4096 status=none
else
  "$BIN" roster synth --patients "$PATIENTS" --out roster.csv > /dev/null
  "$BIN" roster import roster.csv --source bench --replace > /dev/null
  "$BIN" nppes synth --providers 100000 --endpoints 100000 --out-dir nppes > /dev/null 2>&1
  "$BIN" nppes import --npidata nppes/npidata_pfile_synthetic.csv \
    --endpoints nppes/endpoint_pfile_synthetic.csv --quiet > /dev/null 2>&1
  python3 "$GEN" roster.csv "$ENCOUNTERS" encounters.hl7

  ADT_ROUTER__ROUTING__ENABLED=false ADT_ROUTER__MLLP__LISTEN=127.0.0.1:0 \
    ADT_ROUTER__HTTP__LISTEN=127.0.0.1:0 "$BIN" serve > serve.out 2> serve.log &
  server=$!
  for _ in $(seq 1 100); do grep -q listening serve.out 2>/dev/null && break; sleep 0.1; done
  mllp=$(sed -n 's/.*listening: MLLP on \([^,]*\),.*/\1/p' serve.out)
  "$BIN" send --to "$mllp" encounters.hl7 > /dev/null
  kill "$server"; wait "$server" || true; server=""
  if [ -n "$PREPARED" ]; then
    # The server checkpoints on a clean stop; a WAL left behind would not be copied.
    [ ! -s db.sqlite-wal ] || { echo "error: serve left a WAL behind" >&2; exit 1; }
    mkdir -p "$PREPARED"
    cp db.sqlite "$PREPARED/db.sqlite"
    echo "== prepared $PREPARED/db.sqlite ($PATIENTS patients, $ENCOUNTERS encounters)"
  fi
  echo "== routing $((ENCOUNTERS * 4)) messages with a $PATIENTS-patient roster"
fi
# The loads above leave ~500 MB of dirty pages; flushed now, not by the kernel's writeback
# threads while the drain runs beside them on the same two cores.
sync
# This machine's speed swings by a third within a minute (a fixed loop took 0.74-1.26 s
# in ten runs 3 s apart), so each run prints how long the same loop took just before
# the drain: rates are comparable only at similar figures.
python3 -c 'import time
t = time.perf_counter()
s = 0
for i in range(10**7): s += i
print(f"calibration: a fixed Python loop took {time.perf_counter() - t:.2f} s")'
if [ -n "${CALLGRIND:-}" ]; then
  # Instructions, not time: the same for every run of a build, whatever the machine's
  # speed (valgrind runs the drain ~40x slower and one thread at a time).
  valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" "$BIN" route drain \
    2> "$work/callgrind.log"
  sed -n 's/.*Collected : */instructions: /p' "$work/callgrind.log"
else
  "$BIN" route drain
fi

#!/usr/bin/env bash
# Open Integration Engine (OIE 4.5.2, the open-source Mirth Connect fork) as the sender:
# builds it (scripts/oie-build.sh), starts it on loopback, creates the channel a hospital
# would use (File Reader -> TCP Sender in MLLP mode, queue on failure, retry every 3 s,
# response validation on; scripts/oie/OieChannel.java), and runs the public corpus and
# the failure runs against adt-router, printing one table. Not part of the test command
# (it takes about 15 minutes); docs/interop.md has its last results.
#
#   OIE_SRC=/path/to/engine.git scripts/interop-oie.sh
#
# Environment: BIN (adt-router binary; default target/release/adt-router, built if
# missing), COUNT (messages per failure run, 600), RATE (per second, 10), FAULT_SECS (20),
# RUNS (which runs, default "corpus lock1000 lockdefault kill9 nack1000").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
CACHE="${ADT_ROUTER_CACHE:-$HOME/.cache/adt-router}"
SHARED="${ADT_ROUTER_SHARED:-$ROOT/../shared}"
COUNT="${COUNT:-600}"
RATE="${RATE:-10}"
FAULT_SECS="${FAULT_SECS:-20}"
RUNS="${RUNS:-corpus lock1000 lockdefault kill9 nack1000}"
OIE_HTTPS="https://127.0.0.1:${OIE_HTTPS_PORT:-18443}"
log() { printf 'interop-oie: %s\n' "$*" >&2; }

SETUP="$(scripts/oie-build.sh)"
BIN="${BIN:-$ROOT/target/release/adt-router}"
if [ ! -x "$BIN" ]; then
  log "building adt-router (release)"
  cargo build --release --bin adt-router >&2
fi

WORK="$(mktemp -d /tmp/interop-oie.XXXXXX)"
OIE_PID=""
AR_PID=""
cleanup() {
  [ -n "$AR_PID" ] && kill -9 "$AR_PID" 2>/dev/null || true
  [ -n "$OIE_PID" ] && kill "$OIE_PID" 2>/dev/null || true
}
trap cleanup EXIT

CP="$SETUP/client-lib/mirth-client-core.jar:$SETUP/client-lib/*"
for ext in file tcp datatype-hl7v2 mllpmode; do CP="$CP:$SETUP/extensions/$ext/*"; done
oie() { java -cp "$CP" "$ROOT/scripts/oie/OieChannel.java" "$OIE_HTTPS" "$@" 2>>"$WORK/oie-client.log"; }

log "starting OIE on 127.0.0.1 (log: $WORK/oie-server.log)"
(cd "$SETUP" && exec java $(grep -v '^#' docs/mcservice-java9+.vmoptions | tr '\n' ' ') \
  -jar mirth-server-launcher.jar >"$WORK/oie-server.log" 2>&1) &
OIE_PID=$!
for _ in $(seq 1 120); do
  grep -q "server successfully started" "$WORK/oie-server.log" 2>/dev/null && break
  kill -0 "$OIE_PID" 2>/dev/null || { log "OIE exited; see $WORK/oie-server.log"; exit 1; }
  sleep 1
done
grep -q "server successfully started" "$WORK/oie-server.log" || { log "OIE did not start in 120 s"; exit 1; }

AR_PORT=12575
# Starts adt-router in $1 (a directory) with extra environment ($2...).
start_ar() {
  local dir="$1"; shift
  mkdir -p "$dir"
  (cd "$dir" && exec env ADT_ROUTER__MLLP__LISTEN="127.0.0.1:$AR_PORT" \
     ADT_ROUTER__HTTP__LISTEN=127.0.0.1:0 ADT_ROUTER__ROUTING__RULES_DIR="$dir/no-rules" "$@" \
     "$BIN" serve >>"$dir/stdout" 2>>"$dir/server.log") &
  AR_PID=$!
  for _ in $(seq 1 100); do grep -q listening "$dir/stdout" 2>/dev/null && return; sleep 0.1; done
  log "adt-router did not start; see $dir/server.log"; exit 1
}

# Writes COUNT ADT^A01 files into $1 at RATE per second (each renamed into place whole).
feed() {
  python3 - "$1" "$2" "$COUNT" "$RATE" <<'PY'
import os, sys, time
d, prefix, n, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
t0 = time.monotonic()
for i in range(n):
    time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
    cid = f"{prefix}-{i:05d}"
    body = (f"MSH|^~\\&|OIE|GENHOSP|ADTR|ADTR|20260101120000||ADT^A01|{cid}|P|2.5.1\r"
            f"EVN|A01|20260101120000\rPID|1||MRN{i}^^^GENHOSP^MR||DOE^JANE\rPV1|1|I|W1^101^A\r")
    tmp = os.path.join(d, f".{cid}.tmp")
    with open(tmp, "w") as f:
        f.write(body)
    os.rename(tmp, os.path.join(d, f"{cid}.hl7"))
PY
}

# Waits until the channel received $2 messages and queues none; prints its statistics.
settle() {
  local id="$1" want="$2" stats=""
  for _ in $(seq 1 90); do
    stats="$(oie stats "$id")"
    python3 -c 'import json,sys; s=json.loads(sys.argv[1]); sys.exit(0 if s["received"]>=int(sys.argv[2]) and s["queued"]==0 else 1)' "$stats" "$want" && break
    sleep 2
  done
  echo "$stats"
}

# Summarises adt-router's record for control ids starting with $2.
record() {
  (cd "$1" && "$BIN" messages export) | python3 -c '
import collections, json, sys
prefix, n = sys.argv[1], int(sys.argv[2])
rows = [json.loads(l) for l in sys.stdin if l.strip()]
rows = [r for r in rows if r["control_id"].startswith(prefix)]
firsts = collections.Counter(r["control_id"] for r in rows if not r["duplicate"])
codes = collections.Counter(r["ack_code"] for r in rows)
print(json.dumps({"stored": len(firsts), "lost": n - len(firsts),
  "twice": sum(1 for c in firsts.values() if c > 1),
  "duplicates": sum(1 for r in rows if r["duplicate"]), "ack_codes": dict(codes)}))' "$2" "$3"
}

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
run_failure() {
  local name="$1" fault="$2"; shift 2
  local dir="$WORK/$name" in="$WORK/$name/in"
  mkdir -p "$in"
  start_ar "$dir/ar" "$@"
  local id; id="$(oie create "adt-router $name" "$in" 127.0.0.1 "$AR_PORT" 3000)"
  log "$name: $COUNT messages at $RATE/s, fault '$fault' for ${FAULT_SECS}s"
  feed "$in" "$name" &
  local feeder=$!
  sleep $(( COUNT / RATE / 4 ))
  case "$fault" in
    lock)
      python3 -c 'import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None); c.execute("BEGIN EXCLUSIVE"); time.sleep(float(sys.argv[2])); c.execute("COMMIT")' \
        "$dir/ar/data/adt-router.db" "$FAULT_SECS" ;;
    kill9)
      kill -9 "$AR_PID"; wait "$AR_PID" 2>/dev/null || true
      sleep "$FAULT_SECS"
      start_ar "$dir/ar" "$@" ;;
  esac
  wait "$feeder"
  local stats; stats="$(settle "$id" "$COUNT")"
  local rec; rec="$(record "$dir/ar" "$name-" "$COUNT")"
  oie remove "$id" || true
  kill -9 "$AR_PID" 2>/dev/null || true; wait "$AR_PID" 2>/dev/null || true; AR_PID=""
  printf '{"run":"%s","engine":%s,"router":%s}\n' "$name" "$stats" "$rec" | tee -a "$RESULTS" >&2
}

run_corpus() {
  local dir="$WORK/corpus" in="$WORK/corpus/in"
  mkdir -p "$in"
  start_ar "$dir/ar"
  local id; id="$(oie create "adt-router corpus" "$in" 127.0.0.1 "$AR_PORT" 3000)"
  local n=0
  for f in "$SHARED"/corpus/hl7/*.hl7 "$SHARED"/corpus/hl7/invalid/*.hl7; do
    n=$((n + 1))
    cp "$f" "$in/.$n.tmp" && mv "$in/.$n.tmp" "$in/$(printf '%05d' "$n").hl7"
  done
  log "corpus: $n files"
  local stats; stats="$(settle "$id" "$n")"
  local rec
  rec="$( (cd "$dir/ar" && "$BIN" messages export) | python3 -c '
import collections, json, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
print(json.dumps({"stored": len(rows), "duplicates": sum(r["duplicate"] for r in rows),
  "ack_codes": dict(collections.Counter(r["ack_code"] for r in rows))}))')"
  local quarantined; quarantined="$(curl -s "http://$(grep -o 'HTTP on [0-9.:]*' "$dir/ar/stdout" | cut -d' ' -f3)/metrics" | awk '/^adt_router_quarantined_total/ {s+=$2} END {print s+0}')"
  oie remove "$id" || true
  kill -9 "$AR_PID" 2>/dev/null || true; wait "$AR_PID" 2>/dev/null || true; AR_PID=""
  printf '{"run":"corpus","files":%d,"engine":%s,"router":%s,"quarantined":%s}\n' "$n" "$stats" "$rec" "$quarantined" | tee -a "$RESULTS" >&2
}

for r in $RUNS; do
  case "$r" in
    corpus) run_corpus ;;
    lock1000) run_failure lock1000 lock ADT_ROUTER__EVENT_LOG__COMMIT_TIMEOUT_MS=1000 ;;
    lockdefault) run_failure lockdefault lock ;;
    kill9) run_failure kill9 kill9 ;;
    nack1000) run_failure nack1000 lock ADT_ROUTER__EVENT_LOG__COMMIT_TIMEOUT_MS=1000 ADT_ROUTER__MLLP__ON_STORAGE_FAILURE=nack ;;
    *) log "unknown run $r"; exit 2 ;;
  esac
done

python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| run | engine: received / SENT / ERROR / QUEUED | adt-router: stored once / lost / stored twice / duplicates | ack_code on rows |")
print("|---|---|---|---|")
for r in rows:
    e, a = r["engine"], r["router"]
    codes = ", ".join(f"{k} {v}" for k, v in sorted(a["ack_codes"].items()))
    if r["run"] == "corpus":
        print(f"| corpus ({r['files']} files) | {e['received']} / {e['sent']} / {e['error']} / {e['queued']} "
              f"| {a['stored']} stored, {r['quarantined']} quarantined, {a['duplicates']} duplicates | {codes} |")
    else:
        print(f"| {r['run']} | {e['received']} / {e['sent']} / {e['error']} / {e['queued']} "
              f"| {a['stored']} / **{a['lost']}** / {a['twice']} / {a['duplicates']} | {codes} |")
PY
log "details: $WORK"

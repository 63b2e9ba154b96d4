#!/usr/bin/env bash
# Webhook delivery rate (step 5): NOTIFICATIONS admissions are routed to one provider
# whose REST endpoint is a local receiver that verifies every Standard Webhooks
# signature; then the deliverer alone is timed until every notification is delivered.
# The receiver is Node's HTTP server (scripts/peers/fast_receiver.mjs) by default, or
# the tests' Python one built on the official library (RECEIVER=python), which is
# slower than the deliverer and so measures itself.
#
#   scripts/bench-delivery.sh
#   NOTIFICATIONS=2000 CONCURRENCY=32 RECEIVER=python scripts/bench-delivery.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N="${NOTIFICATIONS:-5000}"
CONCURRENCY="${CONCURRENCY:-4}"   # delivery.per_endpoint_concurrency
BATCH="${BATCH:-64}"              # delivery.batch (in flight plus waiting)
cargo build --quiet --release --features tools
BIN="$PWD/target/release/adt-router"
KIND="${RECEIVER:-node}"
case "$KIND" in
  node) RECEIVER=(node "$PWD/scripts/peers/fast_receiver.mjs") ;;
  python) RECEIVER=(python3 "$PWD/tests/peers/webhook_receiver.py") ;;
  *) echo "RECEIVER is node or python" >&2; exit 2 ;;
esac
RULES="$PWD/routing-rules"
SECRET="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
work=$(mktemp -d /tmp/adt-router-deliverybench.XXXXXX)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
export ADT_ROUTER__DATABASE__URL="${DATABASE_URL:-sqlite://$work/db.sqlite}" ADT_ROUTER__ROUTING__RULES_DIR="$RULES" \
  ADT_ROUTER__DELIVERY__ALLOW_PRIVATE_NETWORKS=true ADT_ROUTER__DELIVERY__REQUIRE_HTTPS=false \
  ADT_ROUTER__MLLP__LISTEN=127.0.0.1:0 ADT_ROUTER__HTTP__LISTEN=127.0.0.1:0
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; work dir $work"

"${RECEIVER[@]}" "$SECRET" "$work/received.log" > receiver.out &
pids+=($!)
for _ in $(seq 1 50); do [ -s receiver.out ] && break; sleep 0.1; done
port=$(head -n1 receiver.out)
NPI=1234567893
"$BIN" directory override --npi "$NPI" --type REST --endpoint "http://127.0.0.1:$port/ok" --secret "$SECRET" > /dev/null
python3 - "$N" "$NPI" <<'PY'
import datetime
import sys
n, npi = int(sys.argv[1]), sys.argv[2]
# Distinct birth dates: patients sharing one would all be demographic candidates of each
# other (a roster artefact, not what this measures).
dob = lambda i: datetime.date(1930, 1, 1) + datetime.timedelta(days=i % 30000)
with open("roster.csv", "w") as r, open("adm.hl7", "w") as m:
    r.write("patient_id,assigning_authority,family,given,birth_date,sex,provider_npi,relationship\n")
    for i in range(n):
        r.write(f"P{i:07},GENHOSP,Doe,Pat{i},{dob(i).isoformat()},F,{npi},pcp\n")
        m.write(f"MSH|^~\\&|EPIC|GENHOSP|ADTR|HIE|202611280800||ADT^A01|B{i:07}|P|2.5.1\r"
                f"EVN|A01|202611280800\rPID|1||P{i:07}^^^GENHOSP^MR||DOE^PAT{i}||{dob(i).strftime('%Y%m%d')}|F\r"
                f"PV1|1|I|4W^1^A^GENHOSP||||||||||||||||||V{i:07}\r\n\n")
PY
"$BIN" roster import roster.csv --source bench > /dev/null

start_server() { # $1: extra env; waits for the listening line
  rm -f serve.out
  env "$@" ${SERVE_WRAPPER:-} "$BIN" serve > serve.out 2> serve.log &
  pids+=($!)
  for _ in $(seq 1 100); do grep -q listening serve.out 2>/dev/null && break; sleep 0.1; done
}
metric() { curl -s "$http/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

# 1. Store and route the admissions with delivery off.
start_server ADT_ROUTER__DELIVERY__ENABLED=false
mllp=$(sed -n 's/.*listening: MLLP on \([^,]*\),.*/\1/p' serve.out)
http=$(sed -n 's/.*HTTP on \([^ ]*\) .*/\1/p' serve.out)
"$BIN" send --to "$mllp" adm.hl7 > /dev/null
while [ "$(metric 'adt_router_routed_messages_total{outcome="routed"}')" != "$N" ]; do sleep 0.2; done
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

# 2. The deliverer alone, from a backlog of N, timed from the server's listening line.
start_server ADT_ROUTER__ROUTING__ENABLED=false ADT_ROUTER__DELIVERY__PER_ENDPOINT_CONCURRENCY="$CONCURRENCY" \
  ADT_ROUTER__DELIVERY__BATCH="$BATCH"
t0=$(date +%s.%N)
http=$(sed -n 's/.*HTTP on \([^ ]*\) .*/\1/p' serve.out)
while [ "$(metric 'adt_router_delivery_attempts_total{channel="REST",outcome="delivered"}')" != "$N" ]; do sleep 0.1; done
t1=$(date +%s.%N)
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
verified=$(grep -c -E '"verified": true| true$' received.log || true)
python3 - "$N" "$t0" "$t1" "$verified" "$CONCURRENCY" "$KIND" "$BATCH" <<'PY'
import sys
n, t0, t1, verified, conc, kind, batch = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7]
secs = t1 - t0
print(f'{{"notifications": {n}, "receiver": "{kind}", "per_endpoint_concurrency": {conc}, "batch": {batch}, "seconds": {secs:.2f}, '
      f'"deliveries_per_s": {n / secs:.0f}, "signatures_verified": {verified}}}')
PY

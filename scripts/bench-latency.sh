#!/usr/bin/env bash
# End-to-end latency (step 5): admissions sent over MLLP at a steady RATE by the neutral
# load client (shared/tools/mllp-bench), each routed to one provider whose REST endpoint
# is a local receiver (scripts/peers/fast_receiver.mjs, which checks every signature).
# Latency = the receiver's arrival time minus the time adt-router received the frame
# (`received_at` of `messages export`), per notification. Prints p50/p90/p99/max.
# The patients are spread over ENDPOINTS practices (default 20), each with its own
# endpoint on the receiver, as a hospital's events fan out to many practices (one
# endpoint alone is held to `delivery.per_endpoint_concurrency` requests at a time).
#
#   scripts/bench-latency.sh                    # 500 msgs/s for 60 s
#   RATE=500 SECONDS_=60 scripts/bench-latency.sh
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench scripts/bench-latency.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RATE="${RATE:-500}"
DURATION="${SECONDS_:-60}"
N=$((RATE * DURATION))
ENDPOINTS="${ENDPOINTS:-20}"
SHARED="${ADT_ROUTER_SHARED:-$PWD/../shared}"
cargo build --quiet --release --features tools
BIN="$PWD/target/release/adt-router"
LOAD="$(ADT_ROUTER_SHARED="$SHARED" scripts/build-mllp-bench.sh)"
RECEIVER="$PWD/scripts/peers/fast_receiver.mjs"
RULES="$PWD/routing-rules"
SECRET="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
work=$(mktemp -d /tmp/adt-router-latency.XXXXXX)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
export ADT_ROUTER__DATABASE__URL="${DATABASE_URL:-sqlite://$work/db.sqlite}" ADT_ROUTER__ROUTING__RULES_DIR="$RULES" \
  ADT_ROUTER__DELIVERY__ALLOW_PRIVATE_NETWORKS=true ADT_ROUTER__DELIVERY__REQUIRE_HTTPS=false \
  ADT_ROUTER__MLLP__LISTEN=127.0.0.1:0 ADT_ROUTER__HTTP__LISTEN=127.0.0.1:0
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $N admissions at $RATE/s to $ENDPOINTS practices; database ${ADT_ROUTER__DATABASE__URL%%:*}"

node "$RECEIVER" "$SECRET" "$work/received.log" > receiver.out &
pids+=($!)
for _ in $(seq 1 50); do [ -s receiver.out ] && break; sleep 0.1; done
port=$(head -n1 receiver.out)
mkdir corpus
python3 - "$N" "$ENDPOINTS" <<'PY'
import datetime
import sys
n, endpoints = int(sys.argv[1]), int(sys.argv[2])
def npi(base):  # NPI check digit: Luhn over 80840 + the first nine digits
    digits = [int(c) for c in "80840" + str(base)]
    total = sum(d if i % 2 else sum(divmod(d * 2, 10)) for i, d in enumerate(reversed(digits)))
    return f"{base}{(10 - total % 10) % 10}"
npis = [npi(400000000 + k) for k in range(endpoints)]
open("npis.txt", "w").write("\n".join(npis) + "\n")
dob = lambda i: datetime.date(1930, 1, 1) + datetime.timedelta(days=i % 30000)
with open("roster.csv", "w") as r:
    r.write("patient_id,assigning_authority,family,given,birth_date,sex,provider_npi,relationship\n")
    for i in range(n):
        r.write(f"P{i:07},GENHOSP,Doe,Pat{i},{dob(i).isoformat()},F,{npis[i % endpoints]},pcp\n")
        # One file per admission: mllp-bench cycles through them, splicing in control ids.
        with open(f"corpus/{i:07}.hl7", "w") as m:
            m.write(f"MSH|^~\\&|EPIC|GENHOSP|ADTR|HIE|202611280800||ADT^A01|X|P|2.5.1\r"
                    f"EVN|A01|202611280800\rPID|1||P{i:07}^^^GENHOSP^MR||DOE^PAT{i}||{dob(i).strftime('%Y%m%d')}|F\r"
                    f"PV1|1|I|4W^1^A^GENHOSP||||||||||||||||||V{i:07}\r")
PY
while read -r npi; do
  "$BIN" directory override --npi "$npi" --type REST --endpoint "http://127.0.0.1:$port/p$npi" --secret "$SECRET" > /dev/null
done < npis.txt
"$BIN" roster import roster.csv --source bench > /dev/null

"$BIN" serve > serve.out 2> serve.log &
pids+=($!)
for _ in $(seq 1 100); do grep -q listening serve.out 2>/dev/null && break; sleep 0.1; done
mllp=$(sed -n 's/.*listening: MLLP on \([^,]*\),.*/\1/p' serve.out)

"$LOAD" load --addr "$mllp" --conns 4 --n "$N" --rate "$RATE" --corpus "$work/corpus" \
  --max-seconds $((DURATION * 3 + 30)) | tail -n 3
for _ in $(seq 1 600); do
  [ "$(wc -l < received.log)" -ge "$N" ] && break
  sleep 0.2
done
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
"$BIN" messages export > messages.jsonl
"$BIN" notifications export > notifications.jsonl
python3 - "$N" <<'PY'
import datetime
import json
import sys
n = int(sys.argv[1])
received = {}
for line in open("messages.jsonl"):
    m = json.loads(line)
    received[m["control_id"]] = datetime.datetime.fromisoformat(m["received_at"].replace("Z", "+00:00")).timestamp() * 1000
ts = lambda v: datetime.datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() * 1000
control, created = {}, {}
for line in open("notifications.jsonl"):
    x = json.loads(line)
    control[x["idempotency_key"]] = x["control_id"]
    created[x["idempotency_key"]] = ts(x["created_at"])
lat, routed, sent, bad = [], [], [], 0
seen = set()
for line in open("received.log"):
    wid, ms, ok = line.split()
    bad += ok != "true"
    if wid in seen:
        continue
    seen.add(wid)
    lat.append(int(ms) - received[control[wid]])
    routed.append(created[wid] - received[control[wid]])
    sent.append(int(ms) - created[wid])
def pct(xs):
    xs = sorted(xs)
    q = lambda p: round(xs[min(len(xs) - 1, int(p * len(xs)))], 1)
    return {"p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": round(xs[-1], 1)}
# latency: frame received -> receiver has it; routed: -> notification written;
# delivered: notification written -> receiver has it.
print(json.dumps({"sent": n, "delivered": len(lat), "bad_signatures": bad, "latency_ms": pct(lat),
                  "routed_ms": pct(routed), "delivered_ms": pct(sent)}))
PY

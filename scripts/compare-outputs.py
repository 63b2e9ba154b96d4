#!/usr/bin/env python3
"""Runs two adt-router builds on the same inputs and compares what they produce, byte for
byte: the ACK sent for every message, the stored messages and quarantine, encounters,
transitions, routing decisions, the outbox (notification bodies), delivery attempts and
proofs, and the webhook requests a receiver got. For a change that must not change
behaviour (docs/architecture.md, "Checking a refactor").

    scripts/compare-outputs.py OLD_BIN NEW_BIN [--tools-bin BIN] [--keep DIR]

Inputs, made once and given to both: a synthetic roster (`roster synth`, needs a build
with the tools feature: NEW_BIN unless --tools-bin), encounters for its patients
(scripts/gen-encounters.py) with every fifth discharge cancelled (A13), every message of ../shared/corpus/hl7 (valid and invalid),
and REST overrides sending every roster provider's notifications to a webhook
receiver on loopback. Each build gets a fresh SQLite database, the repository's routing-rules/, and
`serve` with routing and delivery on; messages go one at a time, each ACK awaited.

What differs between any two runs is left out: wall-clock columns (`*_at_us`, times
in proofs and attempt logs), the MSH-7 and MSH-10 of each ACK, and the webhook
timestamp and signature headers. Everything else must match. Exit 0 when it does.
"""
import argparse
import glob
import hashlib
import http.server
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("ADT_ROUTER_SHARED", os.path.join(REPO, "..", "shared"))
VOLATILE_KEYS = {"at", "sent_at", "received_at", "elapsed_ms", "duration_ms", "latency_ms"}


def messages_of(path):
    """The messages in one file: split on MSH, segments joined with CR."""
    text = open(path, "rb").read().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    out = []
    for part in re.split(rb"\r(?=MSH\|)", text):
        part = part.strip(b"\r")
        if part.startswith(b"MSH"):
            out.append(part + b"\r")
    return out


def mllp_exchange(addr, msgs, timeout=30):
    host, port = addr.rsplit(":", 1)
    acks = []
    for m in msgs:
        with socket.create_connection((host, int(port)), timeout=timeout) as s:
            s.sendall(b"\x0b" + m + b"\x1c\r")
            buf = b""
            while b"\x1c\r" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            acks.append(buf)
    return acks


def normalise_ack(ack):
    """MSH-7 (when) and MSH-10 (the ACK's own id) differ between any two runs."""
    segs = ack.strip(b"\x0b\x1c\r").split(b"\r")
    if segs and segs[0].startswith(b"MSH") and len(segs[0]) > 3:
        f = segs[0].split(segs[0][3:4])
        for i in (6, 9):
            if len(f) > i:
                f[i] = b"<" + str(i + 1).encode() + b">"
        segs[0] = segs[0][3:4].join(f)
    return b"\r".join(segs)


class Receiver(http.server.BaseHTTPRequestHandler):
    requests = []
    lock = threading.Lock()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        keep = {k.lower(): v for k, v in self.headers.items()
                if k.lower() not in ("webhook-timestamp", "webhook-signature", "host", "content-length")}
        with Receiver.lock:
            Receiver.requests.append({"path": self.path, "headers": keep, "body": body.decode("utf-8", "replace")})
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *a):
        pass


def scrub(v):
    """JSON values with their wall-clock fields taken out."""
    if isinstance(v, dict):
        return {k: scrub(x) for k, x in v.items() if k not in VOLATILE_KEYS and not k.endswith("_us")}
    if isinstance(v, list):
        return [scrub(x) for x in v]
    return v


def cell(name, v):
    if isinstance(v, bytes):
        return "sha256:" + hashlib.sha256(v).hexdigest()
    if isinstance(v, str) and v[:1] in "{[":
        try:
            return json.dumps(scrub(json.loads(v)), sort_keys=False)
        except ValueError:
            pass
    return v


def dump(db, table, order):
    con = sqlite3.connect(db)
    cols = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
    # Attempts run concurrently: their own ids follow the order they finished in.
    drop = {"peer", "lease_owner"} | ({"id"} if table == "delivery_attempt" else set())
    keep = [c for c in cols if not c.endswith("_us") and c not in drop]
    rows = con.execute(f"SELECT {', '.join(keep)} FROM {table} ORDER BY {order}").fetchall()
    con.close()
    return [dict(zip(keep, (cell(c, v) for c, v in zip(keep, r)))) for r in rows]


def run(binary, label, work, inputs, env_base, port):
    d = os.path.join(work, label)
    os.makedirs(d)
    env = dict(os.environ, **env_base, ADT_ROUTER__DATABASE__URL=f"sqlite://{d}/db.sqlite")
    def cli(*args):
        subprocess.run([binary, *args], cwd=d, env=env, check=True, stdout=subprocess.DEVNULL)
    cli("roster", "import", inputs["roster"], "--source", "synth", "--replace")
    cli("directory", "override", "--file", inputs["overrides"])
    Receiver.requests = []
    srv = subprocess.Popen([binary, "serve"], cwd=d, env=env, stdout=subprocess.PIPE,
                           stderr=open(os.path.join(d, "serve.log"), "w"), text=True)
    try:
        line = srv.stdout.readline()
        m = re.search(r"listening: MLLP on ([^,\s]+)", line)
        if not m:
            sys.exit(f"{label}: serve did not start: {line!r}; see {d}/serve.log")
        acks = mllp_exchange(m.group(1), inputs["messages"])
        db = os.path.join(d, "db.sqlite")
        deadline = time.time() + 180
        while True:
            con = sqlite3.connect(db, timeout=10)
            unrouted = con.execute("SELECT count(*) FROM inbound_messages WHERE routed_at_us IS NULL").fetchone()[0]
            busy = con.execute("SELECT count(*) FROM outbox WHERE status IN ('pending', 'sending')").fetchone()[0]
            con.close()
            if unrouted == 0 and busy == 0:
                break
            if time.time() > deadline:
                sys.exit(f"{label}: not settled after 180 s ({unrouted} unrouted, {busy} to send)")
            time.sleep(0.2)
    finally:
        srv.terminate()
        srv.wait(timeout=60)
    out = {"acks": [normalise_ack(a).decode("utf-8", "replace") for a in acks]}
    for table, order in [("inbound_messages", "id"), ("quarantine", "id"), ("encounter", "facility, visit_number"),
                         ("encounter_transition", "id"), ("routing_decision", "transition_key, recipient_npi"), ("outbox", "id"),
                         ("delivery_attempt", "outbox_id, attempt")]:
        out[table] = dump(db, table, order)
    with Receiver.lock:
        out["webhook_requests"] = sorted(Receiver.requests, key=lambda r: (r["path"], r["body"]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--tools-bin", help="a build with the tools feature, for roster synth (default: NEW)")
    ap.add_argument("--encounters", type=int, default=150)
    ap.add_argument("--keep", help="work in this directory and leave it")
    a = ap.parse_args()
    work = a.keep or tempfile.mkdtemp(prefix="adt-router-compare.")
    os.makedirs(work, exist_ok=True)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]

    roster = os.path.join(work, "roster.csv")
    subprocess.run([a.tools_bin or a.new, "roster", "synth", "--patients", "2000", "--out", roster, "--seed", "3"],
                   check=True, stdout=subprocess.DEVNULL)
    enc = os.path.join(work, "encounters.hl7")
    subprocess.run([sys.executable, os.path.join(REPO, "scripts", "gen-encounters.py"), roster, str(a.encounters), enc],
                   check=True)
    npis = []
    for line in open(roster, encoding="utf-8").read().splitlines()[1:]:
        npi = line.split(",")[7]
        if npi not in npis:
            npis.append(npi)
    overrides = os.path.join(work, "overrides.csv")
    with open(overrides, "w") as f:
        f.write("npi,type,endpoint\n")
        for n in npis:
            f.write(f"{n},REST,http://127.0.0.1:{port}/hook/{n}\n")
    msgs, discharges = [], 0
    for m in messages_of(enc):
        msgs.append(m)
        discharges += b"|ADT^A03|" in m
        # Every fifth discharge is cancelled an hour later (A13): a retraction to
        # exactly the recipients of the discharge.
        if b"|ADT^A03|" in m and discharges % 5 == 0:
            t = re.search(rb"\|(\d{12})00\|", m).group(1)
            later = t[:8] + b"%02d" % (int(t[8:10]) + 1) + t[10:]
            c = m.replace(b"|ADT^A03|", b"|ADT^A13|").replace(b"EVN|A03|", b"EVN|A13|").replace(t, later)
            msgs.append(re.sub(rb"\|(G\d{8})3\|", rb"|\g<1>9|", c))
    for p in sorted(glob.glob(os.path.join(SHARED, "corpus", "hl7", "*.hl7"))) + \
            sorted(glob.glob(os.path.join(SHARED, "corpus", "hl7", "invalid", "*.hl7"))):
        msgs.extend(messages_of(p))
    inputs = {"roster": roster, "overrides": overrides, "messages": msgs}
    env = {
        "ADT_ROUTER__MLLP__LISTEN": "127.0.0.1:0",
        "ADT_ROUTER__HTTP__LISTEN": "127.0.0.1:0",
        "ADT_ROUTER__ROUTING__RULES_DIR": os.path.join(REPO, "routing-rules"),
        "ADT_ROUTER__DELIVERY__ALLOW_PRIVATE_NETWORKS": "true",
        "ADT_ROUTER__DELIVERY__REQUIRE_HTTPS": "false",
        "ADT_ROUTER_LOG": "info",
    }
    print(f"inputs: {len(msgs)} messages ({a.encounters} encounters x 4, {discharges // 5} cancels, the shared corpus), "
          f"a 2,000-patient roster, {len(npis)} webhook overrides; work dir {work}")
    results = {}
    for label, binary in (("old", a.old), ("new", a.new)):
        results[label] = run(binary, label, work, inputs, env, port)
    differ = 0
    print(f"{'output':24} {'rows':>6}  same")
    for key in results["old"]:
        o, n = results["old"][key], results["new"][key]
        same = o == n
        differ += not same
        print(f"{key:24} {len(o):>6}  {'yes' if same else 'NO'}")
        if not same:
            for i, (x, y) in enumerate(zip(o, n)):
                if x != y:
                    print(f"  first difference at row {i}:\n    old {x}\n    new {y}")
                    break
            else:
                print(f"  row counts differ: old {len(o)}, new {len(n)}")
    for label in results:
        with open(os.path.join(work, f"{label}.json"), "w") as f:
            json.dump(results[label], f, indent=1, default=str)
    httpd.shutdown()
    if differ:
        sys.exit(f"{differ} output(s) differ; both dumps are in {work}")
    print("identical")


if __name__ == "__main__":
    main()

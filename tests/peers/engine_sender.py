#!/usr/bin/env python3
"""An interface engine's TCP Sender, as hospitals run one, built on python-hl7's client.

It behaves like Open Integration Engine / Mirth Connect's TCP Sender in MLLP mode with
"queue on failure" and response validation on:
- one connection, one message in flight, each ACK awaited (python-hl7's MLLPClient);
- no answer within --ack-timeout, a closed connection or a socket error: the message
  stays at the head of the queue, the connection is dropped, and it is resent after
  --retry-ms (the engine's "retry interval");
- an answer is parsed with python-hl7 (hl7.parse); MSA-1 AA/CA is SENT; any other code
  is ERROR and the message is never resent (stock settings), unless the code is listed
  in --retry-codes (an engine configured, or scripted, to re-queue those).

It writes its own log as JSON on stdout: every attempt with what the engine heard, and
each message's final status. Tests compare that log with what adt-router recorded.

    engine_sender.py HOST PORT --count 60 --prefix M --rate 20 [--enhanced]
"""
import argparse
import json
import socket
import sys
import time

import hl7
import hl7.client

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"


def message(cid: str, enhanced: bool) -> bytes:
    ack = "|||AL|NE" if enhanced else ""
    return (
        f"MSH|^~\\&|ENGINE|GENHOSP|ADTR|ADTR|20260101120000||ADT^A01|{cid}|P|2.5.1{ack}\r"
        f"EVN|A01|20260101120000\r"
        f"PID|1||MRN{cid}^^^GENHOSP^MR||DOE^JANE\r"
        f"PV1|1|I|W1^101^A\r"
    ).encode()


class Sender:
    def __init__(self, host, port, ack_timeout):
        self.host, self.port, self.ack_timeout = host, port, ack_timeout
        self.client = None

    def drop(self):
        if self.client is not None:
            try:
                self.client.close()
            except OSError:
                pass
            self.client = None

    def attempt(self, payload: bytes) -> str:
        """Sends once; returns the MSA-1 heard, or 'none' (no answer, closed, error)."""
        try:
            if self.client is None:
                self.client = hl7.client.MLLPClient(self.host, self.port)
                self.client.socket.settimeout(self.ack_timeout)
            data = self.client.send_message(payload)
            # python-hl7 returns the first read; an ACK may span several.
            deadline = time.monotonic() + self.ack_timeout
            while data and not data.rstrip(CR + b"\n").endswith(EB):
                self.client.socket.settimeout(max(0.01, deadline - time.monotonic()))
                more = self.client.socket.recv(65536)
                if not more:
                    break
                data += more
        except (OSError, socket.timeout):
            self.drop()
            return "none"
        if not data or EB not in data:
            self.drop()
            return "none"
        text = data.strip(SB + EB + CR + b"\n").decode("utf-8", "replace")
        try:
            msa = hl7.parse(text.replace("\n", "\r")).segment("MSA")
            return str(msa[1])
        except Exception:  # an unreadable answer: the engine retries it like a timeout
            self.drop()
            return "none"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--count", type=int, default=60)
    ap.add_argument("--prefix", default="M")
    ap.add_argument("--rate", type=float, default=20.0, help="messages per second at most")
    ap.add_argument("--enhanced", action="store_true", help="MSH-15 AL, MSH-16 NE")
    ap.add_argument("--ack-timeout", type=float, default=5.0)
    ap.add_argument("--retry-ms", type=int, default=300)
    ap.add_argument("--retry-codes", default="", help="comma separated, e.g. AR,CE")
    ap.add_argument("--give-up-after", type=float, default=90.0, help="seconds in all")
    a = ap.parse_args()

    retry_codes = {c for c in a.retry_codes.split(",") if c}
    sender = Sender(a.host, a.port, a.ack_timeout)
    attempts, final = [], {}
    started = time.monotonic()
    for i in range(a.count):
        cid = f"{a.prefix}-{i:04d}"
        payload = message(cid, a.enhanced)
        due = started + i / a.rate
        time.sleep(max(0.0, due - time.monotonic()))
        while True:
            heard = sender.attempt(payload)
            attempts.append({"control_id": cid, "heard": heard, "t": round(time.monotonic() - started, 3)})
            if heard in ("AA", "CA"):
                final[cid] = "SENT"
                break
            if heard != "none" and heard not in retry_codes:
                final[cid] = "ERROR"
                break
            if time.monotonic() - started > a.give_up_after:
                final[cid] = "QUEUED"
                break
            time.sleep(a.retry_ms / 1000)
    sender.drop()
    json.dump({"attempts": attempts, "final": final}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

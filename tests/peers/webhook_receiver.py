#!/usr/bin/env python3
"""A webhook receiver for the delivery tests, written against the official Standard
Webhooks library (`pip install standardwebhooks`): it verifies every request's
signature with the shared secret and answers per path:

  /ok      200
  /flaky   503 with Retry-After: 1 for the first two requests, then 200
  /gone    410
  /down    503 every time, no Retry-After
  /hang    never answers (sleeps 60 s)
  /hang-once  the first request is logged as it arrives and never answered; then 200
  /redirect   307 to this receiver's /redirected (which must never be asked)

Prints its port on the first line of stdout; appends one JSON line per request to LOG.

    webhook_receiver.py SECRET LOG
"""
import hashlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

SECRET, LOG = sys.argv[1], sys.argv[2]
verifier = Webhook(SECRET)
seen = {}
lock = threading.Lock()


def log(path, n, status, headers, verified, body):
    with lock, open(LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps({
            "path": path, "n": n, "at": time.time(), "status": status,
            "webhook_id": headers.get("webhook-id"), "verified": verified,
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }) + "\n")


class Handler(BaseHTTPRequestHandler):
    # Keep-alive, and no Nagle delay between the header and body writes (with the
    # client's delayed ACK that stalls every answer by ~40 ms).
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            verifier.verify(body, headers)
            verified = True
        except Exception:  # noqa: BLE001 - any failure means "not verified"
            verified = False
        with lock:
            n = seen.get(self.path, 0) + 1
            seen[self.path] = n
        status, extra = 200, {}
        if self.path == "/flaky" and n <= 2:
            status, extra = 503, {"Retry-After": "1"}
        elif self.path == "/gone":
            status = 410
        elif self.path == "/down":
            status = 503
        elif self.path == "/redirect":
            status, extra = 307, {"Location": f"http://127.0.0.1:{server.server_address[1]}/redirected"}
        elif self.path == "/hang" or (self.path == "/hang-once" and n == 1):
            if self.path == "/hang-once":
                log(self.path, n, "hung", headers, verified, body)
            time.sleep(60)
            return
        log(self.path, n, status, headers, verified, body)
        self.send_response(status)
        for k, v in extra.items():
            self.send_header(k, v)
        answer = b'{"ok": true}' if status == 200 else b'{"error": "try later"}'
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()

#!/usr/bin/env python3
"""A FHIR rest-hook subscriber for the tests: logs every notification it receives
(path, content type, the X-Practice-Secret and Authorization headers, the Bundle) as one JSON line to LOG
and answers per path: /hook 200, /gone 410, /slow 200 after 3 s.

Prints its port on the first line of stdout (PORT, when given, is used: a subscriber
that comes back after being down listens where it did).

    fhir_subscriber.py LOG [PORT]
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = sys.argv[1]
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            bundle = json.loads(body)
        except ValueError:
            bundle = None
        with lock, open(LOG, "a") as f:
            f.write(json.dumps({
                "path": self.path,
                "at": time.time(),
                "content_type": self.headers.get("Content-Type"),
                "secret": self.headers.get("X-Practice-Secret"),
                "authorization": self.headers.get("Authorization"),
                "bundle": bundle,
            }) + "\n")
        if self.path == "/slow":
            time.sleep(3)
        code = 410 if self.path in ("/gone", "/gone-with-body") else 200
        # /gone-with-body: an answer whose text must never reach the subscriber's view.
        body = b"internal detail SECRET-BODY-4711" if self.path == "/gone-with-body" else b""
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer.allow_reuse_address = True
server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2]) if len(sys.argv) > 2 else 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()

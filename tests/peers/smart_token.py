#!/usr/bin/env python3
"""A SMART Backend Services token endpoint stand-in for the tests, checking client
assertions with PyJWT (signature, alg, kid, iss = sub = a registered client, aud = this
endpoint, exp at most five minutes ahead, jti never reused) before it issues a token.

    smart_token.py LOG CLIENT=jwks:URL|CLIENT=pem:PUBLIC_KEY_PATH ...

A client is registered with a JWK Set URL (the way SMART prefers) or a public key.
POST /token answers per RFC 6749 (invalid_client / invalid_request / invalid_grant on a
failed check). Every request is logged to LOG as one JSON line (ok, error, client_id,
alg, kid, scope, jti, token). Tokens live EXPIRES_IN seconds (environment, default 300).
Prints its port on the first line of stdout.
"""
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

LOG = sys.argv[1]
CLIENTS = {}
for reg in sys.argv[2:]:
    client_id, how = reg.split("=", 1)
    kind, where = how.split(":", 1)
    if kind == "jwks":
        CLIENTS[client_id] = ("jwks", jwt.PyJWKClient(where, cache_keys=False))
    else:
        with open(where, "rb") as f:
            CLIENTS[client_id] = ("pem", load_pem_public_key(f.read()))
EXPIRES_IN = int(os.environ.get("EXPIRES_IN", "300"))
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
lock = threading.Lock()
seen_jti = set()
issued = [0]


class Refused(Exception):
    def __init__(self, error, why):
        super().__init__(why)
        self.error = error


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        form = {k: v[0] for k, v in parse_qs(body).items()}
        entry = {"at": time.time(), "scope": form.get("scope")}
        try:
            token = self.check(form, entry)
            entry.update(ok=True, token=token)
            self.answer(200, {"access_token": token, "token_type": "bearer",
                              "expires_in": EXPIRES_IN, "scope": form.get("scope")})
        except Refused as e:
            entry.update(ok=False, error=e.error, why=str(e))
            self.answer(400 if e.error != "invalid_client" else 401,
                        {"error": e.error, "error_description": str(e)})
        with lock, open(LOG, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def check(self, form, entry):
        if self.path != "/token":
            raise Refused("invalid_request", "not the token endpoint")
        if form.get("grant_type") != "client_credentials":
            raise Refused("unsupported_grant_type", "grant_type must be client_credentials")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise Refused("invalid_request", "client_assertion_type")
        if not form.get("scope"):
            raise Refused("invalid_scope", "no scope")
        assertion = form.get("client_assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as e:
            raise Refused("invalid_request", f"not a JWT: {e}")
        entry.update(alg=header.get("alg"), kid=header.get("kid"),
                     client_id=unverified.get("iss"), jti=unverified.get("jti"))
        if header.get("alg") not in ("RS384", "ES384"):
            raise Refused("invalid_client", f"alg {header.get('alg')}")
        if header.get("typ") != "JWT" or not header.get("kid"):
            raise Refused("invalid_client", "typ JWT and kid required")
        reg = CLIENTS.get(unverified.get("iss"))
        if reg is None:
            raise Refused("invalid_client", "unknown client")
        kind, source = reg
        try:
            key = source.get_signing_key(header["kid"]).key if kind == "jwks" else source
            me = f"http://127.0.0.1:{self.server.server_address[1]}/token"
            claims = jwt.decode(assertion, key, algorithms=[header["alg"]], audience=me,
                                issuer=unverified["iss"],
                                options={"require": ["iss", "sub", "aud", "exp", "jti"]})
        except (jwt.PyJWTError, KeyError) as e:
            raise Refused("invalid_client", f"assertion refused: {e}")
        if claims["sub"] != claims["iss"]:
            raise Refused("invalid_client", "sub must equal iss")
        if claims["exp"] > time.time() + 300 + 5:
            raise Refused("invalid_client", "exp more than five minutes ahead")
        with lock:
            if claims["jti"] in seen_jti:
                raise Refused("invalid_grant", "jti reused")
            seen_jti.add(claims["jti"])
            issued[0] += 1
            return f"tok-{issued[0]}-{claims['iss']}"

    def answer(self, code, doc):
        data = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()

#!/usr/bin/env python3
"""A HISP stand-in for the Direct tests, built on aiosmtpd (a real SMTP server).

It takes adt-router's SMTP submissions, stores each message in a Maildir (as aiosmtpd's
Mailbox handler does), reads it back with Python's own `email` parser, and appends a
summary (headers, parts, text) as one JSON line to LOG. Then, as a recipient's HISP
would, it reports back by SMTP to adt-router's report intake (INTAKE = host:port),
according to the recipient's local part:

  ok@...              a processed MDN, then a dispatched MDN (timely and reliable)
  processed-only@...  a processed MDN only
  dsn@...             a failure DSN (5.1.1, no such mailbox)
  denied@...          a failed MDN (Disposition ...; failed, with a Failure field)
  silent@...          nothing
  reject@...          refused at RCPT with 550 (a permanent SMTP failure)

With HISP_TLS_CERT and HISP_TLS_KEY (PEM) it requires STARTTLS; with HISP_AUTH
(`user:password`) it requires SMTP AUTH (over TLS), as a real HISP's submission port does.

Prints its port on the first line of stdout.

    hisp.py MAILDIR LOG INTAKE
"""
import json
import mailbox
import os
import ssl
import smtplib
import socket
import sys
import threading
import time
import uuid
from email import policy
from email.parser import BytesParser

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult, LoginPassword

MAILDIR, LOG, INTAKE = sys.argv[1], sys.argv[2], sys.argv[3]
lock = threading.Lock()


def log(entry):
    with lock, open(LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")


def summary(raw):
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    parts = []
    for p in msg.walk():
        if p.is_multipart():
            continue
        content = p.get_content()
        parts.append({
            "content_type": p.get_content_type(),
            "filename": p.get_filename(),
            "content_id": p.get("Content-ID"),
            "disposition": p.get_content_disposition(),
            "text": content if isinstance(content, str) else content.decode("utf-8", "replace"),
        })
    return {
        "message_id": msg["Message-ID"],
        "from": msg["From"],
        "to": msg["To"],
        "subject": msg["Subject"],
        "date": msg["Date"],
        "content_type": msg.get_content_type(),
        "disposition_notification_options": msg["Disposition-Notification-Options"],
        "disposition_notification_to": msg["Disposition-Notification-To"],
        "x_direct_context": msg["X-Direct-Context"],
        "x_adt_router_notification": msg["X-ADT-Router-Notification"],
        "defects": [str(d) for d in msg.defects],
        "parts": parts,
    }


def mdn(to, recipient, original_id, disposition, extra=""):
    b = "mdn-" + uuid.uuid4().hex
    return (
        f"From: hisp@direct.practice.example\r\nTo: {to}\r\n"
        f"Subject: {disposition.split('/')[0].capitalize()}: your message\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@direct.practice.example>\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: multipart/report; report-type=disposition-notification; boundary=\"{b}\"\r\n\r\n"
        f"--{b}\r\nContent-Type: text/plain\r\n\r\nYour message was {disposition}.\r\n"
        f"--{b}\r\nContent-Type: message/disposition-notification\r\n\r\n"
        f"Reporting-UA: hisp.direct.practice.example; stand-in\r\n"
        f"Original-Recipient: rfc822; {recipient}\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Original-Message-ID: {original_id}\r\n"
        f"Disposition: automatic-action/MDN-sent-automatically; {disposition}\r\n"
        f"{extra}\r\n--{b}--\r\n"
    )


def dsn(to, recipient, original_id):
    b = "dsn-" + uuid.uuid4().hex
    return (
        f"From: MAILER-DAEMON@hisp.direct.practice.example\r\nTo: {to}\r\n"
        f"Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@hisp.direct.practice.example>\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: multipart/report; report-type=delivery-status; boundary=\"{b}\"\r\n\r\n"
        f"--{b}\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        f"--{b}\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; hisp.direct.practice.example\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 mailbox unknown\r\n\r\n"
        f"--{b}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: {to}\r\nTo: {recipient}\r\nMessage-ID: {original_id}\r\n\r\n"
        f"--{b}--\r\n"
    )


def report(text):
    """Sends one report to the intake; a 451 (too early, or busy) is retried."""
    host, port = INTAKE.rsplit(":", 1)
    for _ in range(100):
        try:
            with smtplib.SMTP(host, int(port), timeout=10) as s:
                s.sendmail("hisp@direct.practice.example", ["router@direct.hospital.example"], text.encode())
            log({"report_sent": text.split("\r\n")[2]})
            return
        except smtplib.SMTPResponseException as e:
            if 400 <= e.smtp_code < 500:
                time.sleep(0.2)
                continue
            log({"report_refused": e.smtp_code})
            return
        except (smtplib.SMTPException, OSError) as e:
            log({"report_error": str(e)})
            time.sleep(0.2)


def answer(sender, recipient, original_id):
    local = recipient.split("@")[0].lower()
    if local == "ok":
        report(mdn(sender, recipient, original_id, "processed"))
        report(mdn(sender, recipient, original_id, "dispatched", "X-DIRECT-FINAL-DESTINATION-DELIVERY: \r\n"))
    elif local == "processed-only":
        report(mdn(sender, recipient, original_id, "processed"))
    elif local == "dsn":
        report(dsn(sender, recipient, original_id))
    elif local == "denied":
        report(mdn(sender, recipient, original_id, "failed", "Failure: recipient certificate not trusted\r\n"))


class Hisp(Mailbox):
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.split("@")[0].lower() == "reject":
            return "550 5.1.1 no such Direct address"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        await super().handle_DATA(server, session, envelope)
        s = summary(envelope.content)
        s["envelope_from"] = envelope.mail_from
        s["envelope_to"] = envelope.rcpt_tos
        log(s)
        for r in envelope.rcpt_tos:
            threading.Thread(target=answer, args=(envelope.mail_from, r, s["message_id"]), daemon=True).start()
        return "250 2.0.0 OK queued as " + uuid.uuid4().hex[:12]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def authenticator(server, session, envelope, mechanism, auth_data):
    user, password = os.environ["HISP_AUTH"].split(":", 1)
    ok = (isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user
          and auth_data.password.decode() == password)
    log({"auth": mechanism, "ok": ok})
    return AuthResult(success=ok)


options = {}
if os.environ.get("HISP_TLS_CERT"):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(os.environ["HISP_TLS_CERT"], os.environ["HISP_TLS_KEY"])
    options.update(tls_context=ctx, require_starttls=True)
if os.environ.get("HISP_AUTH"):
    options.update(authenticator=authenticator, auth_required=True, auth_require_tls=True)
port = free_port()
controller = Controller(Hisp(MAILDIR), hostname="127.0.0.1", port=port, **options)
controller.start()
print(port, flush=True)
try:
    while True:
        time.sleep(3600)
finally:
    controller.stop()

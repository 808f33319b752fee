"""Checks webhook deliveries from outside, with an independent verifier.

A receiver started here verifies every delivery with the `standardwebhooks` package (the
reference implementation of the Standard Webhooks specification), fails the first attempts
(500, then a hang past the delivery timeout), and records what it accepts. Through the server
API it registers itself, creates two groups and posts messages into both; then it checks that
every message arrived, once per event id, in each conversation's order, and that a tampered
body does not verify.

Usage: webhook-check.py BASE_URL API_KEY
"""

import json
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

BASE, KEY = sys.argv[1], sys.argv[2]
MESSAGES = 12
state = {"secret": None, "attempts": 0, "accepted": [], "bad": 0, "tamper_ok": None}
lock = threading.Lock()


def api(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + KEY)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


class Hook(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with lock:
            state["attempts"] += 1
            attempt = state["attempts"]
        if attempt == 1:
            self.send_response(500)
            self.end_headers()
            return
        if attempt == 2:
            time.sleep(3)  # past the delivery timeout: the sender gives up and retries
            self.send_response(200)
            self.end_headers()
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            event = Webhook(state["secret"]).verify(body, headers)
        except WebhookVerificationError:
            with lock:
                state["bad"] += 1
            self.send_response(400)
            self.end_headers()
            return
        with lock:
            if state["tamper_ok"] is None:
                try:
                    Webhook(state["secret"]).verify(body + b" ", headers)
                    state["tamper_ok"] = True
                except WebhookVerificationError:
                    state["tamper_ok"] = False
            state["accepted"].append((headers["webhook-id"], event))
        self.send_response(204)
        self.end_headers()


server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = "http://127.0.0.1:%d/hook" % server.server_address[1]

created = api("POST", "/v1/webhooks", {"name": "outside", "url": url, "events": ["message.sent"]})
state["secret"] = created["secret"]
# No wait for the worker: an endpoint's deliveries start from its creation.
posted = {"c1": [], "c2": []}
for conv in posted:
    api("POST", "/v1/groups", {"group": conv, "title": conv, "owner": "owner", "members": ["m"]})
for n in range(MESSAGES):
    for conv in posted:
        answer = api("POST", "/v1/conversations/%s/messages" % conv,
                     {"body": "%s-%d" % (conv, n), "sender": "m"})
        posted[conv].append(answer["seq"])

deadline = time.time() + 60
while time.time() < deadline:
    with lock:
        ids = {i for i, _ in state["accepted"]}
    if len(ids) >= 2 * MESSAGES:
        break
    time.sleep(0.2)
server.shutdown()

failures = []
for conv, seqs in posted.items():
    seen, order = set(), []
    for event_id, event in state["accepted"]:
        if event["payload"]["conv"] == conv and event_id not in seen:
            seen.add(event_id)
            order.append(event["seq"])
    if order != seqs:
        failures.append("%s: delivered %s, posted %s" % (conv, order, seqs))
if state["bad"]:
    failures.append("%d deliveries failed verification" % state["bad"])
if state["tamper_ok"] is not False:
    failures.append("a tampered body verified")
if state["attempts"] <= len(state["accepted"]):
    failures.append("the failed attempts were not retried")
if failures:
    print("webhook-check FAILED:\n  " + "\n  ".join(failures))
    sys.exit(1)
print("webhook-check: %d deliveries verified by standardwebhooks, in order per conversation, "
      "after a 500 and a timeout" % len(state["accepted"]))

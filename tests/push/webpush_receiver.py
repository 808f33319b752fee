"""A Web Push service and browser in one, for the push tests: it holds a subscription's keys,
decrypts what the server posts with http_ece (an implementation of RFC 8188/8291 independent
of the server's), and prints one JSON line per request on stdout.

The first line gives the subscription: {"port": …, "p256dh": …, "auth": …}. Requests to
/push/gone are answered 410 (an expired subscription); the first --fail-first requests to any
other path are answered 503; the others 201 once decrypted (400 if they do not decrypt)."""

import argparse
import base64
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import http_ece
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fail-first", type=int, default=0)
    args = parser.parse_args()
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    auth = os.urandom(16)
    state = {"failures_left": args.fail_first}

    def emit(record: dict) -> None:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            record = {
                "path": self.path,
                "authorization": self.headers.get("authorization"),
                "content_encoding": self.headers.get("content-encoding"),
                "ttl": self.headers.get("ttl"),
                "topic": self.headers.get("topic"),
                "urgency": self.headers.get("urgency"),
            }
            if self.path == "/push/gone":
                record["status"] = 410
                emit(record)
                return self.answer(410)
            if state["failures_left"] > 0:
                state["failures_left"] -= 1
                record["status"] = 503
                emit(record)
                return self.answer(503)
            try:
                plain = http_ece.decrypt(
                    body, private_key=key, auth_secret=auth, version="aes128gcm"
                )
                record["payload"] = json.loads(plain)
                record["status"] = 201
            except Exception as e:  # noqa: BLE001 - any failure is the server's fault
                record["error"] = repr(e)
                record["status"] = 400
            emit(record)
            self.answer(record["status"])

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    emit({"port": server.server_address[1], "p256dh": b64(public), "auth": b64(auth)})
    server.serve_forever()


if __name__ == "__main__":
    main()

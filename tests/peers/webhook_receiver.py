"""A webhook receiver that checks every delivery with the `standardwebhooks` library (an
implementation independent of the server's).

Usage: webhook_receiver.py
Prints `listening PORT` once it serves on 127.0.0.1 (a free port), then serves until stdin
closes.

  POST /hook/NAME      a delivery for receiver NAME: checked against each of NAME's secrets
                       with `Webhook(secret).verify(body, headers)`. While NAME has failures
                       left it answers 500 (counting one down); else 204. Every delivery is
                       recorded: webhook-id, type, the event's seq, which secrets verified it,
                       and the status answered.
  PUT /control/NAME    JSON {"secrets": [...], "fail": N, "always_fail": bool} sets NAME up.
  GET /received/NAME   JSON list of NAME's records, in arrival order.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

LOCK = threading.Lock()
SETUP = {}
RECORDS = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _body(self):
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n)

    def _answer(self, status, payload=None):
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-length", str(len(data)))
        if payload is not None:
            self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):
        name = self.path.removeprefix("/control/")
        setup = json.loads(self._body())
        with LOCK:
            SETUP[name] = setup
        self._answer(204)

    def do_GET(self):
        name = self.path.removeprefix("/received/")
        with LOCK:
            records = list(RECORDS.get(name, []))
        self._answer(200, records)

    def do_POST(self):
        name = self.path.removeprefix("/hook/")
        body = self._body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        with LOCK:
            setup = SETUP.setdefault(name, {"secrets": [], "fail": 0})
            failing = setup.get("always_fail") or setup.get("fail", 0) > 0
            if setup.get("fail", 0) > 0:
                setup["fail"] -= 1
            secrets = list(setup.get("secrets", []))
        verified = []
        for i, secret in enumerate(secrets):
            try:
                Webhook(secret).verify(body, headers)
                verified.append(i)
            except Exception:
                pass
        status = 500 if failing else (204 if verified else 400)
        try:
            event = json.loads(body)
        except ValueError:
            event = {}
        record = {
            "id": headers.get("webhook-id"),
            "type": event.get("type"),
            "seq": (event.get("data") or {}).get("seq"),
            "verified": verified,
            "status": status,
            "custom": headers.get("x-team"),
        }
        with LOCK:
            RECORDS.setdefault(name, []).append(record)
        self._answer(status)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"listening {server.server_address[1]}", flush=True)
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()

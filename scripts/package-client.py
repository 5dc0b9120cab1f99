#!/usr/bin/env python3
"""A small HTTP client for the package tests (standard library only).

  package-client.py seed  BASE OPERATOR_KEY STATE   create an organization, an owner (invite,
                                                    accept, log in), a channel with a message, a
                                                    room with a document; write ids to STATE
  package-client.py check BASE STATE                log in again and find all of it
  package-client.py ready BASE [SECONDS]            wait for /health/ready to answer 200

The package test runs it on the host, inside a container's network namespace (nsenter -n) or
beside a server run under qemu-user.
"""

import json
import sys
import time
import urllib.error
import urllib.request

PASSWORD = "a long passphrase for the package test"


def call(base, method, path, token=None, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
            return resp.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def must(status_want, result, what):
    status, body = result
    if status != status_want:
        sys.exit(f"{what}: HTTP {status}, wanted {status_want}: {body}")
    print(f"{what}: HTTP {status}")
    return body


def login(base, slug):
    body = must(200, call(base, "POST", "/v1/auth/login", body={"org": slug, "login": "ada", "password": PASSWORD}), "log in as ada")
    return body["access_token"]


def seed(base, key, state_file):
    slug = "acme%d" % (time.time_ns() % 1_000_000)
    org = must(201, call(base, "POST", "/v1/orgs", key, {"slug": slug, "name": "Acme Inc."}), "create organization " + slug)
    inv = must(
        201,
        call(base, "POST", "/v1/orgs/%s/invitations" % org["id"], key, {"email": "ada@example.org", "role": "owner"}),
        "invite ada as owner",
    )
    must(
        200,
        call(base, "POST", "/v1/auth/invitations/accept", body={"token": inv["token"], "username": "ada", "password": PASSWORD}),
        "ada accepts",
    )
    token = login(base, slug)
    channel = must(201, call(base, "POST", "/v1/channels", token, {"kind": "public", "name": "general"}), "create channel")
    msg = must(
        201,
        call(base, "POST", "/v1/channels/%s/messages" % channel["id"], token, {"text": "kept across upgrades"}),
        "post message",
    )
    room = must(201, call(base, "POST", "/v1/rooms", token, {"name": "Ops", "visibility": "org"}), "create room")
    doc = must(201, call(base, "POST", "/v1/rooms/%s/docs" % room["id"], token, {"name": "Runbook"}), "create document")
    state = {"slug": slug, "org": org["id"], "channel": channel["id"], "message": msg["id"], "room": room["id"], "doc": doc["id"]}
    with open(state_file, "w") as f:
        json.dump(state, f)
    print("seeded", json.dumps(state))


def check(base, state_file):
    with open(state_file) as f:
        state = json.load(f)
    token = login(base, state["slug"])
    page = must(200, call(base, "GET", "/v1/channels/%s/messages" % state["channel"], token), "list messages")
    texts = [m.get("text") for m in page["items"]]
    if "kept across upgrades" not in texts:
        sys.exit("the message is missing: %r" % texts)
    docs = must(200, call(base, "GET", "/v1/rooms/%s/docs" % state["room"], token), "list documents")
    if state["doc"] not in [d["id"] for d in docs["items"]]:
        sys.exit("the document is missing: %r" % docs)
    print("found organization %s, its message and its document" % state["slug"])


def ready(base, seconds):
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        try:
            last = call(base, "GET", "/health/ready")
            if last[0] == 200:
                print("/health/ready: HTTP 200")
                return
        except OSError as e:
            last = e
        time.sleep(0.1)
    sys.exit("not ready after %ss: %r" % (seconds, last))


def main():
    args = sys.argv[1:]
    if len(args) == 4 and args[0] == "seed":
        seed(args[1], args[2], args[3])
    elif len(args) == 3 and args[0] == "check":
        check(args[1], args[2])
    elif len(args) in (2, 3) and args[0] == "ready":
        ready(args[1], float(args[2]) if len(args) == 3 else 30)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

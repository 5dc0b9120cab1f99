#!/usr/bin/env python3
"""A small HTTP client for the package tests (standard library only).

  package-client.py seed  BASE OPERATOR_KEY STATE   create an organization, an owner and a member
                                                    (invite, accept, log in), a channel with a
                                                    message, a room with a document, a file and a
                                                    task assigned to the member; write ids to STATE
  package-client.py check BASE STATE                log in again and find all of it (the task
                                                    through the list filtered by assignee), then
                                                    verify every audit chain
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


def call(base, method, path, token=None, body=None, raw=None, content_type=None):
    """JSON `body` or bytes `raw`; answers (status, JSON), or (status, bytes) for a non-JSON answer."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("content-type", content_type or "application/json")
    if token:
        req.add_header("authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            content = resp.read()
            if "json" not in resp.headers.get("content-type", ""):
                return resp.status, content
            return resp.status, (json.loads(content) if content else None)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def must(status_want, result, what):
    status, body = result
    if status != status_want:
        sys.exit(f"{what}: HTTP {status}, wanted {status_want}: {body}")
    print(f"{what}: HTTP {status}")
    return body


FILE = b"kept across upgrades\n" * 4096


def login(base, slug, who="ada"):
    body = must(200, call(base, "POST", "/v1/auth/login", body={"org": slug, "login": who, "password": PASSWORD}), "log in as " + who)
    return body["access_token"]


def join(base, key, org, who, role):
    inv = must(
        201,
        call(base, "POST", "/v1/orgs/%s/invitations" % org, key, {"email": who + "@example.org", "role": role}),
        "invite %s as %s" % (who, role),
    )
    return must(
        200,
        call(base, "POST", "/v1/auth/invitations/accept", body={"token": inv["token"], "username": who, "password": PASSWORD}),
        who + " accepts",
    )


def seed(base, key, state_file):
    slug = "acme%d" % (time.time_ns() % 1_000_000)
    org = must(201, call(base, "POST", "/v1/orgs", key, {"slug": slug, "name": "Acme Inc."}), "create organization " + slug)
    join(base, key, org["id"], "ada", "owner")
    bob = join(base, key, org["id"], "bob", "member")
    token = login(base, slug)
    channel = must(201, call(base, "POST", "/v1/channels", token, {"kind": "public", "name": "general"}), "create channel")
    msg = must(
        201,
        call(base, "POST", "/v1/channels/%s/messages" % channel["id"], token, {"text": "kept across upgrades"}),
        "post message",
    )
    room = must(201, call(base, "POST", "/v1/rooms", token, {"name": "Ops", "visibility": "org"}), "create room")
    doc = must(201, call(base, "POST", "/v1/rooms/%s/docs" % room["id"], token, {"name": "Runbook"}), "create document")
    asset = must(201, call(base, "POST", "/v1/assets?name=notes.txt", token, raw=FILE, content_type="text/plain"), "upload a file")
    task = must(201, call(base, "POST", "/v1/tasks", token, {"title": "Rotate keys", "assignee_ids": [bob["id"]]}), "create a task for bob")
    state = {
        "slug": slug,
        "org": org["id"],
        "bob": bob["id"],
        "channel": channel["id"],
        "message": msg["id"],
        "room": room["id"],
        "doc": doc["id"],
        "asset": asset["id"],
        "task": task["id"],
        "operator_key": key,
    }
    with open(state_file, "w") as f:
        json.dump(state, f)
    print("seeded", json.dumps({k: v for k, v in state.items() if k != "operator_key"}))


def check(base, state_file):
    with open(state_file) as f:
        state = json.load(f)
    token = login(base, state["slug"])
    login(base, state["slug"], "bob")
    page = must(200, call(base, "GET", "/v1/channels/%s/messages" % state["channel"], token), "list messages")
    texts = [m.get("text") for m in page["items"]]
    if "kept across upgrades" not in texts:
        sys.exit("the message is missing: %r" % texts)
    docs = must(200, call(base, "GET", "/v1/rooms/%s/docs" % state["room"], token), "list documents")
    if state["doc"] not in [d["id"] for d in docs["items"]]:
        sys.exit("the document is missing: %r" % docs)
    content = must(200, call(base, "GET", "/v1/assets/%s/content" % state["asset"], token), "download the file")
    if content != FILE:
        sys.exit("the file came back different: %d bytes" % len(content))
    tasks = must(200, call(base, "GET", "/v1/tasks?assignee=%s" % state["bob"], token), "list bob's tasks")
    if [t["id"] for t in tasks["items"]] != [state["task"]]:
        sys.exit("bob's task is missing: %r" % tasks)
    print("found organization %s: both users, the message, the document, the file and bob's task" % state["slug"])
    # After an upgrade the chains hold records stored by both builds (and the logins above
    # added some): they verify as one.
    v = must(200, call(base, "GET", "/v1/audit/verification", state["operator_key"]), "verify the audit chains")
    if not v.get("ok"):
        sys.exit("the audit chains do not verify: %r" % v)
    print("audit chains verify: %d records in %d organizations" % (v["records"], v["orgs"]))


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

#!/usr/bin/env python3
"""Provisions the principals the contract tests run as, over HTTP, with the standard library only.

    provision.py BASE_URL OPERATOR_KEY OUT.json

Makes two organizations with the operator key:
  - the main one, with an owner (invited by the operator), a member and a guest (invited by the
    owner); each accepted the invitation and logged in;
  - a scratch one with an owner and a member, for the operations that end the caller's session
    or change other users (logout, session revocation, password change, suspension, deletion),
    so that they cannot take the main principals away while the rest of the run goes on.

Writes OUT.json: {"base_url", "operator_key", "org": {id, slug}, "scratch_org": {...},
"principals": {name: {user_id, username, password, access_token, refresh_token, org}}}.
"""

import json
import sys
import time
import urllib.error
import urllib.request

PASSWORD = "contract-test passphrase"


def call(base, method, path, token=None, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        sys.exit(f"provision: {method} {path} answered {e.code}: {raw.decode(errors='replace')}")


def accept_and_login(base, slug, token, username):
    call(base, "POST", "/v1/auth/invitations/accept", body={"token": token, "username": username, "password": PASSWORD})
    _, pair = call(base, "POST", "/v1/auth/login", body={"org": slug, "login": username, "password": PASSWORD})
    return pair


def org_with_users(base, opk, slug, others):
    _, org = call(base, "POST", "/v1/orgs", opk, {"slug": slug, "name": f"Contract {slug}"})
    _, inv = call(base, "POST", f"/v1/orgs/{org['id']}/invitations", opk, {"email": f"owner@{slug}.example.org", "role": "owner"})
    owner = accept_and_login(base, slug, inv["token"], f"owner-{slug}")
    people = {"owner": (inv["user"]["id"], f"owner-{slug}", owner)}
    for role in others:
        _, inv = call(base, "POST", "/v1/invitations", owner["access_token"], {"email": f"{role}@{slug}.example.org", "role": role})
        people[role] = (inv["user"]["id"], f"{role}-{slug}", accept_and_login(base, slug, inv["token"], f"{role}-{slug}"))
    return org, people


def main():
    base, opk, out = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
    stamp = format(int(time.time()), "x")
    org, main_people = org_with_users(base, opk, f"contract-{stamp}", ["member", "guest"])
    scratch, scratch_people = org_with_users(base, opk, f"scratch-{stamp}", ["member"])
    principals = {}
    for prefix, o, people in (("", org, main_people), ("scratch_", scratch, scratch_people)):
        for name, (uid, username, pair) in people.items():
            principals[prefix + name] = {
                "user_id": uid,
                "username": username,
                "password": PASSWORD,
                "access_token": pair["access_token"],
                "refresh_token": pair["refresh_token"],
                "org": {"id": o["id"], "slug": o["slug"]},
            }
    doc = {
        "base_url": base,
        "operator_key": opk,
        "org": {"id": org["id"], "slug": org["slug"]},
        "scratch_org": {"id": scratch["id"], "slug": scratch["slug"]},
        "principals": principals,
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"provisioned {len(principals)} users in {org['slug']} and {scratch['slug']} -> {out}")


if __name__ == "__main__":
    main()

"""Outpost's authorization server against its own password login, in one run.

With CONC callers for SECONDS each: password logins (Argon2id, a session committed); consent
answers (the user's password checked, a code committed); code exchanges at the token endpoint
(the code taken, PKCE checked, a session committed, tokens signed); refresh grants at the token
endpoint against refreshes of a login's session at /v1/auth/refresh (the same rotation).

    python apps_flow.py --url URL --org SLUG --login USER --password PW --client-id ID \
        --client-secret SECRET --redirect URI --conc 16 --seconds 8
"""

import argparse
import base64
import hashlib
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, urlparse

import requests

local = threading.local()


def session():
    if not hasattr(local, "s"):
        local.s = requests.Session()
    return local.s


def pkce():
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def run(label, conc, seconds, one, budget=None):
    """Calls `one` from `conc` threads until `seconds` pass (or `budget` calls are made)."""
    stop = time.perf_counter() + seconds
    done, lock = [0], threading.Lock()

    def worker():
        while time.perf_counter() < stop:
            with lock:
                if budget is not None and done[0] >= budget:
                    return
                done[0] += 1
            one()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(conc) as pool:
        for f in [pool.submit(worker) for _ in range(conc)]:
            f.result()
    rate = done[0] / (time.perf_counter() - t0)
    print(f"{label}_per_s={rate:.1f} {label}_n={done[0]}", flush=True)
    return rate


def main():
    ap = argparse.ArgumentParser()
    for name in ("url", "org", "login", "password", "client-id", "client-secret", "redirect"):
        ap.add_argument(f"--{name}", required=True)
    ap.add_argument("--conc", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=8)
    a = ap.parse_args()
    auth = (a.client_id, a.client_secret)
    cred = {"org": a.org, "login": a.login, "password": a.password}

    def login():
        r = session().post(f"{a.url}/v1/auth/login", json=cred)
        assert r.status_code == 200, r.text
        return r.json()

    codes, codes_lock = [], threading.Lock()

    def consent():
        verifier, challenge = pkce()
        form = {"response_type": "code", "client_id": a.client_id, "redirect_uri": a.redirect, "scope": "self.manage",
                "code_challenge": challenge, "code_challenge_method": "S256", "login": a.login,
                "password": a.password, "decision": "allow"}
        r = session().post(f"{a.url}/oauth/authorize", data=form, allow_redirects=False)
        assert r.status_code == 303, r.text
        with codes_lock:
            codes.append((parse_qs(urlparse(r.headers["location"]).query)["code"][0], verifier))

    def exchange():
        with codes_lock:
            code, verifier = codes.pop()
        r = session().post(f"{a.url}/oauth/token", auth=auth, data={"grant_type": "authorization_code", "code": code,
                           "redirect_uri": a.redirect, "code_verifier": verifier})
        assert r.status_code == 200, r.text

    logins = run("password_login", a.conc, a.seconds, login)
    run("consent", a.conc, a.seconds, consent)
    exchanges = run("code_exchange", a.conc, a.seconds, exchange, budget=len(codes))

    # Refresh chains, one per caller: an app's at /oauth/token, a login's at /v1/auth/refresh.
    def chain(first, step):
        def one():
            if not hasattr(local, first.__name__):
                setattr(local, first.__name__, first())
            setattr(local, first.__name__, step(getattr(local, first.__name__)))
        return one

    def app_grant():
        consent()
        with codes_lock:
            code, verifier = codes.pop()
        r = session().post(f"{a.url}/oauth/token", auth=auth, data={"grant_type": "authorization_code", "code": code,
                           "redirect_uri": a.redirect, "code_verifier": verifier})
        return r.json()["refresh_token"]

    def app_refresh(rt):
        r = session().post(f"{a.url}/oauth/token", auth=auth, data={"grant_type": "refresh_token", "refresh_token": rt})
        assert r.status_code == 200, r.text
        return r.json()["refresh_token"]

    def login_grant():
        return login()["refresh_token"]

    def login_refresh(rt):
        r = session().post(f"{a.url}/v1/auth/refresh", json={"refresh_token": rt})
        assert r.status_code == 200, r.text
        return r.json()["refresh_token"]

    app_rate = run("app_refresh", a.conc, a.seconds, chain(app_grant, app_refresh))
    login_rate = run("login_refresh", a.conc, a.seconds, chain(login_grant, login_refresh))
    print(f"exchange_over_login={exchanges / logins:.2f} app_refresh_over_login_refresh={app_rate / login_rate:.2f}")


if __name__ == "__main__":
    main()

"""Single sign-on end to end against a local OpenID provider, and password logins, in one run.

Each sign-in is timed in its parts: the start (Outpost), the provider's hops (its sign-in and
consent, redirects followed by hand), and the callback (Outpost: the code exchanged, the
id_token checked, the account found and a session committed). Then the provider's keys: how
often they were fetched over the sign-ins, and after a rotation.

    python sso_flow.py --url URL --idp IDP --org SLUG --login USER --password PW --n 200
"""

import argparse
import statistics
import time
from urllib.parse import urljoin

import requests


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def sign_in(api, url, org):
    t0 = time.perf_counter()
    r = api.post(f"{url}/v1/auth/sso/start", json={"org": org})
    r.raise_for_status()
    start = time.perf_counter() - t0
    browser = requests.Session()
    at, idp = r.json()["authorization_url"], 0.0
    while True:
        a = time.perf_counter()
        r = browser.get(at, allow_redirects=False)
        took = time.perf_counter() - a
        if at.startswith(url):
            r.raise_for_status()
            assert "access_token" in r.json(), r.text
            return start, idp, took, time.perf_counter() - t0
        idp += took
        at = urljoin(at, r.headers["location"])


def main():
    ap = argparse.ArgumentParser()
    for name in ("url", "idp", "org", "login", "password"):
        ap.add_argument(f"--{name}", required=True)
    ap.add_argument("--n", type=int, default=200)
    a = ap.parse_args()
    api = requests.Session()
    fetches = lambda: requests.get(f"{a.idp}/_stats").json()["jwks_fetches"]  # noqa: E731

    sign_in(api, a.url, a.org)  # the provider's keys kept from here on
    before = fetches()
    parts = [sign_in(api, a.url, a.org) for _ in range(a.n)]
    during = fetches() - before
    logins = []
    for _ in range(a.n):
        t0 = time.perf_counter()
        r = api.post(f"{a.url}/v1/auth/login", json={"org": a.org, "login": a.login, "password": a.password})
        r.raise_for_status()
        logins.append(time.perf_counter() - t0)
    time.sleep(1.1)
    requests.post(f"{a.idp}/_rotate").raise_for_status()
    before = fetches()
    rotated = sign_in(api, a.url, a.org)
    after_rotation = fetches() - before
    sign_in(api, a.url, a.org)
    kept = fetches() - before - after_rotation

    ms = lambda x: f"{x * 1000:.2f}"  # noqa: E731
    for i, name in enumerate(("start", "provider", "callback", "total")):
        xs = [p[i] for p in parts]
        print(f"sso_{name}_p50_ms={ms(statistics.median(xs))} sso_{name}_p99_ms={ms(pct(xs, 99))}")
    print(f"password_login_p50_ms={ms(statistics.median(logins))} password_login_p99_ms={ms(pct(logins, 99))}")
    print(f"callback_over_password={statistics.median([p[2] for p in parts]) / statistics.median(logins):.2f}")
    print(f"jwks_fetches_over_{a.n}_sign_ins={during} jwks_fetches_after_rotation={after_rotation} "
          f"jwks_fetches_next_sign_in={kept} rotated_sign_in_callback_ms={ms(rotated[2])}")


if __name__ == "__main__":
    main()

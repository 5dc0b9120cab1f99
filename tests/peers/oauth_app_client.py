"""A stock OAuth client (authlib) against Outpost's authorization server.

Reads one JSON object on stdin: the organization's metadata URL, the app's client id (and
secret, for a confidential app), its redirect URI and scopes, a user's login and password, and
API calls to try with the token. Goes through the authorization code flow with PKCE S256 (the
consent page answered as a browser would), calls the API, refreshes, replays the old refresh
token, authorizes again, introspects and revokes. Prints one JSON object of what it saw.
"""

import json
import re
import sys
from urllib.parse import parse_qs, urlparse

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session


def authorize(meta, client, cfg):
    """The authorization code the consent page gives, as the redirect the browser would follow."""
    verifier = generate_token(48)
    uri, state = client.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier)
    page = requests.get(uri)
    assert page.status_code == 200, page.text
    form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text))
    form = {k: v.replace("&amp;", "&").replace("&quot;", '"').replace("&#39;", "'").replace("&lt;", "<").replace("&gt;", ">") for k, v in form.items()}
    form.update(login=cfg["login"], password=cfg["password"], decision="allow")
    answer = requests.post(meta["authorization_endpoint"], data=form, allow_redirects=False)
    assert answer.status_code == 303, (answer.status_code, answer.text)
    location = answer.headers["location"]
    got = parse_qs(urlparse(location).query)
    assert got["state"] == [state] and got["iss"] == [meta["issuer"]], location
    return location, verifier


def main():
    cfg = json.load(sys.stdin)
    seen = {}
    meta = requests.get(cfg["metadata_url"]).json()
    seen["issuer"] = meta["issuer"]
    auth = "client_secret_basic" if cfg.get("client_secret") else "none"
    client = OAuth2Session(
        cfg["client_id"],
        cfg.get("client_secret"),
        scope=cfg["scope"],
        redirect_uri=cfg["redirect_uri"],
        code_challenge_method="S256",
        token_endpoint_auth_method=auth,
    )
    location, verifier = authorize(meta, client, cfg)
    token = client.fetch_token(meta["token_endpoint"], authorization_response=location, code_verifier=verifier)
    seen["scope"] = token["scope"]
    seen["token_type"] = token["token_type"]
    # The same code again: spent.
    again = requests.post(
        meta["token_endpoint"],
        data={"grant_type": "authorization_code", "code": parse_qs(urlparse(location).query)["code"][0],
              "redirect_uri": cfg["redirect_uri"], "code_verifier": verifier, "client_id": cfg["client_id"],
              **({"client_secret": cfg["client_secret"]} if cfg.get("client_secret") else {})},
    )
    seen["code_again"] = [again.status_code, again.json().get("error")]

    def call(tok, method, path, body=None):
        r = requests.request(method, cfg["base"] + path, headers={"authorization": f"Bearer {tok['access_token']}"}, json=body)
        return r.status_code

    seen["calls"] = {f"{m} {p}": call(token, m, p, b) for m, p, b in cfg["calls"]}
    old_refresh = token["refresh_token"]
    fresh = client.refresh_token(meta["token_endpoint"], refresh_token=old_refresh)
    seen["refreshed"] = fresh["access_token"] != token["access_token"] and fresh["refresh_token"] != old_refresh
    seen["after_refresh"] = call(fresh, "GET", "/v1/me")
    replay = requests.post(
        meta["token_endpoint"],
        data={"grant_type": "refresh_token", "refresh_token": old_refresh, "client_id": cfg["client_id"],
              **({"client_secret": cfg["client_secret"]} if cfg.get("client_secret") else {})},
    )
    seen["replayed_refresh"] = [replay.status_code, replay.json().get("error")]
    seen["after_replay"] = call(fresh, "GET", "/v1/me")

    # A second grant: introspected, then revoked.
    client2 = OAuth2Session(cfg["client_id"], cfg.get("client_secret"), scope=cfg["scope"], redirect_uri=cfg["redirect_uri"],
                            code_challenge_method="S256", token_endpoint_auth_method=auth)
    location, verifier = authorize(meta, client2, cfg)
    second = client2.fetch_token(meta["token_endpoint"], authorization_response=location, code_verifier=verifier)
    info = client2.introspect_token(meta["introspection_endpoint"], token=second["access_token"]).json()
    seen["introspected"] = {k: info.get(k) for k in ("active", "scope", "client_id", "token_type")}
    r = client2.revoke_token(meta["revocation_endpoint"], token=second["refresh_token"], token_type_hint="refresh_token")
    seen["revoke_status"] = r.status_code
    seen["after_revoke"] = call(second, "GET", "/v1/me")
    seen["introspected_after_revoke"] = client2.introspect_token(meta["introspection_endpoint"], token=second["access_token"]).json()
    seen["tokens"] = [token["access_token"], token["refresh_token"], fresh["refresh_token"], second["refresh_token"]]
    print(json.dumps(seen))


if __name__ == "__main__":
    main()

"""MCP tool calls: the same server's `echo` called directly (MCP Streamable HTTP, one session)
and through Outpost (`POST /v1/services/{id}/mcp/tools/echo/call`), by the same driver, in
alternating blocks so that both see the same machine. One caller, calls one after another:
what is measured is the latency each path adds, not a throughput ceiling.

Prints key=value lines: direct and through-Outpost p50/p99 in milliseconds, and what Outpost
adds at each."""

import argparse
import http.client
import json
import time
import urllib.parse

ACCEPT = "application/json, text/event-stream"


def sse_json(body: bytes):
    """The JSON-RPC message of an answer: plain JSON, or the data of an SSE event."""
    text = body.decode()
    if text.lstrip().startswith("{"):
        return json.loads(text)
    for line in text.splitlines():
        # (An event with empty data only primes the stream with an event id.)
        if line.startswith("data:") and line[5:].strip():
            return json.loads(line[5:].strip())
    raise ValueError(f"no message in {text[:200]!r}")


class Direct:
    """A minimal MCP client over Streamable HTTP: initialize once, then tools/call."""

    def __init__(self, url: str):
        u = urllib.parse.urlsplit(url)
        self.path = u.path
        self.conn = http.client.HTTPConnection(u.hostname, u.port)
        self.headers = {"Accept": ACCEPT, "Content-Type": "application/json"}
        self.next_id = 1
        init = self.request("initialize", {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"},
        })
        self.headers["MCP-Protocol-Version"] = init["result"]["protocolVersion"]
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def post(self, message):
        self.conn.request("POST", self.path, json.dumps(message), self.headers)
        r = self.conn.getresponse()
        body = r.read()
        sid = r.getheader("mcp-session-id")
        if sid:
            self.headers["Mcp-Session-Id"] = sid
        return r.status, body

    def request(self, method, params):
        self.next_id += 1
        status, body = self.post({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        assert status == 200, (status, body[:200])
        return sse_json(body)

    def call(self):
        m = self.request("tools/call", {"name": "echo", "arguments": {"message": "hi"}})
        assert m["result"]["content"][0]["text"] == "Echo: hi", m


class ThroughOutpost:
    def __init__(self, url: str, token: str, service: str):
        u = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port)
        self.path = f"/v1/services/{service}/mcp/tools/echo/call"
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.body = json.dumps({"arguments": {"message": "hi"}})

    def call(self):
        self.conn.request("POST", self.path, self.body, self.headers)
        r = self.conn.getresponse()
        body = r.read()
        assert r.status == 200, (r.status, body[:300])
        assert json.loads(body)["content"][0]["text"] == "Echo: hi"


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mcp", required=True, help="the MCP server's endpoint")
    ap.add_argument("--url", required=True, help="Outpost's base URL")
    ap.add_argument("--token", required=True)
    ap.add_argument("--service", required=True)
    ap.add_argument("--calls", type=int, default=2000, help="calls per path")
    ap.add_argument("--block", type=int, default=100)
    a = ap.parse_args()
    paths = {"direct": Direct(a.mcp), "outpost": ThroughOutpost(a.url, a.token, a.service)}
    for p in paths.values():
        for _ in range(50):  # warm-up: connections, the session, the catalog
            p.call()
    times = {name: [] for name in paths}
    done = 0
    while done < a.calls:
        for name, p in paths.items():
            for _ in range(a.block):
                t0 = time.perf_counter()
                p.call()
                times[name].append((time.perf_counter() - t0) * 1000)
        done += a.block
    d50, d99 = pct(times["direct"], 50), pct(times["direct"], 99)
    o50, o99 = pct(times["outpost"], 50), pct(times["outpost"], 99)
    print(f"calls_each={done} direct_p50_ms={d50:.3f} direct_p99_ms={d99:.3f} "
          f"outpost_p50_ms={o50:.3f} outpost_p99_ms={o99:.3f} "
          f"added_p50_ms={o50 - d50:.3f} added_p99_ms={o99 - d99:.3f}")


if __name__ == "__main__":
    main()

"""An independent realtime client, written only from openapi/realtime.md.

Usage: realtime_client.py BASE_URL ACCESS_TOKEN CHANNEL_ID
Prints one JSON line with what it saw; exits non-zero on any deviation from the document.
"""

import asyncio
import json
import sys
import urllib.request

from websockets.asyncio.client import connect


def post(base, token, channel, text):
    req = urllib.request.Request(
        f"{base}/v1/channels/{channel}/messages",
        data=json.dumps({"text": text}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 201, r.status
        return json.load(r)["id"]


async def recv(ws):
    frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
    assert isinstance(frame, dict) and "op" in frame, frame
    return frame


async def main(base, token, channel):
    ws_url = base.replace("http://", "ws://") + "/v1/realtime"
    topic = f"channel:{channel}"
    seen = {}

    # The token as a second subprotocol; the server picks outpost.v1.
    async with connect(ws_url, subprotocols=["outpost.v1", "access_token." + token]) as ws:
        assert ws.subprotocol == "outpost.v1", ws.subprotocol
        welcome = await recv(ws)
        assert welcome["op"] == "welcome", welcome
        epoch = welcome["epoch"]
        await ws.send(json.dumps({"op": "subscribe", "topic": topic, "ref": "s1"}))
        sub = await recv(ws)
        assert sub == {"op": "subscribed", "topic": topic, "seq": sub["seq"], "ref": "s1"}, sub
        posted = [post(base, token, channel, f"live {i}") for i in range(3)]
        last = sub["seq"]
        for want in posted:
            ev = await recv(ws)
            assert ev["op"] == "event" and ev["type"] == "message.posted", ev
            assert ev["topic"] == topic and ev["seq"] > last, ev
            assert ev["data"]["id"] == want, (ev, want)
            last = ev["seq"]
        await ws.send(json.dumps({"op": "ping", "ref": "p1"}))
        assert await recv(ws) == {"op": "pong", "ref": "p1"}
        seen["live"] = len(posted)

    # Away: two more messages. Back with the auth frame, resuming from the last seq.
    missed = [post(base, token, channel, f"missed {i}") for i in range(2)]
    async with connect(ws_url, subprotocols=["outpost.v1"]) as ws:
        await ws.send(json.dumps({"op": "auth", "token": token}))
        assert (await recv(ws))["op"] == "welcome"
        await ws.send(json.dumps({"op": "subscribe", "topic": topic, "since": last, "epoch": epoch}))
        replayed = []
        while True:
            f = await recv(ws)
            if f["op"] == "subscribed":
                break
            assert f["op"] == "event" and f["seq"] > last, f
            last = f["seq"]
            replayed.append(f["data"]["id"])
        assert replayed == missed, (replayed, missed)
        assert f["seq"] == last, f
        seen["replayed"] = len(replayed)

        # Another epoch cannot be resumed.
        await ws.send(json.dumps({"op": "subscribe", "topic": topic, "since": 1, "epoch": epoch + 1}))
        assert await recv(ws) == {"op": "reset", "topic": topic, "reason": "epoch"}
        seen["reset"] = True

    # A bad token is refused with 4001.
    async with connect(ws_url, subprotocols=["outpost.v1"]) as ws:
        await ws.send(json.dumps({"op": "auth", "token": "v4.public.garbage"}))
        try:
            while True:
                await asyncio.wait_for(ws.recv(), timeout=10)
        except Exception:
            pass
        assert ws.close_code == 4001, ws.close_code
        seen["refused"] = ws.close_code

    print(json.dumps(seen))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))

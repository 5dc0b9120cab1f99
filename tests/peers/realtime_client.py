"""An independent realtime client, written only from openapi/realtime.md and checked against
openapi/realtime.schema.json.

Usage: realtime_client.py BASE_URL ACCESS_TOKEN CHANNEL_ID

Every frame it receives is validated against `$defs/ServerFrame` and every frame it sends against
`$defs/ClientFrame` (formats checked: uuid, date-time). A frame that does not match ends the run
with exit status 3, the frame and the error on stderr.

Prints one JSON line on stdout with what it saw of the basic flow (live events, resume, reset,
a refused token), and one line on stderr naming every frame kind it validated. Exits non-zero on
any deviation from the document or the schema. The token must be a member's access token; the
run creates a room, uses its call, and logs the session out at the end.
"""

import asyncio
import collections
import json
import os
import sys
import urllib.error
import urllib.request
import uuid

from jsonschema import Draft202012Validator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA_FILE = os.path.join(HERE, "..", "..", "openapi", "realtime.schema.json")


class FrameInvalid(Exception):
    """A frame that does not match the schema (not caught by the flows below)."""


class Schema:
    """The frame schema's two sides, with format checking on."""

    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            self.doc = json.load(f)
        checker = Draft202012Validator.FORMAT_CHECKER
        # Without rfc3339-validator, jsonschema skips date-time silently.
        for fmt in ("uuid", "date-time"):
            if fmt not in checker.checkers:
                sys.exit(f"jsonschema cannot check the {fmt} format here (install rfc3339-validator)")

        def validator(ref):
            root = {"$schema": self.doc["$schema"], "$defs": self.doc["$defs"], "$ref": ref}
            return Draft202012Validator(root, format_checker=checker)

        self.side = {"server": validator("#/$defs/ServerFrame"), "client": validator("#/$defs/ClientFrame")}
        self.per_op = {
            side: {op: validator(ref) for op, ref in self.doc[f"x-{side}-ops"].items()} for side in ("server", "client")
        }
        self.seen = {"server": collections.Counter(), "client": collections.Counter()}

    def errors(self, side, frame):
        if not list(self.side[side].iter_errors(frame)):
            return []
        # Say what is wrong against the op's own definition when the op is known.
        op = frame.get("op") if isinstance(frame, dict) else None
        v = self.per_op[side].get(op, self.side[side])
        errs = sorted(v.iter_errors(frame), key=lambda e: list(e.absolute_path)) or list(self.side[side].iter_errors(frame))
        return [f"{'/'.join(map(str, e.absolute_path)) or '(frame)'}: {e.message}" for e in errs]

    def check(self, side, frame):
        errs = self.errors(side, frame)
        if errs:
            what = "$defs/ServerFrame" if side == "server" else "$defs/ClientFrame"
            raise FrameInvalid(f"a {side} frame does not match {what}:\n{json.dumps(frame)}\n" + "\n".join(errs))
        self.seen[side][frame["op"]] += 1


S = None  # the Schema, set in main


def rest(base, token, method, path, body=None, want=(200, 201, 204)):
    req = urllib.request.Request(
        f"{base}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method=method,
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, text = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    assert status in want, (method, path, status, text)
    return json.loads(text) if text else None


def post(base, token, channel, text):
    return rest(base, token, "POST", f"/v1/channels/{channel}/messages", {"text": text}, want=(201,))["id"]


async def recv(ws, timeout=10):
    text = await asyncio.wait_for(ws.recv(), timeout=timeout)
    assert isinstance(text, str), text
    frame = json.loads(text)
    assert isinstance(frame, dict) and "op" in frame, frame
    S.check("server", frame)
    return frame


async def send(ws, frame):
    S.check("client", frame)
    await ws.send(json.dumps(frame))


async def send_refused(ws, frame):
    """Sends a frame the schema refuses, as the server does (it answers `error invalid_frame`)."""
    assert S.errors("client", frame), f"the schema accepts a frame the server refuses: {frame}"
    await ws.send(json.dumps(frame))


async def until(ws, pred, timeout=10):
    """Frames up to and including the first for which pred holds."""
    got = []
    while True:
        f = await recv(ws, timeout)
        got.append(f)
        if pred(f):
            return got


def op_is(op, **kv):
    return lambda f: f["op"] == op and all(f.get(k) == v for k, v in kv.items())


async def drain(ws, quiet=0.3):
    """Whatever else the socket was sent, validated."""
    got = []
    try:
        while True:
            got.append(await recv(ws, quiet))
    except (asyncio.TimeoutError, ConnectionClosed):
        return got


async def basic(base, token, channel, ws_url):
    """The flow of the document's first sections: live events, resume, reset, a refused token."""
    topic = f"channel:{channel}"
    seen = {}

    # The token as a second subprotocol; the server picks outpost.v1.
    async with connect(ws_url, subprotocols=["outpost.v1", "access_token." + token]) as ws:
        assert ws.subprotocol == "outpost.v1", ws.subprotocol
        welcome = await recv(ws)
        assert welcome["op"] == "welcome", welcome
        epoch = welcome["epoch"]
        await send(ws, {"op": "subscribe", "topic": topic, "ref": "s1"})
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
        await send(ws, {"op": "ping", "ref": "p1"})
        assert await recv(ws) == {"op": "pong", "ref": "p1"}
        seen["live"] = len(posted)

    # Away: two more messages. Back with the auth frame, resuming from the last seq.
    missed = [post(base, token, channel, f"missed {i}") for i in range(2)]
    async with connect(ws_url, subprotocols=["outpost.v1"]) as ws:
        await send(ws, {"op": "auth", "token": token})
        assert (await recv(ws))["op"] == "welcome"
        await send(ws, {"op": "subscribe", "topic": topic, "since": last, "epoch": epoch})
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
        await send(ws, {"op": "subscribe", "topic": topic, "since": 1, "epoch": epoch + 1})
        assert await recv(ws) == {"op": "reset", "topic": topic, "reason": "epoch"}
        seen["reset"] = True

    # A bad token is refused with 4001.
    async with connect(ws_url, subprotocols=["outpost.v1"]) as ws:
        await send(ws, {"op": "auth", "token": "v4.public.garbage"})
        await drain(ws, 10)
        assert ws.close_code == 4001, ws.close_code
        seen["refused"] = ws.close_code
    return seen


async def more(base, token, ws_url):
    """The rest of the protocol, for the schema's sake: errors, the inbox, presence, signals,
    locks, a call between two sockets, losing access, and the closing frame."""
    # Imported here: aiortc is slow to import and only this part needs it.
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from media_tracks import Microphone

    proto = ["outpost.v1", "access_token." + token]
    a = await connect(ws_url, subprotocols=proto)
    b = await connect(ws_url, subprotocols=proto)
    welcome = await recv(a)
    assert welcome["op"] == "welcome" and welcome["expires_at"], welcome
    assert (await recv(b))["op"] == "welcome"
    me = welcome["user"]

    # Refused frames: the schema refuses them as the server does.
    await send_refused(a, {"op": "no_such_op"})
    assert (await recv(a))["code"] == "invalid_frame"
    await send_refused(a, {"op": "ping", "ref": "x", "extra": 1})
    assert (await recv(a))["code"] == "invalid_frame"
    await send(a, {"op": "subscribe", "topic": f"room:{uuid.uuid4()}", "ref": "s404"})
    e = await recv(a)
    assert (e["op"], e["code"], e.get("ref")) == ("error", "not_found", "s404"), e
    await send(a, {"op": "subscribe", "topic": f"user:{uuid.uuid4()}"})
    assert (await recv(a))["code"] == "forbidden"
    # A re-auth: a good token answers welcome again, a bad one an error (the socket stays open).
    await send(a, {"op": "auth", "token": token})
    assert (await recv(a))["op"] == "welcome"
    await send(a, {"op": "auth", "token": "v4.public.garbage"})
    assert (await recv(a))["code"] == "unauthorized"

    # The organization's log from its start: who did what, with every kind of actor so far.
    await send(a, {"op": "subscribe", "topic": "org", "since": 0, "epoch": welcome["epoch"], "ref": "org"})
    frames = await until(a, op_is("subscribed", topic="org"))
    assert any(f["op"] == "event" for f in frames), frames

    # The inbox: subscribed with the unread count; ack answers acked; another topic is not ackable.
    inbox = f"user:{me}"
    await send(a, {"op": "subscribe", "topic": inbox, "device": "frames", "ref": "in"})
    sub = (await until(a, op_is("subscribed", topic=inbox)))[-1]
    assert "unread" in sub, sub
    await send(a, {"op": "ack", "topic": inbox, "seq": sub["seq"], "device": "frames", "ref": "a1"})
    acked = await recv(a)
    assert (acked["op"], acked["unread"], acked["ref"]) == ("acked", 0, "a1"), acked
    await send(a, {"op": "ack", "topic": "org", "seq": 1})
    assert (await recv(a))["code"] == "not_ackable"

    # A room: presence, signals, locks.
    room = rest(base, token, "POST", "/v1/rooms", {"name": "Frames", "visibility": "private"}, want=(201,))["id"]
    topic = f"room:{room}"
    rest(base, token, "POST", f"/v1/rooms/{room}/join", want=(200, 409))
    await send(b, {"op": "presence", "topic": topic})
    assert (await recv(b))["code"] == "not_subscribed"
    await send(a, {"op": "subscribe", "topic": topic, "ref": "r"})
    await until(a, op_is("subscribed", topic=topic))
    await send(a, {"op": "presence", "topic": topic, "state": {"position": [1.5, 0, -3.2]}, "device": "vr"})
    await until(a, op_is("presence", change="join"))
    await send(b, {"op": "subscribe", "topic": topic})
    await until(b, op_is("presence", change="here"))
    await send(b, {"op": "presence", "topic": topic, "status": "busy", "device": "desk"})
    await until(a, op_is("presence", change="join", device="desk"))
    await send(a, {"op": "presence", "topic": topic, "status": "away", "device": "vr"})
    await until(b, op_is("presence", change="update"))
    await send(a, {"op": "signal", "topic": topic, "kind": "typing", "data": {"typing": True}})
    await send(a, {"op": "signal", "topic": topic, "kind": "custom:laser", "data": [1, 2]})
    await until(b, op_is("signal", kind="custom:laser"))
    await send(a, {"op": "lock", "topic": topic, "name": "slide-3", "lease_ms": 30000, "ref": "l1"})
    locked = (await until(a, op_is("locked")))[-1]
    assert locked["ref"] == "l1", locked
    await until(b, lambda f: f["op"] == "lock_state" and f["holder"] == me)
    await send(b, {"op": "lock", "topic": topic, "name": "slide-3", "lease_ms": 1000, "ref": "l2"})
    assert (await until(b, op_is("error")))[-1]["code"] == "lock_held"
    await send(a, {"op": "unlock", "topic": topic, "name": "slide-3", "token": locked["token"], "ref": "l3"})
    await until(b, lambda f: f["op"] == "lock_state" and f["holder"] is None)

    # A call: b only receives; a publishes a microphone, so b is offered a's track.
    pa, pb = RTCPeerConnection(), RTCPeerConnection()
    pb.addTransceiver("audio", direction="recvonly")
    await pb.setLocalDescription(await pb.createOffer())
    await send(b, {"op": "call_join", "room": room, "sdp": pb.localDescription.sdp, "ref": "jb"})
    joined_b = (await until(b, op_is("call_joined")))[-1]
    await pb.setRemoteDescription(RTCSessionDescription(sdp=joined_b["sdp"], type="answer"))
    cb = joined_b["connection"]
    mic = Microphone()
    pa.addTransceiver(mic, direction="sendonly")
    await pa.setLocalDescription(await pa.createOffer())
    await send(a, {"op": "call_join", "room": room, "sdp": pa.localDescription.sdp, "ref": "ja"})
    joined_a = (await until(a, op_is("call_joined")))[-1]
    assert joined_a["ref"] == "ja", joined_a
    await pa.setRemoteDescription(RTCSessionDescription(sdp=joined_a["sdp"], type="answer"))
    ca = joined_a["connection"]
    await send(a, {"op": "call_candidate", "connection": ca, "candidate": "", "sdpMid": "0", "sdpMLineIndex": 0})
    offer = (await until(b, op_is("call_offer"), timeout=15))[-1]
    await pb.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
    await pb.setLocalDescription(await pb.createAnswer())
    await send(b, {"op": "call_answer", "connection": cb, "sdp": pb.localDescription.sdp})
    # a labels its track and places itself; everyone in the room sees the state.
    track = mic.id
    await send(a, {
        "op": "call_update", "connection": ca, "tracks": [{"track": track, "source": "mic", "muted": False}],
        "spatial": {"position": [2.0, 0.0, -1.5]}, "video_quality": "medium",
    })
    await until(b, lambda f: f["op"] == "call_state" and any(p["connection"] == ca and p["spatial"] for p in f["participants"]))
    # a renegotiates (its own offer): the server answers.
    await pa.setLocalDescription(await pa.createOffer())
    await send(a, {"op": "call_offer", "connection": ca, "sdp": pa.localDescription.sdp})
    answer = (await until(a, op_is("call_answer"), timeout=15))[-1]
    await pa.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    # A moderator (the room's owner: ourselves) mutes a's microphone: a is told.
    rest(base, token, "POST", f"/v1/rooms/{room}/call/mute", {"user_id": me, "source": "mic", "muted": True})
    muted = (await until(a, op_is("call_muted"), timeout=15))[-1]
    assert muted["connection"] == ca and muted["muted"] is True, muted
    await send(b, {"op": "call_leave", "connection": cb, "ref": "lb"})
    ended = (await until(b, op_is("call_ended", connection=cb)))[-1]
    assert ended["reason"] == "left", ended

    # b leaves the room topic; a sees its presence go.
    await send(b, {"op": "unsubscribe", "topic": topic, "ref": "u1"})
    gone = (await until(b, op_is("unsubscribed")))[-1]
    assert (gone["reason"], gone["ref"]) == ("requested", "u1"), gone
    await until(a, op_is("presence", change="leave"))

    # The room is deleted while a follows it (and is in its call): a loses access.
    rest(base, token, "DELETE", f"/v1/rooms/{room}")
    lost = await until(a, op_is("unsubscribed", topic=topic), timeout=15)
    assert lost[-1]["reason"] == "access_lost", lost
    await drain(a, 1.0)
    await pa.close()
    await pb.close()

    # A binary frame is refused: closing (with where to resume), then close 4002.
    await b.send(b"\x00")
    frames = await drain(b, 5)
    assert [f["op"] for f in frames][-1:] == ["closing"], frames
    assert frames[-1]["code"] == 4002 and b.close_code == 4002, (frames, b.close_code)
    # Logging out ends the session: a is closed with 4003 at its next re-check.
    rest(base, token, "POST", "/v1/auth/logout")
    frames = await drain(a, 15)
    assert frames and frames[-1]["op"] == "closing" and frames[-1]["code"] == 4003, frames
    await a.close()
    await b.close()


# Server frames the run must have seen and validated (the call's others when the relay sends them).
MUST_SEE = {
    "welcome", "subscribed", "unsubscribed", "event", "reset", "error", "pong", "presence", "signal",
    "lock_state", "locked", "acked", "closing", "call_joined", "call_offer", "call_answer", "call_state",
    "call_muted", "call_ended",
}


async def main(base, token, channel):
    ws_url = base.replace("http://", "ws://") + "/v1/realtime"
    seen = await basic(base, token, channel, ws_url)
    await more(base, token, ws_url)
    missing = MUST_SEE - set(S.seen["server"])
    assert not missing, f"server frames never seen: {sorted(missing)}"
    report = {side: dict(sorted(c.items())) for side, c in S.seen.items()}
    print("validated frames: " + json.dumps(report), file=sys.stderr)
    print(json.dumps(seen))


if __name__ == "__main__":
    S = Schema(SCHEMA_FILE)
    try:
        asyncio.run(main(*sys.argv[1:4]))
    except FrameInvalid as e:
        print(e, file=sys.stderr)
        sys.exit(3)

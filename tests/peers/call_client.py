"""Two call participants with aiortc, signaled over the realtime socket as openapi/realtime.md
describes: `call_join` with an offer, then `call_offer`/`call_answer` as tracks come and go,
`call_update` for labels and mute flags, `call_leave`.

Usage: call_client.py BASE ROOM TOKEN_A TOKEN_B
       call_client.py solo BASE ROOM TOKEN

Solo: one participant publishes a camera and a microphone and prints a line once it is in the
call. On stdin, `quality low|medium|high` asks for a video quality (`call_update`), `video
off|low|medium|high` sets it for every video track of the others (`off` pauses them),
`bandwidth BPS` makes its receive-side bandwidth estimate (REMB, every 200 ms) say BPS, as a
receiver on a slow link would, `size` reports what it has received so far; any other line
reports what it received from the others (another client of the call, such as a browser) and
leaves.

A publishes a camera and a microphone; B publishes a microphone. Commands on stdin, one per
line, each answered with one JSON line of what both have seen:
  report         counts and the latest call_state each socket has
  mute-mic       A stops sending sound and says so in call_update
  a-leave        A leaves the call (call_leave)
  b-close        B closes its socket
  quit
"""

import asyncio
import json
import logging
import os
import sys
import time

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci
from websockets.asyncio.client import connect

from media_tracks import Camera, Microphone, loud


class Participant:
    def __init__(self, name, base, room, token):
        self.name, self.base, self.room, self.token = name, base, room, token
        self.pc = RTCPeerConnection()
        self.connection = None
        self.state = None
        self.muted_notes = []
        self.ended = None
        self.errors = []
        self.offers = 0
        self.video_frames = 0
        self.video_size = None
        self.audio_frames = 0
        self.audio_frames_any = 0
        self.audio_level_max = 0
        self.tasks = []
        self.joined = asyncio.Event()
        self.pc.on("track", lambda track: self.tasks.append(asyncio.ensure_future(self.consume(track))))

    async def consume(self, track):
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            if track.kind == "video":
                self.video_frames += 1
                self.video_size = [frame.width, frame.height]
                continue
            level = loud(frame)
            self.audio_frames_any += 1
            self.audio_level_max = max(self.audio_level_max, level)
            if level > 1000:
                self.audio_frames += 1

    async def open(self):
        url = self.base.replace("http://", "ws://") + "/v1/realtime"
        self.ws = await connect(url, subprotocols=["outpost.v1", "access_token." + self.token])
        welcome = json.loads(await self.ws.recv())
        assert welcome["op"] == "welcome", welcome
        await self.send({"op": "subscribe", "topic": f"room:{self.room}"})
        self.reader = asyncio.ensure_future(self.read())

    async def send(self, frame):
        await self.ws.send(json.dumps(frame))

    async def join(self):
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self.send({"op": "call_join", "room": self.room, "sdp": self.pc.localDescription.sdp, "ref": "j"})
        await asyncio.wait_for(self.joined.wait(), 10)

    async def read(self):
        try:
            async for text in self.ws:
                f = json.loads(text)
                op = f["op"]
                if op == "call_joined":
                    self.connection = f["connection"]
                    await self.pc.setRemoteDescription(RTCSessionDescription(sdp=f["sdp"], type="answer"))
                    self.joined.set()
                elif op == "call_offer":
                    self.offers += 1
                    await self.pc.setRemoteDescription(RTCSessionDescription(sdp=f["sdp"], type="offer"))
                    await self.pc.setLocalDescription(await self.pc.createAnswer())
                    await self.send(
                        {"op": "call_answer", "connection": f["connection"], "sdp": self.pc.localDescription.sdp}
                    )
                    logging.debug("OFFER:\n%s\nANSWER:\n%s", f["sdp"], self.pc.localDescription.sdp)
                elif op == "call_state":
                    self.state = f
                elif op == "call_muted":
                    self.muted_notes.append(f)
                elif op == "call_ended":
                    self.ended = f
                elif op == "error":
                    self.errors.append(f)
        except Exception:
            pass

    def report(self):
        return {
            "connection": self.connection,
            "video_frames": self.video_frames,
            "video_size": self.video_size,
            "audio_frames": self.audio_frames,
            "audio_frames_any": self.audio_frames_any,
            "audio_level_max": self.audio_level_max,
            "state": self.state,
            "muted_notes": self.muted_notes,
            "ended": self.ended,
            "errors": self.errors,
            "offers": self.offers,
            "receiving": [t.receiver.track.kind for t in self.pc.getTransceivers() if t.currentDirection in ("recvonly", "sendrecv")],
            "pc": self.pc.connectionState,
        }


if os.environ.get("CALL_CLIENT_DEBUG"):
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)


async def report_bandwidth(pc, cap):
    """Sends a REMB of cap[0] bits/s for every video track received, every 200 ms."""
    while True:
        await asyncio.sleep(0.2)
        if not cap[0]:
            continue
        for t in pc.getTransceivers():
            r = t.receiver
            ssrc = getattr(r, "_RTCRtpReceiver__rtcp_ssrc", None)
            sources = [s.source for s in r.getSynchronizationSources()]
            if t.kind != "video" or ssrc is None or not sources:
                continue
            packet = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=ssrc, media_ssrc=0, fci=pack_remb_fci(cap[0], sources))
            try:
                await r._send_rtcp(packet)
                cap[1] += 1
            except Exception:
                pass


async def solo():
    base, room, token = sys.argv[2:5]
    a = Participant("a", base, room, token)
    cap = [0, 0]
    a.tasks.append(asyncio.ensure_future(report_bandwidth(a.pc, cap)))
    a.pc.addTransceiver(Microphone(), direction="sendonly")
    a.pc.addTransceiver(Camera(), direction="sendonly")
    await a.open()
    await a.join()
    print(json.dumps({"joined": a.connection}), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line.startswith("quality "):
            quality = line.split()[1]
            await a.send({"op": "call_update", "connection": a.connection, "video_quality": quality})
            print(json.dumps({"quality": quality}), flush=True)
        elif line.startswith("video "):
            # Every video track of the others, by the relay's ids in the call state.
            quality = line.split()[1]
            ids = [
                t["id"]
                for p in (a.state or {}).get("participants", [])
                if p["connection"] != a.connection
                for t in p["tracks"]
                if t["kind"] == "video"
            ]
            await a.send({"op": "call_update", "connection": a.connection, "video": {i: quality for i in ids}})
            print(json.dumps({"video": quality, "tracks": ids}), flush=True)
        elif line.startswith("bandwidth "):
            cap[0] = int(line.split()[1])
            print(json.dumps({"bandwidth": cap[0]}), flush=True)
        elif line == "size":
            print(json.dumps({**a.report(), "remb_sent": cap[1]}), flush=True)
        else:
            break
    print(json.dumps(a.report()), flush=True)
    await a.send({"op": "call_leave", "connection": a.connection})
    await a.pc.close()
    await a.ws.close()


async def main():
    if sys.argv[1] == "solo":
        return await solo()
    base, room, token_a, token_b = sys.argv[1:5]
    a = Participant("a", base, room, token_a)
    b = Participant("b", base, room, token_b)
    mic_a, cam_a, mic_b = Microphone(), Camera(), Microphone()
    a.pc.addTransceiver(mic_a, direction="sendonly")
    a.pc.addTransceiver(cam_a, direction="sendonly")
    b.pc.addTransceiver(mic_b, direction="sendonly")
    for p in (a, b):
        await p.open()
    await a.join()
    await a.send(
        {
            "op": "call_update",
            "connection": a.connection,
            "tracks": [{"track": mic_a.id, "source": "mic"}, {"track": cam_a.id, "source": "camera"}],
            "spatial": {"position": [1, 0, 2], "orientation": [0, 0, 0, 1]},
        }
    )
    await b.join()
    await b.send({"op": "call_update", "connection": b.connection, "tracks": [{"track": mic_b.id, "source": "mic"}]})

    def report(**extra):
        out = {"a": a.report(), "b": b.report(), "a_tracks": {"mic": mic_a.id, "camera": cam_a.id}}
        out.update(extra)
        print(json.dumps(out), flush=True)

    # Until each hears the other.
    deadline = time.time() + 20
    while time.time() < deadline and (b.video_frames < 20 or b.audio_frames < 20 or a.audio_frames < 20):
        await asyncio.sleep(0.1)
    report()

    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "report":
            report()
        elif line == "mute-mic":
            mic_a.muted.set()
            await a.send({"op": "call_update", "connection": a.connection, "tracks": [{"track": mic_a.id, "muted": True}]})
            await asyncio.sleep(1.5)
            before = b.audio_frames
            await asyncio.sleep(2)
            report(b_audio_while_muted=b.audio_frames - before)
        elif line == "video-stalls":
            await asyncio.sleep(1.5)
            before = b.video_frames
            await asyncio.sleep(2)
            report(b_video_while_stopped=b.video_frames - before)
        elif line == "a-leave":
            await a.send({"op": "call_leave", "connection": a.connection, "ref": "bye"})
            await asyncio.sleep(1)
            report()
        elif line == "b-close":
            await b.ws.close()
            await b.pc.close()
            await asyncio.sleep(0.5)
            report()
        else:
            for p in (a, b):
                await p.pc.close()
                await p.ws.close()
            return


asyncio.run(main())

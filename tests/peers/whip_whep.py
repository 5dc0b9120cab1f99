"""WHIP publish and WHEP play with aiortc, an independent WebRTC stack.

Usage: whip_whep.py BASE ROOM PUBLISHER_TOKEN PLAYER_TOKEN [relay] [h264]

With `relay`, the publisher takes TURN credentials from the API and may use relay candidates
only: its media reaches the relay through the built-in TURN server.
With `h264`, the publisher sends its camera as H.264 instead of VP8.

The publisher sends a synthetic camera (VP8) and microphone (Opus) through WHIP; the player
receives through WHEP and decodes. Prints one JSON object with what the player decoded and
the connection URLs, then waits for a line on stdin: "mute" stops the publisher's audio,
"count" prints the player's counts again, "stop" hangs both up (DELETE) and exits.
"""

import asyncio
import json
import sys
import time
import urllib.request

import numpy
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from media_tracks import Camera, Microphone


def http(method, url, token, body=None, content_type=None):
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


async def negotiate(pc, url, token):
    await pc.setLocalDescription(await pc.createOffer())
    status, headers, answer = await asyncio.to_thread(
        http, "POST", url, token, pc.localDescription.sdp.encode(), "application/sdp"
    )
    if status != 201:
        raise SystemExit(f"{url}: {status} {answer}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return headers.get("Location"), headers


async def main():
    base, room, pub_token, play_token = sys.argv[1:5]
    counts = {"video_frames": 0, "audio_frames": 0, "video_size": None, "audio_level_max": 0}
    last_audio = {"at": None}

    relay = "relay" in sys.argv[5:]
    if relay:
        status, _, body = await asyncio.to_thread(http, "POST", f"{base}/v1/media/turn-credentials", pub_token)
        assert status == 200, body
        creds = json.loads(body)
        udp = [u for u in creds["urls"] if u.endswith("transport=udp")]
        config = RTCConfiguration(
            iceServers=[RTCIceServer(urls=udp, username=creds["username"], credential=creds["credential"])],
            iceTransportPolicy=RTCIceTransportPolicy.RELAY,
        )
        publisher = RTCPeerConnection(configuration=config)
    else:
        publisher = RTCPeerConnection()
    mic, cam = Microphone(), Camera()
    publisher.addTransceiver(mic, direction="sendonly")
    cam_transceiver = publisher.addTransceiver(cam, direction="sendonly")
    if "h264" in sys.argv[5:]:
        codecs = RTCRtpSender.getCapabilities("video").codecs
        cam_transceiver.setCodecPreferences([c for c in codecs if c.mimeType == "video/H264"])
    pub_location, pub_headers = await negotiate(publisher, f"{base}/v1/rooms/{room}/whip", pub_token)

    player = RTCPeerConnection()
    player.addTransceiver("audio", direction="recvonly")
    player.addTransceiver("video", direction="recvonly")

    async def consume(track):
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            if track.kind == "video":
                counts["video_frames"] += 1
                counts["video_size"] = [frame.width, frame.height]
            else:
                # aiortc's decoder hands out silence when no packets come; count only real sound.
                level = int(numpy.abs(frame.to_ndarray()).max())
                counts["audio_level_max"] = max(counts["audio_level_max"], level)
                if level > 1000:
                    counts["audio_frames"] += 1
                    last_audio["at"] = time.time()

    tasks = []
    player.on("track", lambda track: tasks.append(asyncio.ensure_future(consume(track))))
    play_location, _ = await negotiate(player, f"{base}/v1/rooms/{room}/whep", play_token)

    deadline = time.time() + 20
    while time.time() < deadline and (counts["video_frames"] < 20 or counts["audio_frames"] < 20):
        await asyncio.sleep(0.1)

    def report(**extra):
        out = dict(counts)
        out.update(
            publisher=pub_location,
            player=play_location,
            ice_links=pub_headers.get("Link"),
            publisher_state=publisher.connectionState,
            publisher_candidates=sorted(
                {
                    c.type
                    for t in publisher.getTransceivers()[:1]
                    for c in t.sender.transport.transport.iceGatherer.getLocalCandidates()
                }
            ),
            player_state=player.connectionState,
            **extra,
        )
        print(json.dumps(out), flush=True)

    report()
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "mute":
            mic.muted.set()
            await asyncio.sleep(1.5)
            before = counts["audio_frames"]
            await asyncio.sleep(2)
            report(audio_frames_while_muted=counts["audio_frames"] - before)
        elif line == "count":
            report()
        elif line == "stop" or not line:
            for location, token in ((play_location, play_token), (pub_location, pub_token)):
                await asyncio.to_thread(http, "DELETE", base + location, token)
            await player.close()
            await publisher.close()
            for t in tasks:
                t.cancel()
            report(stopped=True)
            return


asyncio.run(main())

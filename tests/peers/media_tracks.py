"""Synthetic media for the WebRTC peer tests: a moving test pattern and a tone.

Importing this also lets aioice use 127.0.0.1: it skips loopback addresses when gathering,
and the relay and the clients all live on 127.0.0.1 in the tests.
"""

import asyncio
import fractions
import time

import aioice.ice
import numpy
from aiortc import MediaStreamTrack
from av import AudioFrame, VideoFrame

aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


class Camera(MediaStreamTrack):
    """A moving test pattern, 320x240 at 30 frames/s."""

    kind = "video"

    def __init__(self):
        super().__init__()
        self.n = 0
        self.start = None

    async def recv(self):
        if self.start is None:
            self.start = time.time()
        self.n += 1
        wait = self.start + self.n / 30 - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        img = numpy.zeros((240, 320, 3), numpy.uint8)
        img[:, (self.n * 4) % 320 :, 1] = 200
        frame = VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts = self.n * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        return frame


class Microphone(MediaStreamTrack):
    """A 440 Hz tone in 20 ms frames; `muted` sends nothing at all."""

    kind = "audio"

    def __init__(self):
        super().__init__()
        self.n = 0
        self.start = None
        self.muted = asyncio.Event()

    async def recv(self):
        if self.start is None:
            self.start = time.time()
        while self.muted.is_set():
            await asyncio.sleep(0.02)
            self.n += 1
            self.start = time.time() - self.n * 0.02
        self.n += 1
        wait = self.start + self.n * 0.02 - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        t = (numpy.arange(960) + self.n * 960) / 48000
        samples = (numpy.sin(2 * numpy.pi * 440 * t) * 8000).astype(numpy.int16)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = self.n * 960
        frame.time_base = fractions.Fraction(1, 48000)
        return frame


def loud(frame):
    """The peak sample of an audio frame; aiortc hands out silence when no packets come."""
    return int(numpy.abs(frame.to_ndarray()).max())

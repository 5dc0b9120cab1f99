// Headless Chromium in a room's call, with its fake camera and microphone, signaled over the
// realtime socket as openapi/realtime.md describes. Prints one JSON line: what it sent and
// what it received and decoded from the others (from getStats).
//
// Usage: node chromium_call.mjs BASE ROOM TOKEN SECONDS [simulcast]
//
// With `simulcast` the camera goes out in three layers (rids q, h, f: a quarter, half and the
// whole 1280x720 picture).

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [base, room, token, seconds, mode] = process.argv.slice(2);
// Never hang a test run: give up well after the call should have finished.
setTimeout(() => {
  process.stderr.write('chromium_call: timed out\n');
  process.exit(2);
}, (Number(seconds) + 40) * 1000).unref();
const userDataDir = mkdtempSync(join(tmpdir(), 'outpost-chromium-'));
// The profile goes with the process, however it ends. Chromium's helpers may still be writing
// into it for a moment after the browser closes, so removing it retries on ENOTEMPTY.
const removeProfile = () => {
  try {
    rmSync(userDataDir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 });
  } catch (e) {
    process.stderr.write(`chromium_call: could not remove ${userDataDir}: ${e.message}\n`);
  }
};
process.on('exit', removeProfile);
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
    '--use-fake-device-for-media-stream',
    '--use-fake-ui-for-media-stream',
    '--allow-loopback-in-peer-connection',
    '--autoplay-policy=no-user-gesture-required',
    // The test page and the server are both on 127.0.0.1; no local-network prompt to answer.
    '--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests',
  ],
});
// Ended early (SIGTERM, as the tests do when they are done with the call): the browser closes,
// then the script exits, removing the profile.
process.once('SIGTERM', () => {
  context.close().finally(() => process.exit(143));
});
const page = context.pages()[0] ?? (await context.newPage());
page.on('console', (m) => process.stderr.write(`[chromium] ${m.text()}\n`));
// A blank page at an address on 127.0.0.1 (a secure context, so media devices exist), served
// by the browser itself: the server's own pages forbid scripts from connecting anywhere.
const pageUrl = `${base}/__call_page__`;
await page.route(pageUrl, (route) =>
  route.fulfill({ status: 200, contentType: 'text/html', body: '<!doctype html><title>call</title>' }),
);
await page.goto(pageUrl);

const result = await page.evaluate(
  async ({ wsUrl, room, token, seconds, simulcast }) => {
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: true,
      video: simulcast ? { width: 1280, height: 720 } : { width: 320, height: 240 },
    });
    const pc = new RTCPeerConnection();
    // Received audio is decoded as it is played out: play every remote stream.
    pc.ontrack = (e) => {
      const el = document.createElement(e.track.kind);
      el.autoplay = true;
      el.muted = false;
      el.srcObject = e.streams[0] || new MediaStream([e.track]);
      document.body.appendChild(el);
      el.play().catch((err) => console.log('play', String(err)));
    };
    for (const t of stream.getTracks()) {
      const init = { direction: 'sendonly', streams: [stream] };
      if (simulcast && t.kind === 'video') {
        init.sendEncodings = [
          { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 100_000 },
          { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 300_000 },
          { rid: 'f', maxBitrate: 900_000 },
        ];
      }
      pc.addTransceiver(t, init);
    }
    const errors = [];
    let connection = null;
    let offers = 0;
    let state = null;
    // Set once this side sends `call_leave`: a renegotiation the relay sent before it saw the
    // leave is not answered (the connection is gone by the time an answer would arrive).
    let leaving = false;

    const ws = new WebSocket(wsUrl, ['outpost.v1', 'access_token.' + token]);
    const send = (f) => ws.send(JSON.stringify(f));
    // Trickle ICE: the offer goes at once, candidates follow as they are gathered (held until
    // the connection has an id).
    const pending = [];
    let trickled = 0;
    const trickle = (c) => {
      send({ op: 'call_candidate', connection, ...c });
      trickled += 1;
    };
    pc.onicecandidate = (e) => {
      const c = e.candidate
        ? { candidate: e.candidate.candidate, sdpMid: e.candidate.sdpMid, sdpMLineIndex: e.candidate.sdpMLineIndex }
        : { candidate: '' };
      if (connection) trickle(c);
      else pending.push(c);
    };
    const joined = new Promise((resolve, reject) => {
      ws.onmessage = async (m) => {
        const f = JSON.parse(m.data);
        try {
          if (f.op !== 'call_state') console.log('frame', f.op, f.op === 'call_ended' || f.op === 'error' ? JSON.stringify(f) : '');
          if (f.op === 'welcome') {
            send({ op: 'subscribe', topic: `room:${room}` });
            await pc.setLocalDescription();
            console.log('offer ready', pc.iceGatheringState);
            send({ op: 'call_join', room, sdp: pc.localDescription.sdp, ref: 'join' });
          } else if (f.op === 'call_joined') {
            connection = f.connection;
            for (const c of pending.splice(0)) trickle(c);
            await pc.setRemoteDescription({ type: 'answer', sdp: f.sdp });
            const [mic] = stream.getAudioTracks();
            const [cam] = stream.getVideoTracks();
            send({
              op: 'call_update',
              connection,
              tracks: [
                { track: mic.id, source: 'mic' },
                { track: cam.id, source: 'camera' },
              ],
            });
            resolve();
          } else if (f.op === 'call_offer') {
            if (leaving) return;
            offers += 1;
            await pc.setRemoteDescription({ type: 'offer', sdp: f.sdp });
            await pc.setLocalDescription();
            send({ op: 'call_answer', connection: f.connection, sdp: pc.localDescription.sdp });
          } else if (f.op === 'call_state') {
            state = f;
          } else if (f.op === 'error') {
            errors.push(f);
            if (f.ref === 'join') reject(new Error(JSON.stringify(f)));
          }
        } catch (e) {
          errors.push(String(e));
        }
      };
    });
    await joined;

    // The narrowest each video layer was sent at over the call (a browser short of CPU scales
    // its layers down for a while).
    const sentMin = {};
    // Until something has been decoded from someone else, then for the time asked.
    const stats = async () => {
      const out = { video_frames_decoded: 0, video_width: 0, audio_samples: 0, audio_energy: 0, packets_sent: 0 };
      (await pc.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video') {
          out.video_frames_decoded += s.framesDecoded || 0;
          out.video_width = Math.max(out.video_width, s.frameWidth || 0);
        }
        if (s.type === 'inbound-rtp' && s.kind === 'audio') {
          out.audio_samples += s.totalSamplesReceived || 0;
          out.audio_energy += s.totalAudioEnergy || 0;
          out.audio_packets = (out.audio_packets || 0) + (s.packetsReceived || 0);
        }
        if (s.type === 'inbound-rtp') (out.inbound = out.inbound || []).push([s.kind, s.mid, s.ssrc, s.packetsReceived, s.codecId]);
        if (s.type === 'outbound-rtp') out.packets_sent += s.packetsSent || 0;
        if (s.type === 'outbound-rtp' && s.kind === 'video' && s.frameWidth) {
          const rid = s.rid || 'single';
          sentMin[rid] = Math.min(sentMin[rid] ?? Infinity, s.frameWidth);
        }
      });
      return out;
    };
    // The most each count reached: a sender that leaves first takes its receivers' stats with
    // it when the relay renegotiates its tracks away.
    const until = Date.now() + seconds * 1000;
    let s = await stats();
    const keep = (now) => {
      for (const [k, v] of Object.entries(now)) {
        if (typeof v !== 'number' || !(v < s[k])) s[k] = v;
      }
    };
    let last = s;
    while (Date.now() < until) {
      await sleep(250);
      last = await stats();
      keep(last);
    }
    // What it was getting at the end (a simulcast receiver's layer).
    s.video_width_last = last.video_width;
    const ice = pc.connectionState;
    const stateInCall = state;
    s.sent_widths_min = sentMin;
    const errorsInCall = errors.slice();
    leaving = true;
    send({ op: 'call_leave', connection, ref: 'bye' });
    await sleep(200);
    pc.close();
    ws.close();
    return { ...s, connection, offers, errors: errorsInCall, trickled, state: stateInCall, pc: ice };
  },
  {
    wsUrl: base.replace('http://', 'ws://') + '/v1/realtime',
    room,
    token,
    seconds: Number(seconds),
    simulcast: mode === 'simulcast',
  },
);
console.log(JSON.stringify(result));
await context.close();
removeProfile();

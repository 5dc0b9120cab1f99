// Yjs sync load generator for benches/yjs.sh: D documents × E editors against Outpost
// (/v1/yjs, y-websocket protocol), the y-websocket 2 reference server or Hocuspocus.
// Every editor, R times a second, makes one transaction: it sets its own key of Y.Map "map" to
// {n, t} and appends a character to Y.Text "text". Every editor observes the map and, for each
// change made by another editor, records the latency now - t. Editors are spread over worker
// processes (--procs) so the generator does not saturate one core; all clocks are the wall clock.
//
// Usage: node yjs_load.mjs --target outpost|hocuspocus|yws --url BASE --docs D --editors E
//          --rate R --seconds S [--token T] [--doc-ids id1,id2,...] [--pid SERVER_PID]
//          [--warmup 2] [--procs 2]
// Prints: RESULT target=... docs=D editors=E rate=R applied=... applied_per_s=... relayed=...
//         relayed_per_s=... expected=... p50_ms=... p99_ms=... cpu_s=... rss_kb=... hwm_kb=...
//         gen_cpu_s=... gen_core_max=...
// applied counts the updates made in the measured window; relayed counts how many of them
// reached the other editors of their document (expected: applied × (E - 1)); cpu_s, rss_kb and
// hwm_kb are the server's (--pid) CPU seconds in the window, resident set at its end and peak.
import { execFileSync, fork } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import WebSocket from "ws";
import * as Y from "yjs";
import { WebsocketProvider } from "y-websocket";
import { HocuspocusProvider } from "@hocuspocus/provider";

const CONNECT_BATCH = 50;
const CONNECT_TIMEOUT_MS = 120_000;
const QUIET_MS = 1000;
const DRAIN_MAX_MS = 15_000;

// Wall-clock milliseconds with sub-millisecond resolution, comparable across processes.
const wallMs = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

// ------------------------------------------------------------------ parent ----

function options() {
  const { values } = parseArgs({
    options: {
      target: { type: "string" },
      url: { type: "string" },
      docs: { type: "string", default: "1" },
      editors: { type: "string", default: "2" },
      rate: { type: "string", default: "10" },
      seconds: { type: "string", default: "10" },
      warmup: { type: "string", default: "2" },
      token: { type: "string" },
      "doc-ids": { type: "string" },
      pid: { type: "string" },
      procs: { type: "string" },
    },
  });
  if (!["outpost", "hocuspocus", "yws"].includes(values.target)) throw new Error("--target outpost|hocuspocus|yws");
  if (!values.url) throw new Error("missing --url");
  const o = {
    target: values.target,
    url: values.url,
    token: values.token,
    pid: values.pid,
    docs: Number(values.docs),
    editors: Number(values.editors),
    rate: Number(values.rate),
    seconds: Number(values.seconds),
    warmup: Number(values.warmup),
  };
  o.procs = Number(values.procs || 2);
  o.docIds = docIds(values["doc-ids"], o.docs);
  return o;
}

// The given ids, or fresh names so that a run never writes into an earlier run's documents.
function docIds(given, count) {
  const run = Date.now().toString(36);
  const ids = given ? given.split(",").filter(Boolean) : Array.from({ length: count }, (_, i) => `bench-${run}-${i}`);
  if (ids.length < count) throw new Error(`--doc-ids has ${ids.length} ids, --docs asks for ${count}`);
  return ids.slice(0, count);
}

// Editor slots (document, key) dealt round-robin to the worker processes.
function deal(o) {
  const shares = Array.from({ length: o.procs }, () => []);
  let i = 0;
  for (const doc of o.docIds) {
    for (let e = 0; e < o.editors; e++) shares[i++ % o.procs].push({ doc, key: `e${e}` });
  }
  return shares.filter((s) => s.length > 0);
}

const CLK_TCK = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim());

function procCpuS(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

function procStatusKb(pid, field) {
  const line = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith(`${field}:`));
  return line ? Number(line.split(/\s+/)[1]) : 0;
}

// Sends a message to a worker and resolves with its reply; an error reply or an exit rejects.
function ask(w, message) {
  return new Promise((resolve, reject) => {
    const onExit = (code) => reject(new Error(`a worker exited with status ${code}`));
    w.once("exit", onExit);
    w.once("message", (m) => {
      w.off("exit", onExit);
      if (m.error) reject(new Error(m.error));
      else resolve(m);
    });
    w.send(message);
  });
}

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

// Measures the server around the window [t0, t1].
async function measureServer(pid, t0, t1) {
  if (!pid) return { cpu_s: "-", rss_kb: "-", hwm_kb: "-" };
  await sleep(t0 - wallMs());
  const cpu0 = procCpuS(pid);
  await sleep(t1 - wallMs());
  const cpu1 = procCpuS(pid);
  return { cpu_s: (cpu1 - cpu0).toFixed(2), rss_kb: procStatusKb(pid, "VmRSS"), hwm_kb: procStatusKb(pid, "VmHWM") };
}

function report(o, reports, server) {
  const applied = reports.reduce((s, r) => s + r.applied, 0);
  const relayed = reports.reduce((s, r) => s + r.relayed, 0);
  const latencies = Float64Array.from(reports.flatMap((r) => r.latencies)).sort();
  const fields = {
    target: o.target,
    docs: o.docs,
    editors: o.editors,
    rate: o.rate,
    seconds: o.seconds,
    procs: reports.length,
    applied,
    applied_per_s: (applied / o.seconds).toFixed(1),
    relayed,
    relayed_per_s: (relayed / o.seconds).toFixed(1),
    expected: applied * (o.editors - 1),
    p50_ms: percentile(latencies, 50).toFixed(2),
    p99_ms: percentile(latencies, 99).toFixed(2),
    ...server,
    gen_cpu_s: reports.reduce((s, r) => s + r.cpuS, 0).toFixed(2),
    gen_core_max: Math.max(...reports.map((r) => r.cpuS / o.seconds)).toFixed(2),
  };
  console.log(`RESULT ${Object.entries(fields).map(([k, v]) => `${k}=${v}`).join(" ")}`);
}

async function parent() {
  const o = options();
  const shares = deal(o);
  const script = fileURLToPath(import.meta.url);
  const workers = shares.map(() => fork(script, ["--worker"]));
  try {
    await Promise.all(workers.map((w, i) => ask(w, { config: { ...o, slots: shares[i] } })));
    const t0 = wallMs() + o.warmup * 1000;
    const t1 = t0 + o.seconds * 1000;
    const [reports, server] = await Promise.all([
      Promise.all(workers.map((w) => ask(w, { start: { t0, t1 } }))),
      measureServer(o.pid, t0, t1),
    ]);
    report(o, reports, server);
  } catch (e) {
    workers.forEach((w) => w.kill());
    throw e;
  }
  process.exit(0);
}

// ------------------------------------------------------------------ worker ----

function provide(o, docId, doc) {
  if (o.target === "hocuspocus") {
    return new HocuspocusProvider({ url: o.url, name: docId, document: doc, WebSocketPolyfill: WebSocket });
  }
  return new WebsocketProvider(o.url, docId, doc, {
    params: o.token ? { access_token: o.token } : {},
    WebSocketPolyfill: WebSocket,
    disableBc: true,
  });
}

// One editor: its document replica, provider, own map key, and what it has seen of the others.
function editor(o, slot, stats) {
  const doc = new Y.Doc();
  const ed = { key: slot.key, doc, provider: provide(o, slot.doc, doc), n: 0, w0: 0, seen: new Map() };
  doc.getMap("map").observe((event) => {
    if (!event.transaction.local) for (const key of event.keysChanged) receive(ed, key, stats);
  });
  return ed;
}

// A change by another editor: values sent in the window carry w0, the sender's first n in the
// window, so updates the server merged before relaying are counted too; latency is measured on
// the value seen.
function receive(ed, key, stats) {
  const value = ed.doc.getMap("map").get(key);
  if (!value || key === ed.key) return;
  const last = ed.seen.get(key) ?? 0;
  ed.seen.set(key, Math.max(last, value.n));
  if (!value.w0 || value.n <= last) return;
  stats.relayed += value.n - Math.max(last, value.w0 - 1);
  stats.latencies.push(wallMs() - value.t);
  stats.lastReceipt = wallMs();
}

// One change; it belongs to the measured window if it was due inside it.
function tick(ed, due, window, stats) {
  const now = wallMs();
  const measured = due >= window.t0;
  ed.n += 1;
  if (measured && !ed.w0) ed.w0 = ed.n;
  ed.doc.transact(() => {
    ed.doc.getMap("map").set(ed.key, { n: ed.n, t: now, w0: ed.w0 });
    const text = ed.doc.getText("text");
    text.insert(text.length, "x");
  });
  if (measured) stats.applied += 1;
}

// Ticks on a fixed schedule (every 1/R s from a random phase, until t1): a late tick does not
// delay the following ones, so the offered rate holds while the event loop lags.
function drive(ed, rate, window, stats) {
  const period = 1000 / rate;
  let next = wallMs() + Math.random() * period;
  const step = () => {
    if (next >= window.t1) return;
    tick(ed, next, window, stats);
    next += period;
    setTimeout(step, next - wallMs());
  };
  setTimeout(step, next - wallMs());
}

async function connectAll(o, stats) {
  const deadline = wallMs() + CONNECT_TIMEOUT_MS;
  const editors = [];
  for (let i = 0; i < o.slots.length; i += CONNECT_BATCH) {
    const batch = o.slots.slice(i, i + CONNECT_BATCH).map((slot) => editor(o, slot, stats));
    editors.push(...batch);
    while (!batch.every((ed) => ed.provider.synced)) {
      if (wallMs() > deadline) throw new Error(`${o.target}: only ${editors.filter((e) => e.provider.synced).length} of ${o.slots.length} editors synced`);
      await sleep(20);
    }
  }
  return editors;
}

// After t1, waits until nothing has arrived for QUIET_MS (at most DRAIN_MAX_MS).
async function drain(window, stats) {
  await sleep(window.t1 - wallMs() + QUIET_MS);
  while (wallMs() - Math.max(stats.lastReceipt, window.t1) < QUIET_MS && wallMs() < window.t1 + DRAIN_MAX_MS) {
    await sleep(100);
  }
}

// CPU seconds this process spends inside the window.
async function ownCpuS(window) {
  await sleep(window.t0 - wallMs());
  const start = process.cpuUsage();
  await sleep(window.t1 - wallMs());
  const used = process.cpuUsage(start);
  return (used.user + used.system) / 1e6;
}

async function run(o, window, editors, stats) {
  for (const ed of editors) drive(ed, o.rate, window, stats);
  const cpuS = await ownCpuS(window);
  await drain(window, stats);
  return { applied: stats.applied, relayed: stats.relayed, latencies: stats.latencies, cpuS };
}

function worker() {
  process.setMaxListeners(0); // each y-websocket provider adds an exit listener
  const stats = { applied: 0, relayed: 0, latencies: [], lastReceipt: 0 };
  let o;
  let editors = [];
  const fail = (e) => {
    process.send({ error: e.message }, () => process.exit(1));
  };
  process.on("disconnect", () => process.exit(0));
  process.on("message", (m) => {
    if (m.config) {
      o = m.config;
      connectAll(o, stats).then((eds) => {
        editors = eds;
        process.send({ ready: true });
      }, fail);
    } else if (m.start) {
      run(o, m.start, editors, stats).then((r) => {
        editors.forEach((ed) => ed.provider.destroy());
        process.send(r, () => process.exit(0));
      }, fail);
    }
  });
}

if (process.argv.includes("--worker")) worker();
else parent().catch((e) => {
  console.error(`yjs_load: ${e.message}`);
  process.exit(1);
});

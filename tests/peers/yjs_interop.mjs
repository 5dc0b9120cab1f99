// An independent Yjs client for Outpost's document sync endpoint, speaking the standard y-websocket
// protocol through the stock y-websocket provider. Two editors write concurrently and must converge;
// a viewer reads the converged state and is refused when it writes; a late joiner catches up.
//
// Usage: node yjs_interop.mjs --url ws://127.0.0.1:PORT/v1/yjs --doc DOC_ID --editor TOKEN_A
//          --editor2 TOKEN_B --viewer TOKEN_V [--timeout-ms 15000] [--no-viewer]
// Prints one JSON line ({"ok":true,...} or {"ok":false,"error":...}); exits 1 on failure.

import { parseArgs } from "node:util";
import WebSocket from "ws";
import * as Y from "yjs";
import { WebsocketProvider } from "y-websocket";

const ROUNDS = 20;
const MAP_KEYS = 10;
const VIEWER_TEXT = "VIEWER";
const SETTLE_MS = 500;

const providers = [];
const warnings = [];

function options() {
  const { values } = parseArgs({
    options: {
      url: { type: "string" },
      doc: { type: "string" },
      editor: { type: "string" },
      editor2: { type: "string" },
      viewer: { type: "string" },
      "timeout-ms": { type: "string", default: "15000" },
      "no-viewer": { type: "boolean", default: false },
    },
  });
  const required = ["url", "doc", "editor", "editor2"];
  if (!values["no-viewer"]) required.push("viewer");
  for (const name of required) {
    if (!values[name]) throw new Error(`missing --${name}`);
  }
  return { ...values, timeoutMs: Number(values["timeout-ms"]) };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Polls `check` until it returns true; throws `what` once the deadline has passed.
async function until(check, deadline, what) {
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await sleep(20);
  }
}

function connect(opts, token, name) {
  const doc = new Y.Doc();
  const provider = new WebsocketProvider(opts.url, opts.doc, doc, {
    params: token ? { access_token: token } : {},
    WebSocketPolyfill: WebSocket,
    // clients in one process must sync through the server, not a local BroadcastChannel
    disableBc: true,
  });
  const client = { name, doc, provider, closed: null, lastEvents: [] };
  const note = (what) => (client.lastEvents = [...client.lastEvents.slice(-1), what]);
  provider.on("closed", (event) => {
    client.closed = `${event.code} ${event.reason}`;
  });
  provider.on("connection-close", (event) => {
    if (event) note(`closed ${event.code} ${event.reason}`.trim());
  });
  provider.on("connection-error", (event) => {
    note(`error ${event.message ?? event.type}`);
  });
  providers.push(provider);
  return client;
}

// Waits for the provider's first sync; a timeout names the socket's last closes and errors.
async function synced(client, deadline) {
  const ready = () => {
    if (client.closed) throw new Error(`${client.name}: server closed the connection: ${client.closed}`);
    return client.provider.synced;
  };
  await until(ready, deadline, `${client.name} synced`).catch((e) => {
    throw new Error(client.lastEvents.length ? `${e.message} (last: ${client.lastEvents.join("; ")})` : e.message);
  });
}

const text = (client) => client.doc.getText("text").toString();

// Map contents as JSON with sorted keys, so two replicas compare equal whatever their insertion order.
function mapJson(client) {
  const map = client.doc.getMap("map").toJSON();
  return JSON.stringify(Object.fromEntries(Object.keys(map).sort().map((k) => [k, map[k]])));
}

const stateVector = (client) => Buffer.from(Y.encodeStateVector(client.doc)).toString("base64");

function sameState(a, b) {
  return stateVector(a) === stateVector(b) && text(a) === text(b) && mapJson(a) === mapJson(b);
}

function sameContent(a, b) {
  return text(a) === text(b) && mapJson(a) === mapJson(b);
}

// Yields to the event loop for 0–3 ms so the two writers' updates cross on the wire.
const jitter = () => sleep(Math.floor(Math.random() * 4));

async function writeA(client) {
  const ytext = client.doc.getText("text");
  const ymap = client.doc.getMap("map");
  for (let i = 0; i < ROUNDS; i++) {
    ytext.insert(0, "alpha ");
    if (i < MAP_KEYS) ymap.set(`a${i}`, i);
    if (i === ROUNDS / 2) ymap.set("both", "from A");
    await jitter();
  }
}

async function writeB(client) {
  const ytext = client.doc.getText("text");
  const ymap = client.doc.getMap("map");
  for (let i = 0; i < ROUNDS; i++) {
    ytext.insert(ytext.length, "beta ");
    if (i < MAP_KEYS) ymap.set(`b${i}`, i);
    if (i === ROUNDS / 2) ymap.set("both", "from B");
    await jitter();
  }
}

function checkContent(client) {
  const t = text(client);
  const alphas = t.split("alpha ").length - 1;
  const betas = t.split("beta ").length - 1;
  if (alphas !== ROUNDS || betas !== ROUNDS) {
    throw new Error(`converged text has ${alphas} "alpha " and ${betas} "beta ", expected ${ROUNDS} each`);
  }
  const map = client.doc.getMap("map").toJSON();
  for (let i = 0; i < MAP_KEYS; i++) {
    if (map[`a${i}`] !== i || map[`b${i}`] !== i) throw new Error(`map is missing a${i} or b${i}: ${mapJson(client)}`);
  }
  if (map.both !== "from A" && map.both !== "from B") throw new Error(`contested key "both" is ${map.both}`);
}

// Records console.warn output (the provider reports a permission-denied message there) and
// passes it on to stderr without the access token of the URL it names.
function captureWarnings() {
  const warn = console.warn;
  console.warn = (...args) => {
    const text = args.join(" ");
    warnings.push({ at: Date.now(), text });
    warn(text.replace(/access_token=[^&\s]+/g, "access_token=…"));
  };
}

const deniedSince = (t) => warnings.some((w) => w.at >= t && w.text.includes("Permission denied"));

async function viewerScenario(opts, a, b, deadline) {
  const v = connect(opts, opts.viewer, "viewer");
  await synced(v, deadline);
  const deniedBeforeWrite = deniedSince(0);
  await until(() => sameContent(v, a), deadline, "viewer has the converged state");
  const wroteAt = Date.now();
  v.doc.getText("text").insert(0, VIEWER_TEXT);
  await until(() => deniedSince(wroteAt), deadline, "permission denied for the viewer's write");
  await sleep(SETTLE_MS);
  for (const c of [a, b]) {
    if (text(c).includes(VIEWER_TEXT)) throw new Error(`the viewer's write reached ${c.name}`);
  }
  return { viewer_denied: true, viewer_denied_before_write: deniedBeforeWrite };
}

async function lateJoiner(opts, a, deadline) {
  const c = connect(opts, opts.editor, "late");
  await synced(c, deadline);
  await until(() => sameState(c, a), deadline, "late joiner has the same state as A");
}

async function run(opts) {
  const started = Date.now();
  const deadline = started + opts.timeoutMs;
  captureWarnings();
  const a = connect(opts, opts.editor, "A");
  const b = connect(opts, opts.editor2, "B");
  await Promise.all([synced(a, deadline), synced(b, deadline)]);
  await Promise.all([writeA(a), writeB(b)]);
  await until(() => sameState(a, b), deadline, "A and B converge");
  checkContent(a);
  const viewer = opts["no-viewer"] ? { viewer_denied: null } : await viewerScenario(opts, a, b, deadline);
  await lateJoiner(opts, a, deadline);
  return {
    ok: true,
    text: text(a),
    map: JSON.parse(mapJson(a)),
    ...viewer,
    elapsed_ms: Date.now() - started,
  };
}

function finish(result) {
  for (const p of providers) p.destroy();
  console.log(JSON.stringify(result));
  process.exit(result.ok ? 0 : 1);
}

function main() {
  let opts;
  try {
    opts = options();
  } catch (e) {
    finish({ ok: false, error: e.message });
  }
  setTimeout(() => finish({ ok: false, error: `global timeout after ${opts.timeoutMs + 5000} ms` }), opts.timeoutMs + 5000);
  run(opts).then(finish, (e) => finish({ ok: false, error: e.message }));
}

main();

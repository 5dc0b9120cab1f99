// One scripted journey through the API with the TypeScript client @hey-api/openapi-ts generated
// from openapi/outpost.json (types, an SDK over fetch, and zod schemas the SDK checks every
// successful answer against). scripts/contract-test.sh copies this file and tsconfig.json next to
// the generated client (target/contract/ts/client) and runs it there:
//
//     tsx journey.ts PRINCIPALS.json
//
// Uses the base URL and the operator key from PRINCIPALS.json (written by provision.py) and makes
// everything else itself: operator creates an org -> invites an owner -> accept -> login ->
// refresh -> create room -> join -> channel -> post with an Idempotency-Key (the retry answers
// the same message) -> history -> task with a dependency -> search -> document create + binary
// Yjs update + versions -> API key -> files -> a service registered and called through the
// gateway -> an OAuth provider and an authorization started at it -> a deliberate 404 read as a
// typed Problem -> logout.

import { readFileSync } from "node:fs";
import { randomUUID } from "node:crypto";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import * as Y from "yjs";

import { createClient } from "./client/client/index.js";
import {
  acceptInvitation,
  addTaskDependency,
  appendUpload,
  applyDocumentUpdate,
  createApiKey,
  createChannel,
  createDocument,
  createDocumentVersion,
  createOrganization,
  createOrganizationInvitation,
  createRoom,
  createService,
  createTask,
  createUpload,
  downloadAsset,
  getAsset,
  getDocumentJson,
  getMe,
  getRoom,
  joinRoom,
  listDocumentVersions,
  listMessages,
  listRooms,
  login,
  logout,
  postMessage,
  proxyServicePost,
  listOAuthTemplates,
  createOAuthProvider,
  startConnectionAuthorization,
  getSsoPolicy,
  listSsoOptions,
  createOAuthApp,
  listOAuthApps,
  setSsoPolicy,
  refreshTokens,
  search,
  uploadAsset,
  uploadAssetForm,
} from "./client/index.js";
import type { Problem } from "./client/index.js";
import { zProblem } from "./client/zod.gen.js";

type Answer<T, E> = { data?: T; error?: E; response?: Response };

let steps = 0;

/** The typed data of a successful answer with `status`; anything else ends the journey. */
async function step<T, E>(name: string, status: number, call: Promise<Answer<T, E>>): Promise<T> {
  let answer: Answer<T, E>;
  try {
    answer = await call;
  } catch (e) {
    // The SDK's zod validator refused the answer: the server sent what the document does not say.
    throw new Error(`journey.ts: ${name}: the answer does not match the document: ${e}`);
  }
  const got = answer.response?.status;
  if (got !== status || answer.error !== undefined || answer.data === undefined) {
    throw new Error(`journey.ts: ${name}: expected ${status}, got ${got}: ${JSON.stringify(answer.error)}`);
  }
  steps += 1;
  console.log(`  ok  ${name}: ${got}`);
  return answer.data;
}

/** The typed Problem of an answer that must fail with `status`. */
async function problem<T, E>(name: string, status: number, call: Promise<Answer<T, E>>): Promise<Problem> {
  const answer = await call;
  const got = answer.response?.status;
  if (got !== status || answer.error === undefined) {
    throw new Error(`journey.ts: ${name}: expected a ${status} problem, got ${got}`);
  }
  const parsed = zProblem.safeParse(answer.error);
  if (!parsed.success) {
    throw new Error(`journey.ts: ${name}: the ${got} body is not a Problem: ${parsed.error.message}: ${JSON.stringify(answer.error)}`);
  }
  const p: Problem = answer.error as Problem;
  if (p.status !== status || !p.code) throw new Error(`journey.ts: ${name}: ${JSON.stringify(p)}`);
  steps += 1;
  console.log(`  ok  ${name}: ${got} Problem ${p.code}`);
  return p;
}

/** A service on loopback answering what it was sent; its base URL. */
async function startService(): Promise<string> {
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const identity = req.headers["outpost-identity"];
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({
        method: req.method,
        path: req.url,
        key: req.headers["x-api-key"],
        body: Buffer.concat(chunks).toString(),
        identity: typeof identity === "string" ? JSON.parse(identity) : null,
        signed: Boolean(req.headers["outpost-identity-signature"]),
      }));
    });
  });
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  server.unref();
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function main(): Promise<void> {
  const env = JSON.parse(readFileSync(process.argv[2], "utf8")) as { base_url: string; operator_key: string };
  const baseUrl = env.base_url;
  const tag = randomUUID().slice(0, 8);
  const slug = `journey-ts-${tag}`;
  const username = `grace-${tag}`;
  const password = "a long passphrase for grace";

  const operator = createClient({ baseUrl, auth: env.operator_key });
  const anonymous = createClient({ baseUrl });

  const org = await step("operator creates an organization", 201,
    createOrganization({ client: operator, body: { slug, name: "Journey (TypeScript)" } }));
  const inv = await step("operator invites an owner", 201,
    createOrganizationInvitation({ client: operator, path: { org_id: org.id }, body: { email: `grace-${tag}@example.org`, role: "owner" } }));
  const user = await step("the owner accepts", 200,
    acceptInvitation({ client: anonymous, body: { token: inv.token, username, password } }));
  let pair = await step("the owner logs in", 200,
    login({ client: anonymous, body: { org: slug, login: username, password } }));
  if (pair.user.id !== user.id) throw new Error("login answered another user");
  pair = await step("refresh", 200, refreshTokens({ client: anonymous, body: { refresh_token: pair.refresh_token } }));
  const grace = createClient({ baseUrl, auth: pair.access_token });

  const room = await step("create a room", 201,
    createRoom({ client: grace, body: { name: "Journey room", visibility: "org" } }));
  await step("join the room", 200, joinRoom({ client: grace, path: { room_id: room.id } }));

  const channel = await step("create a channel", 201,
    createChannel({ client: grace, body: { kind: "public", name: `journey-${tag}` } }));
  const key = `journey-${tag}`;
  const send = () => postMessage({
    client: grace,
    path: { channel_id: channel.id },
    headers: { "Idempotency-Key": key },
    body: { text: `hello ${tag}` },
  });
  const first = await step("post a message with an Idempotency-Key", 201, send());
  const again = await step("retry the post with the same key", 201, send());
  if (again.id !== first.id) throw new Error(`the retry made another message: ${again.id} != ${first.id}`);
  const history = await step("read the history", 200,
    listMessages({ client: grace, path: { channel_id: channel.id }, query: { limit: 50 } }));
  if (history.items.filter((m) => m.id === first.id).length !== 1) throw new Error("the message is not in the history once");

  const before = await step("create a task", 201,
    createTask({ client: grace, body: { title: `prepare the journey ${tag}`, room_id: room.id } }));
  let task = await step("create a second task", 201,
    createTask({ client: grace, body: { title: `run the journey ${tag}`, room_id: room.id } }));
  task = await step("make the second depend on the first", 200,
    addTaskDependency({ client: grace, path: { task_id: task.id, depends_on_id: before.id } }));
  if (!task.depends_on.includes(before.id)) throw new Error("the dependency is not on the task");

  // The search index follows the event log: give it a moment.
  const deadline = Date.now() + 15_000;
  for (;;) {
    const page = await step("search", 200, search({ client: grace, query: { q: tag } }));
    if (page.items.some((h) => [first.id, task.id, before.id].includes(h.id))) break;
    if (Date.now() > deadline) throw new Error(`search for ${tag} found nothing in 15 s`);
    await new Promise((r) => setTimeout(r, 500));
  }

  const doc = await step("create a document", 201,
    createDocument({ client: grace, path: { room_id: room.id }, body: { name: "journey notes" } }));
  const ydoc = new Y.Doc();
  ydoc.getText("text").insert(0, `hello from the TypeScript journey ${tag}`);
  const update = Y.encodeStateAsUpdate(ydoc);
  await step("apply a binary Yjs update", 200,
    applyDocumentUpdate({ client: grace, path: { doc_id: doc.id }, body: new Blob([new Uint8Array(update)]) }));
  const content = await getDocumentJson({ client: grace, path: { doc_id: doc.id } });
  if (content.response?.status !== 200 || !JSON.stringify(content.data).includes(tag)) {
    throw new Error(`the document does not hold the update: ${JSON.stringify(content.data)}`);
  }
  const version = await step("save a version", 201,
    createDocumentVersion({ client: grace, path: { doc_id: doc.id }, body: { label: "first draft" } }));
  const versions = await step("list the versions", 200, listDocumentVersions({ client: grace, path: { doc_id: doc.id } }));
  if (!versions.items.some((v) => v.id === version.id)) throw new Error("the version is not listed");

  const created = await step("create an API key", 201,
    createApiKey({ client: grace, body: { name: "journey", scopes: ["rooms.read"] } }));
  const keyed = createClient({ baseUrl, auth: created.token });
  const rooms = await step("list rooms with the API key", 200, listRooms({ client: keyed }));
  if (!rooms.items.some((r) => r.id === room.id)) throw new Error("the API key does not see the room");

  // Files: a resumable (tus) upload in two appends, a one-request upload, a form, a ranged download.
  const data = new TextEncoder().encode(`a file from the journey ${tag}\n`.repeat(40));
  const b64 = (t: string) => Buffer.from(t).toString("base64");
  const begun = await createUpload({
    client: grace,
    headers: {
      "Tus-Resumable": "1.0.0",
      "Upload-Length": data.length,
      "Upload-Metadata": `filename ${b64("journey.txt")},filetype ${b64("text/plain")}`,
    },
  });
  const location = begun.response?.headers.get("location");
  if (begun.response?.status !== 201 || !location) throw new Error(`createUpload answered ${begun.response?.status}`);
  steps += 1;
  console.log("  ok  begin a resumable upload: 201");
  const uploadId = location.split("/").pop() as string;
  const half = Math.floor(data.length / 2);
  for (const [start, chunk] of [[0, data.slice(0, half)], [half, data.slice(half)]] as const) {
    const sent = await appendUpload({
      client: grace,
      path: { upload_id: uploadId },
      headers: { "Tus-Resumable": "1.0.0", "Upload-Offset": start },
      body: new Blob([chunk]),
    });
    const offset = Number(sent.response?.headers.get("upload-offset"));
    if (sent.response?.status !== 204 || offset !== start + chunk.length) {
      throw new Error(`appendUpload answered ${sent.response?.status} at ${offset}`);
    }
    steps += 1;
    console.log(`  ok  send bytes from ${start}: 204`);
  }
  const asset = await step("the upload is a file", 200, getAsset({ client: grace, path: { asset_id: uploadId } }));
  if (asset.size !== data.length || asset.content_type !== "text/plain") throw new Error(JSON.stringify(asset));
  const small = await step("upload a small file in one request", 201,
    uploadAsset({ client: grace, query: { name: "note.txt", content_type: "text/plain" }, body: new Blob(["a note"]) }));
  if (small.size !== 6) throw new Error(JSON.stringify(small));
  const form = await step("upload a file as a form", 201,
    uploadAssetForm({ client: grace, body: { name: "from a form.txt", file: new Blob(["a form's file"], { type: "text/plain" }) } }));
  if (form.name !== "from a form.txt" || form.size !== 13 || form.content_type !== "text/plain") {
    throw new Error(JSON.stringify(form));
  }
  const part = await downloadAsset({ client: grace, path: { asset_id: asset.id }, headers: { Range: "bytes=0-9" } });
  // Typed as a Blob; the client reads a text/plain answer as text.
  const got: unknown = part.data;
  const text = typeof got === "string" ? got : got instanceof Blob ? await got.text() : "";
  if (part.response?.status !== 206 || text !== new TextDecoder().decode(data.slice(0, 10))) {
    throw new Error(`downloadAsset answered ${part.response?.status}: ${JSON.stringify(part.data)}`);
  }
  steps += 1;
  console.log("  ok  download a range: 206");

  // A service registered with an API key, called through the gateway (the answer read as text:
  // it is whatever the service sent).
  const made = await step("register a service with an API key", 201, createService({
    client: grace,
    body: { name: "Tickets", base_url: await startService(), credential: { kind: "api_key", secret: "journey-key" } },
  }));
  if (!made.signing_secret.startsWith("whsec_") || made.service.credential?.kind !== "api_key") {
    throw new Error(JSON.stringify(made));
  }
  const called = await step("call it through the gateway", 200, proxyServicePost({
    client: grace,
    path: { service_id: made.service.id, path: "tickets/7" },
    body: new Blob(['{"title": "printer"}']),
    parseAs: "text",
  }));
  const seen = JSON.parse(String(called));
  if (seen.method !== "POST" || seen.path !== "/tickets/7" || seen.key !== "journey-key" ||
      seen.body !== '{"title": "printer"}' || seen.identity?.role !== "owner" || !seen.signed) {
    throw new Error(`the service saw ${JSON.stringify(seen)}`);
  }

  // An OAuth provider, and an authorization started at it (PKCE S256, the server's callback).
  const templates = await step("list the OAuth provider templates", 200, listOAuthTemplates({ client: grace }));
  if (!templates.items.some((t) => t.key === "gitlab") || !templates.redirect_uri.endsWith("/v1/oauth/callback")) {
    throw new Error(JSON.stringify(templates));
  }
  const provider = await step("add an OAuth provider", 201, createOAuthProvider({
    client: grace,
    body: {
      template: "custom",
      authorize_url: "http://127.0.0.1:9/authorize",
      token_url: "http://127.0.0.1:9/token",
      client_id: "journey",
      client_secret: "journey-client-secret",
      scopes: ["read"],
    },
  }));
  const started = await step("start connecting an account", 201, startConnectionAuthorization({
    client: grace,
    body: { provider_id: provider.id, return_to: "/settings/connections" },
  }));
  const url = new URL(started.authorization_url);
  if (url.searchParams.get("code_challenge_method") !== "S256" || url.searchParams.get("scope") !== "read" ||
      url.searchParams.get("redirect_uri") !== started.redirect_uri || !url.searchParams.get("state")) {
    throw new Error(started.authorization_url);
  }

  // Single sign-on: no identity provider yet, so requiring it is refused, and passwords stay.
  const policy = await step("read the single sign-on policy", 200, getSsoPolicy({ client: grace }));
  if (policy.required) throw new Error(JSON.stringify(policy));
  await problem("SSO cannot be required without an identity provider", 409,
    setSsoPolicy({ client: grace, body: { required: true } }));
  const options = await step("the organization's sign-in options", 200, listSsoOptions({ client: anonymous, query: { org: slug } }));
  if (options.required || options.providers.length !== 0) throw new Error(JSON.stringify(options));

  // An OAuth app (Outpost as its authorization server): its secret answered once.
  const oauthApp = await step("register an OAuth app", 201, createOAuthApp({
    client: grace,
    body: { name: "Journey app", redirect_uris: ["https://app.example/callback"], scopes: ["self.manage", "rooms.read"] },
  }));
  if (!oauthApp.client_secret?.startsWith("oas_") || !oauthApp.app.client_id.startsWith("oa_") || !oauthApp.app.confidential) {
    throw new Error(JSON.stringify(oauthApp.app));
  }
  const listedApps = await step("list OAuth apps", 200, listOAuthApps({ client: grace }));
  if (listedApps.items.length !== 1 || "client_secret" in listedApps.items[0]) throw new Error(JSON.stringify(listedApps));

  await problem("a room that does not exist is a typed Problem", 404, getRoom({ client: grace, path: { room_id: randomUUID() } }));

  const out = await logout({ client: grace });
  if (out.response?.status !== 204) throw new Error(`logout answered ${out.response?.status}`);
  steps += 1;
  console.log("  ok  log out: 204");
  await problem("the token no longer works", 401, getMe({ client: grace }));
  console.log(`journey.ts: ${steps} steps passed`);
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});

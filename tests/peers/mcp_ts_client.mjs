// An independent MCP client for Outpost: the official MCP TypeScript SDK (@modelcontextprotocol/sdk)
// over Streamable HTTP. It authorizes through Outpost's OAuth server as a stock client would —
// protected-resource and authorization-server discovery, dynamic client registration, PKCE, the
// RFC 8707 resource indicator, all done by the SDK — while this script only plays the browser on
// the consent page. Then it uses Outpost's MCP tools and resources.
//
//   echo '{"url": "http://127.0.0.1:PORT/orgs/SLUG/mcp", "login": "mia", "password": "…",
//          "redirect_uri": "http://127.0.0.1:9/callback", "scope": "rooms.read …",
//          "calls": [["tool", {…}], …], "read": ["outpost://…", …]}' | node mcp_ts_client.mjs
//
// Prints one JSON line: {unauthenticated, registered_client_id, token_scope, authorization,
// server, protocol_version, tools, calls, resources, reads}; on failure {"error", "stack"} and
// exits 1. The redirect URI is never contacted: the code is read from the 303's Location.
import { randomBytes } from "node:crypto";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";
import { McpError } from "@modelcontextprotocol/sdk/types.js";

const unescapeHtml = (s) =>
  s
    .replace(/&#x([0-9a-f]+);/gi, (_, h) => String.fromCodePoint(parseInt(h, 16)))
    .replace(/&#(\d+);/g, (_, d) => String.fromCodePoint(Number(d)))
    .replace(/&quot;/g, '"')
    .replace(/&lt;/g, "<")
    .replace(/&gt;/g, ">")
    .replace(/&amp;/g, "&");

// Every <input type="hidden" name=… value=…> of a page, attributes in any order and quoting.
function hiddenInputs(html) {
  const fields = [];
  for (const [tag] of html.matchAll(/<input\b[^>]*>/gi)) {
    const attrs = {};
    for (const m of tag.matchAll(/([\w:-]+)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))/g)) {
      attrs[m[1].toLowerCase()] = unescapeHtml(m[2] ?? m[3] ?? m[4]);
    }
    if (attrs.type?.toLowerCase() === "hidden" && attrs.name) fields.push([attrs.name, attrs.value ?? ""]);
  }
  return fields;
}

// The SDK's OAuthClientProvider, kept in memory; redirectToAuthorization signs in on the consent page.
class TestProvider {
  constructor({ redirect_uri, scope, login, password }) {
    this.user = { login, password };
    this.redirectUrl = redirect_uri;
    this.clientMetadata = {
      client_name: "mcp-ts-test",
      redirect_uris: [redirect_uri],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
      scope,
    };
    this.sentState = randomBytes(16).toString("base64url");
    this.authorization = undefined; // {url, code, iss, state, state_matches} once consent was given
  }
  state() { return this.sentState; }
  clientInformation() { return this._client; }
  saveClientInformation(info) { this._client = info; }
  tokens() { return this._tokens; }
  saveTokens(tokens) { this._tokens = tokens; }
  codeVerifier() {
    if (!this._verifier) throw new Error("no PKCE code verifier saved");
    return this._verifier;
  }
  saveCodeVerifier(verifier) { this._verifier = verifier; }

  async redirectToAuthorization(authorizationUrl) {
    const page = await fetch(authorizationUrl, { redirect: "manual" });
    const html = await page.text();
    if (page.status !== 200 || !(page.headers.get("content-type") ?? "").includes("text/html")) {
      throw new Error(`consent page: ${page.status} ${page.headers.get("content-type")}: ${html}`);
    }
    const form = new URLSearchParams(hiddenInputs(html));
    form.set("login", this.user.login);
    form.set("password", this.user.password);
    form.set("decision", "allow");
    const cookies = page.headers.getSetCookie().map((c) => c.split(";")[0]).join("; ");
    const endpoint = new URL(authorizationUrl.pathname, authorizationUrl.origin);
    const answer = await fetch(endpoint, {
      method: "POST",
      redirect: "manual",
      headers: { "content-type": "application/x-www-form-urlencoded", ...(cookies && { cookie: cookies }) },
      body: form,
    });
    const body = await answer.text();
    const location = answer.headers.get("location");
    if (answer.status !== 303 || !location) {
      throw new Error(`consent answer: ${answer.status} (location ${location}): ${body}`);
    }
    const back = new URL(location, endpoint);
    const code = back.searchParams.get("code");
    if (!code) throw new Error(`consent redirect without a code: ${location}`);
    const state = back.searchParams.get("state");
    this.authorization = {
      url: authorizationUrl.href,
      code,
      iss: back.searchParams.get("iss"),
      state,
      state_matches: state === this.sentState,
    };
  }
}

// The server's JSON-RPC error, without the "MCP error <code>: " prefix the SDK adds to the message.
const errorOf = (err) => ({ code: err.code, message: err.message.replace(/^MCP error -?\d+: /, "") });
const texts = (content = []) => content.filter((c) => c.type === "text").map((c) => c.text).join("");

async function listAll(list, key) {
  const items = [];
  let cursor;
  do {
    const page = await list(cursor ? { cursor } : undefined);
    items.push(...page[key]);
    cursor = page.nextCursor;
  } while (cursor);
  return items;
}

async function main() {
  let input = "";
  for await (const chunk of process.stdin) input += chunk;
  const cfg = JSON.parse(input);
  const url = new URL(cfg.url);

  // What a client without a token is told.
  const bare = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", accept: "application/json, text/event-stream" },
    body: JSON.stringify({
      jsonrpc: "2.0",
      id: 0,
      method: "initialize",
      params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "mcp-ts-test", version: "1.0.0" } },
    }),
  });
  await bare.body?.cancel();
  const unauthenticated = { status: bare.status, www_authenticate: bare.headers.get("www-authenticate") };

  // First attempt: 401, discovery, registration, consent; then the code is exchanged and we reconnect.
  const provider = new TestProvider(cfg);
  const client = new Client({ name: "mcp-ts-test", version: "1.0.0" });
  let transport = new StreamableHTTPClientTransport(url, { authProvider: provider });
  try {
    await client.connect(transport);
    throw new Error("the MCP server accepted a client without a token");
  } catch (err) {
    if (!(err instanceof UnauthorizedError) || !provider.authorization) throw err;
  }
  await transport.finishAuth(provider.authorization.code);
  const authed = new Client({ name: "mcp-ts-test", version: "1.0.0" });
  transport = new StreamableHTTPClientTransport(url, { authProvider: provider });
  await authed.connect(transport);

  const tools = await listAll((p) => authed.listTools(p), "tools");
  const calls = [];
  for (const [name, args] of cfg.calls ?? []) {
    try {
      const r = await authed.callTool({ name, arguments: args ?? {} });
      calls.push({ name, isError: r.isError ?? false, text: texts(r.content), structured: r.structuredContent ?? null });
    } catch (err) {
      if (!(err instanceof McpError)) throw err;
      calls.push({ name, error: errorOf(err) });
    }
  }
  const resources = await listAll((p) => authed.listResources(p), "resources");
  const reads = [];
  for (const uri of cfg.read ?? []) {
    try {
      const first = (await authed.readResource({ uri })).contents[0];
      reads.push({ uri, mimeType: first?.mimeType ?? null, text: first?.text ?? null });
    } catch (err) {
      if (!(err instanceof McpError)) throw err;
      reads.push({ uri, error: errorOf(err) });
    }
  }
  const protocol_version = transport.protocolVersion ?? null;
  await authed.close();

  const { code, ...authorization } = provider.authorization;
  return {
    unauthenticated,
    registered_client_id: provider.clientInformation()?.client_id ?? null,
    token_scope: provider.tokens()?.scope ?? null,
    authorization,
    server: authed.getServerVersion() ?? null,
    protocol_version,
    tools: tools.map((t) => t.name),
    calls,
    resources: resources.map((r) => r.uri),
    reads,
  };
}

const finish = (result, status) => process.stdout.write(JSON.stringify(result) + "\n", () => process.exit(status));
main().then(
  (result) => finish(result, 0),
  (err) => finish({ error: String(err), stack: err?.stack ?? null }, 1),
);

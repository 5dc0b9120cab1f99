// A real OpenID provider for the tests: the certified `oidc-provider`, on 127.0.0.1.
//
//   node oidc_provider.mjs '{"clients": [...], "access_ttl_s": 60, "account": {...}}'
//
// Listens on a port of the system's choosing (or `"port"`), then prints `ready <port>`: the
// issuer is only known once the port is. People sign in without a browser: `/interaction/:uid`
// logs in the configured account and consents to what the client asked for at once (two
// redirects). Test-only routes:
//   GET  /_stats   token grants by type, revocation requests, grants revoked, tokens held
//   GET  /_tokens  the access and refresh tokens it holds (opaque: their ids are their values)
//   POST /_forget  drops every grant and token (as if the user revoked the app at the IdP)
//   POST /_account the account that signs in from now on (JSON claims with `sub`)
//   POST /_rotate  a new signing key replaces the old one (a key rotation)
//   POST /_clients the registered clients from now on (a JSON array of client metadata)
//   POST /_tamper  `{"mode": …}`: the next token answer's id_token is altered — `expired`,
//                  `audience`, `nonce`, `issuer`, `forged` (signed by another key under the
//                  same kid), `none` (unsigned), `hs256` (an HMAC with the client secret)
import http from "node:http";
import { createHmac, createPrivateKey, generateKeyPairSync, randomUUID, sign } from "node:crypto";
import Provider from "oidc-provider";

const cfg = JSON.parse(process.argv[2] || "{}");

// Keeps every model in maps, so the test can see and drop what the provider holds.
const stores = new Map();
const store = (name) => {
  if (!stores.has(name)) stores.set(name, new Map());
  return stores.get(name);
};
class Adapter {
  constructor(name) {
    this.name = name;
    this.map = store(name);
  }
  async upsert(id, payload) {
    this.map.set(id, payload);
  }
  async find(id) {
    return this.map.get(id);
  }
  async findByUid(uid) {
    for (const v of this.map.values()) if (v.uid === uid) return v;
    return undefined;
  }
  async findByUserCode(code) {
    for (const v of this.map.values()) if (v.userCode === code) return v;
    return undefined;
  }
  async consume(id) {
    const v = this.map.get(id);
    if (v) v.consumed = Math.floor(Date.now() / 1000);
  }
  async destroy(id) {
    this.map.delete(id);
  }
  async revokeByGrantId(grantId) {
    for (const m of stores.values()) {
      for (const [k, v] of m) if (v.grantId === grantId) m.delete(k);
    }
  }
}

const key = () => {
  const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  return { ...privateKey.export({ format: "jwk" }), kid: randomUUID(), use: "sig", alg: "RS256" };
};

const clients = () => cfg.clients || [];
let account = cfg.account || { sub: "alice", email: "alice@example.test", email_verified: true, groups: ["staff"] };
let issuer = null;
const stats = { grants: {}, revocations: 0, jwks_fetches: 0 };
let signing = key();
let tamperMode = null;

const b64 = (b) => Buffer.from(b).toString("base64url");
const signed = (header, payload, jwk) => {
  const input = `${b64(JSON.stringify(header))}.${b64(JSON.stringify(payload))}`;
  return `${input}.${b64(sign("sha256", Buffer.from(input), createPrivateKey({ key: jwk, format: "jwk" })))}`;
};
function tamper(idToken, mode) {
  const [h, p] = idToken.split(".");
  const header = JSON.parse(Buffer.from(h, "base64url"));
  const payload = JSON.parse(Buffer.from(p, "base64url"));
  const now = Math.floor(Date.now() / 1000);
  if (mode === "expired") Object.assign(payload, { iat: now - 1200, exp: now - 600 });
  if (mode === "audience") payload.aud = "another-client";
  if (mode === "nonce") payload.nonce = "not-the-nonce-it-was-given";
  if (mode === "issuer") payload.iss = "http://127.0.0.1:1";
  if (mode === "forged") return signed(header, payload, { ...key(), kid: header.kid });
  if (mode === "none") return `${b64(JSON.stringify({ alg: "none", typ: "JWT" }))}.${b64(JSON.stringify(payload))}.`;
  if (mode === "hs256") {
    const input = `${b64(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${b64(JSON.stringify(payload))}`;
    const secret = (cfg.clients || [])[0]?.client_secret || "";
    return `${input}.${createHmac("sha256", secret).update(input).digest("base64url")}`;
  }
  return signed(header, payload, signing);
}

const build = () => new Provider(issuer, {
  adapter: Adapter,
  clients: clients(),
  jwks: { keys: [signing] },
  cookies: { keys: ["outpost-test-cookie-key"] },
  pkce: { required: () => true },
  scopes: ["openid", "offline_access", "email", "profile", "groups", "api:read", "api:write"],
  claims: { openid: ["sub"], email: ["email", "email_verified"], profile: ["name"], groups: ["groups"] },
  conformIdTokenClaims: false,
  ttl: {
    AccessToken: cfg.access_ttl_s || 3600,
    ClientCredentials: cfg.access_ttl_s || 3600,
    RefreshToken: 86400,
    Grant: 86400,
    Interaction: 600,
    Session: 86400,
    AuthorizationCode: 60,
  },
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true },
    backchannelLogout: { enabled: true },
    introspection: { enabled: true },
    clientCredentials: { enabled: true },
  },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  // Its back-channel logouts go to Outpost on loopback, which its SSRF guard would refuse.
  fetch: (url, options) => {
    const { dispatcher: _guard, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
  findAccount: async (_ctx, sub) =>
    sub === account.sub ? { accountId: sub, claims: async () => ({ ...account }) } : undefined,
  // Client credentials tokens for the scopes the client asks for (no resource indicator).
  allowOmittingSingleRegisteredRedirectUri: true,
});
function start() {
  const p = build();
  p.proxy = false;
  p.on("grant.success", (ctx) => {
    const t = ctx.oidc.params.grant_type;
    stats.grants[t] = (stats.grants[t] || 0) + 1;
  });
  p.on("backchannel.error", (_ctx, err) => {
    stats.backchannel_errors = (stats.backchannel_errors || 0) + 1;
    console.error("backchannel", err && err.message, err && err.cause && (err.cause.code || err.cause.message));
  });
  p.on("grant.revoked", () => {
    stats.grants_revoked = (stats.grants_revoked || 0) + 1;
  });
  p.use(async (ctx, next) => {
    await next();
    if (ctx.path === "/token" && tamperMode && ctx.body && ctx.body.id_token) {
      ctx.body = { ...ctx.body, id_token: tamper(ctx.body.id_token, tamperMode) };
      tamperMode = null;
    }
  });
  return p;
}
let provider = null;

async function interaction(req, res, uid) {
  const details = await provider.interactionDetails(req, res);
  if (details.prompt.name === "login") {
    await provider.interactionFinished(req, res, { login: { accountId: account.sub } }, { mergeWithLastSubmission: false });
    return;
  }
  const { params, session } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  grant.addOIDCScope(String(params.scope || "openid"));
  grant.addResourceScope(issuer, String(params.scope || ""));
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  void uid;
}

let callback = null;
const readBody = (req) =>
  new Promise((resolve) => {
    let data = "";
    req.on("data", (c) => (data += c));
    req.on("end", () => resolve(data ? JSON.parse(data) : {}));
  });
const server = http.createServer(async (req, res) => {
  try {
    const path = req.url.split("?")[0];
    if (path === "/_stats") {
      const tokens = store("RefreshToken").size;
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ ...stats, refresh_tokens: tokens, access_tokens: store("AccessToken").size }));
      return;
    }
    if (path === "/_tokens") {
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify([...store("AccessToken").keys(), ...store("RefreshToken").keys()]));
      return;
    }
    if (path === "/_forget" && req.method === "POST") {
      for (const m of stores.values()) m.clear();
      res.end("{}");
      return;
    }
    if (path === "/_account" && req.method === "POST") {
      account = await readBody(req);
      res.end("{}");
      return;
    }
    if (path === "/_rotate" && req.method === "POST") {
      signing = key();
      provider = start();
      callback = provider.callback();
      res.end(JSON.stringify({ kid: signing.kid }));
      return;
    }
    if (path === "/_clients" && req.method === "POST") {
      cfg.clients = await readBody(req);
      provider = start();
      callback = provider.callback();
      res.end("{}");
      return;
    }
    if (path === "/_tamper" && req.method === "POST") {
      tamperMode = (await readBody(req)).mode;
      res.end("{}");
      return;
    }
    if (path === "/jwks") stats.jwks_fetches += 1;
    if (path === "/token/revocation") stats.revocations += 1;
    const m = path.match(/^\/interaction\/([^/]+)$/);
    if (m) {
      await interaction(req, res, m[1]);
      return;
    }
    callback(req, res);
  } catch (e) {
    res.statusCode = 500;
    res.end(String(e && e.stack ? e.stack : e));
  }
});
server.listen(cfg.port || 0, "127.0.0.1", () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  provider = start();
  callback = provider.callback();
  console.log(`ready ${server.address().port}`);
});
// It ends with its stdin (the test's end), unless told to run until stopped.
if (cfg.watch_stdin !== false) {
  process.stdin.on("end", () => process.exit(0));
  process.stdin.resume();
}

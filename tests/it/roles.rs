//! The role matrix, generated from the API document: for every operation a user calls and
//! every organization role, the operation is allowed exactly when the policy grants the
//! permission its description names (`Permission: \`…\``) — and, for operations that also
//! name a room role (`Room role: \`…\``), when the caller holds it in the room — and refused
//! with 403 otherwise.

use outpost::domain::policy::{self, Permission, Role, RoomRole};
use serde_json::{Value, json};

use crate::identity::{create_org, login, operator_invite_and_accept};
use crate::isolation::sample;
use crate::support::{TestServer, config_for, slug};

fn permission_of(op: &Value) -> Permission {
    let text = op["description"].as_str().unwrap_or_default();
    let name = text.split("Permission: `").nth(1).and_then(|t| t.split('`').next());
    let id = op["operationId"].as_str().unwrap();
    name.and_then(Permission::parse).unwrap_or_else(|| panic!("{id} does not name its permission"))
}

fn needs_channel_membership(op: &Value) -> bool {
    op["description"].as_str().unwrap_or_default().contains("Channel role: `member`")
}

fn room_role_of(op: &Value) -> Option<RoomRole> {
    let text = op["description"].as_str().unwrap_or_default();
    let name = text.split("Room role: `").nth(1).and_then(|t| t.split('`').next())?;
    RoomRole::ALL.into_iter().find(|r| r.as_str() == name)
}

#[tokio::test]
async fn every_role_gets_exactly_what_the_policy_grants() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.limits.login_per_addr_per_min = 100_000;
    config.limits.user_requests_per_s = 100_000;
    config.auth.sessions_per_user_max = 100_000;
    config.oauth.identity_providers_per_org_max = 1000;
    config.oauth.apps_per_org_max = 1000;
    // TURN on, so its credentials can be handed out.
    config.media.turn_listen = Some("127.0.0.1:0".parse().unwrap());
    // A service on loopback for the gateway's calls to reach.
    config.egress.allow_cidrs = vec!["127.0.0.0/8".into()];
    let s = TestServer::start_with(config).await;
    let upstream = answering_service().await;
    let (tokens, _) = crate::connections::token_server().await;
    let issuer = crate::sso::static_issuer().await;
    let everything = crate::mcp::Everything::start().await;
    let mcp = everything.url();
    let (org_id, sl) = create_org(&s).await;
    for role in Role::ALL {
        operator_invite_and_accept(&s, &org_id, &format!("{}@example.org", role.as_str()), role.as_str()).await;
    }
    let doc: Value = s.http.get(s.url("/v1/openapi.json")).send().await.unwrap().json().await.unwrap();
    let mut owner = login(&s, &sl, "owner").await;
    let mut checked = 0;
    let mut failures = Vec::new();
    // Each role's session, kept from one operation to the next and made again once an operation
    // has ended it (logging out, ending a session, a password change): a login costs a password
    // hash, and a fresh one for each of the ~860 calls made this the suite's longest test.
    let mut sessions: Vec<Option<crate::identity::Login>> = Role::ALL.iter().map(|_| None).collect();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if !op["security"].to_string().contains("UserAuth") {
                continue;
            }
            let permission = permission_of(op);
            let room_role = room_role_of(op);
            let channel_member_needed = needs_channel_membership(op);
            let body_schema = op["requestBody"]["content"]["application/json"]["schema"].clone();
            for (i, role) in Role::ALL.into_iter().enumerate() {
                if sessions[i].is_none() {
                    sessions[i] = Some(login(&s, &sl, role.as_str()).await);
                }
                let me = sessions[i].as_ref().unwrap();
                let id = op["operationId"].as_str().unwrap();
                // An active guest to act on, for the operations that act on a user: a fresh one
                // each time, since some of them change or end it.
                let target_id = if path.contains("{user_id}") || ON_A_USER.contains(&id) {
                    let target =
                        operator_invite_and_accept(&s, &org_id, &format!("{}@example.org", slug("t")), "guest").await;
                    Some(target["user"]["id"].as_str().or(target["id"].as_str()).unwrap().to_owned())
                } else {
                    None
                };
                // A fresh room: the caller's own when they may make one (they host it), else one
                // of the owner's that everyone may see (where the caller takes no part).
                let (maker, my_room_role) = if policy::allows(role, Permission::RoomsCreate) {
                    (&me.access, Some(RoomRole::Host))
                } else {
                    (&owner.access, None)
                };
                let made: Value =
                    crate::support::post_json(&s, maker, "/v1/rooms", serde_json::json!({ "name": "fresh" })).await;
                let room_id = made["id"].as_str().unwrap().to_owned();
                // Likewise a fresh public channel with one message by its maker.
                let chan_maker =
                    if policy::allows(role, Permission::ChannelsCreate) { &me.access } else { &owner.access };
                let chan: Value = crate::support::post_json(
                    &s,
                    chan_maker,
                    "/v1/channels",
                    serde_json::json!({ "kind": "public", "name": "fresh" }),
                )
                .await;
                let channel_id = chan["id"].as_str().unwrap().to_owned();
                let msg: Value = crate::support::post_json(
                    &s,
                    chan_maker,
                    &format!("/v1/channels/{channel_id}/messages"),
                    serde_json::json!({ "text": "hello" }),
                )
                .await;
                let message_id = msg["id"].as_str().unwrap().to_owned();
                let channel_member = policy::allows(role, Permission::ChannelsCreate);
                // And two fresh tasks (by the caller when they may write tasks, else the owner).
                let task_maker = if policy::allows(role, Permission::TasksWrite) { &me.access } else { &owner.access };
                let mut task_ids = Vec::new();
                for _ in 0..2 {
                    let t: Value =
                        crate::support::post_json(&s, task_maker, "/v1/tasks", serde_json::json!({ "title": "t" }))
                            .await;
                    task_ids.push(t["id"].as_str().unwrap().to_owned());
                }
                let comment: Value = crate::support::post_json(
                    &s,
                    task_maker,
                    &format!("/v1/tasks/{}/comments", task_ids[0]),
                    serde_json::json!({ "text": "noted" }),
                )
                .await;
                let comment_id = comment["id"].as_str().unwrap().to_owned();
                // A document in the fresh room, with one saved version, by the room's maker.
                let d: Value = crate::support::post_json(
                    &s,
                    maker,
                    &format!("/v1/rooms/{room_id}/docs"),
                    serde_json::json!({ "name": "fresh" }),
                )
                .await;
                let doc_id = d["id"].as_str().unwrap().to_owned();
                let v: Value = crate::support::post_json(
                    &s,
                    maker,
                    &format!("/v1/docs/{doc_id}/versions"),
                    serde_json::json!({ "label": "v1" }),
                )
                .await;
                let version_id = v["id"].as_str().unwrap().to_owned();
                // A file and an upload in progress of the caller's own (every role may upload).
                let (asset_id, upload_id) = my_file_and_upload(&s, &me.access).await;
                let url = path
                    .replace("{asset_id}", &asset_id)
                    .replace("{upload_id}", &upload_id)
                    .replace("{user_id}", target_id.as_deref().unwrap_or("{user_id}"))
                    .replace("{session_id}", &me.session_id)
                    .replace("{room_id}", &room_id)
                    .replace("{channel_id}", &channel_id)
                    .replace("{message_id}", &message_id)
                    .replace("{emoji}", "thumbsup")
                    .replace("{task_id}", &task_ids[0])
                    .replace("{depends_on_id}", &task_ids[1])
                    .replace("{comment_id}", &comment_id)
                    .replace("{doc_id}", &doc_id)
                    .replace("{version_id}", &version_id)
                    .replace("{connection_id}", &uuid::Uuid::now_v7().to_string())
                    .replace("{recording_id}", &uuid::Uuid::now_v7().to_string())
                    .replace("{name}", if path.contains("/mcp/prompts/") { "simple-prompt" } else { "00-audio-1.ogg" })
                    .replace("{tool}", "echo")
                    .replace("{call_id}", "call-1")
                    .replace("{path}", "x");
                let (url, body) = prepare(
                    &s,
                    Prepare {
                        id,
                        role,
                        org: &org_id,
                        me,
                        fresh: &slug("p"),
                        owner: &owner.access,
                        target: target_id.as_deref(),
                        asset: &asset_id,
                        upstream: &upstream,
                        tokens: &tokens,
                        issuer: &issuer,
                        mcp: &mcp,
                    },
                    Places {
                        room: (&room_id, maker),
                        channel: (&channel_id, chan_maker),
                        tasks: (&task_ids, task_maker),
                    },
                    url,
                )
                .await;
                let mut req =
                    s.http.request(method.to_uppercase().parse().unwrap(), s.url(&url)).bearer_auth(&me.access);
                req = match body {
                    Some(Body::Json(v)) => req.json(&v),
                    Some(Body::Bytes(kind, bytes)) => req.header("content-type", kind).body(bytes),
                    Some(Body::Tus(headers, bytes)) => {
                        let mut r = req.header("tus-resumable", "1.0.0");
                        for (k, v) in headers {
                            r = r.header(k, v);
                        }
                        match bytes {
                            Some(b) => r.header("content-type", "application/offset+octet-stream").body(b),
                            None => r,
                        }
                    }
                    None if !body_schema.is_null() => req.json(&sample(&doc, &body_schema)),
                    None => req,
                };
                let status = req.send().await.unwrap().status().as_u16();
                if id == "changeMyPassword" && (200..300).contains(&status) {
                    // Back to the password the next logins use.
                    let back = json!({ "current_password": NEW_PASSWORD, "new_password": crate::identity::PASSWORD });
                    let r = s.http.post(s.url("/v1/me/password")).bearer_auth(&me.access).json(&back).send().await;
                    assert!(r.unwrap().status().is_success(), "changing the password back");
                    // A password change ends the user's other sessions: the owner's among them.
                    owner = login(&s, &sl, "owner").await;
                }
                let me_now = s.http.get(s.url("/v1/me")).bearer_auth(&me.access).send().await.unwrap();
                if me_now.status() != 200 {
                    sessions[i] = None;
                }
                let room_ok = room_role.is_none_or(|need| policy::room_allows(my_room_role, room_role_action(need)));
                let channel_ok = !channel_member_needed || channel_member;
                if policy::allows(role, permission) && room_ok && channel_ok {
                    // Allowed means done: the success status the document declares for it.
                    let declared = op["responses"].as_object().unwrap().contains_key(&status.to_string());
                    let excused = NOT_DONE_HERE.iter().any(|(op_id, st, _)| *op_id == id && *st == status);
                    let done = (200..300).contains(&status) && declared;
                    if !done && !excused {
                        failures.push(format!("{id} as {}: {status}, but the policy allows it", role.as_str()));
                    }
                } else {
                    assert_eq!(status, 403, "{id} as {}: the policy refuses it", role.as_str());
                }
                checked += 1;
            }
        }
    }
    assert!(failures.is_empty(), "allowed calls that did not succeed:\n{}", failures.join("\n"));
    assert!(checked >= 150, "only {checked} checks");
    s.stop().await;
}

/// Allowed calls that cannot succeed in this harness, with the status they give and why; each
/// one's success is tested where it can be.
const NOT_DONE_HERE: &[(&str, u16, &str)] = &[
    ("whipPublish", 415, "needs an SDP offer from a WebRTC stack: media.rs publishes with aiortc and Chromium"),
    ("whepPlay", 415, "needs an SDP offer from a WebRTC stack: media.rs plays with aiortc"),
    ("muteInCall", 422, "needs someone in a call (else 422 at /user_id): media.rs mutes an aiortc publisher"),
    ("removeFromCall", 422, "needs someone in a call (else 422 at /user_id): media.rs removes an aiortc participant"),
    ("deleteMediaConnection", 404, "needs a live media connection: media.rs hangs one up"),
    ("cancelMcpCall", 404, "needs a tool call in flight: mcp.rs cancels one"),
    ("getRecording", 404, "needs a recording of a call: media.rs records one and reads it back"),
    ("stopRecording", 404, "needs a running recording: media.rs starts and stops one"),
    ("downloadRecordingFile", 404, "needs a recorded file: media.rs downloads and decodes them"),
    (
        "refreshConnection",
        403,
        "a member refreshes their own connections, made through a provider's sign-in (connections.rs); \
         the one here is the organization's",
    ),
    (
        "deleteConnection",
        403,
        "a member deletes their own connections, made through a provider's sign-in (connections.rs); \
         the one here is the organization's",
    ),
];

/// The operations that act on the test's target user beside those with `{user_id}` in their
/// path (in `prepare`).
const ON_A_USER: &[&str] = &[
    "inviteParticipant",
    "addChannelMember",
    "changeParticipantRole",
    "removeParticipant",
    "removeChannelMember",
    "reactivateUser",
];

/// The password `changeMyPassword` sets (and the test then sets back).
const NEW_PASSWORD: &str = "another long passphrase";

/// A request body other than the sample the document's schema gives.
enum Body {
    Json(Value),
    Bytes(&'static str, Vec<u8>),
    /// A tus request: its headers (beside `Tus-Resumable`) and bytes, if any.
    Tus(Vec<(&'static str, String)>, Option<Vec<u8>>),
}

/// A stored file of `token`'s user and an upload of theirs in progress: their ids.
async fn my_file_and_upload(s: &TestServer, token: &str) -> (String, String) {
    let r = s.http.post(s.url("/v1/assets?name=a.txt")).bearer_auth(token).body("hello").send().await.unwrap();
    assert_eq!(r.status(), 201, "uploading a file");
    let asset: Value = r.json().await.unwrap();
    let r = s
        .http
        .post(s.url("/v1/uploads"))
        .bearer_auth(token)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "beginning an upload");
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    (asset["id"].as_str().unwrap().to_owned(), location.rsplit('/').next().unwrap().to_owned())
}

/// Who calls what, on whom.
struct Prepare<'a> {
    id: &'a str,
    role: Role,
    org: &'a str,
    me: &'a crate::identity::Login,
    /// Unique to this call: names what it makes for the caller (a prompt template).
    fresh: &'a str,
    owner: &'a str,
    /// The user acted on, for the operations in `ON_A_USER` or with `{user_id}` in their path.
    target: Option<&'a str>,
    /// A file of the caller's own.
    asset: &'a str,
    /// The base URL of a service that answers 200 to everything.
    upstream: &'a str,
    /// The base URL of an OAuth provider's token and revocation endpoints.
    tokens: &'a str,
    /// An OpenID issuer's base URL (discovery only).
    issuer: &'a str,
    /// An MCP server's Streamable HTTP endpoint.
    mcp: &'a str,
}

/// A prompt name of this call's own.
fn prompt_name(p: &Prepare<'_>) -> String {
    format!("p-{}", p.fresh)
}

impl Prepare<'_> {
    fn target(&self) -> &str {
        self.target.unwrap_or_else(|| panic!("{} acts on a user: add it to ON_A_USER", self.id))
    }
}

/// A service on loopback answering 200 to every request; its base URL.
async fn answering_service() -> String {
    #[poem::handler]
    fn ok() -> &'static str {
        "ok"
    }
    crate::support::serve_loopback(poem::Route::new().at("/*", ok)).await
}

/// The fresh room, channel and tasks, each with the token of whoever made it.
struct Places<'a> {
    room: (&'a str, &'a str),
    channel: (&'a str, &'a str),
    tasks: (&'a [String], &'a str),
}

/// What an allowed call needs to succeed: a body the operation takes, query parameters, and
/// the state it acts on (a participant to remove, a dependency to drop, a key to revoke).
async fn prepare(s: &TestServer, p: Prepare<'_>, at: Places<'_>, mut url: String) -> (String, Option<Body>) {
    let post = |token: &str, path: String, body: Value| {
        let req = s.http.post(s.url(&path)).bearer_auth(token).json(&body);
        async move { assert!(req.send().await.unwrap().status().is_success(), "setting up {path}") }
    };
    if url.contains("{endpoint_id}") {
        // A fresh endpoint of the owner's that takes no event (its queue stays empty).
        let made: Value = crate::support::post_json(
            s,
            p.owner,
            "/v1/webhooks/endpoints",
            json!({ "url": "http://localhost:9/hook", "event_types": ["nothing.here"] }),
        )
        .await;
        let id = made["endpoint"]["id"].as_str().unwrap_or_else(|| panic!("no endpoint made: {made}"));
        // The organization's first event (its creation) names the message.
        url = url.replace("{endpoint_id}", id).replace("{msg_id}", &format!("msg_{}_1", p.org.replace('-', "")));
    }
    if url.contains("{service_id}") {
        // Every role among its callers, so that the policy alone decides who may call it; an
        // MCP server for the MCP operations.
        let callers = json!(["guest", "member", "admin", "owner"]);
        let service = if url.contains("/mcp/") {
            json!({ "name": "s", "base_url": p.mcp, "callers": callers, "mcp": {} })
        } else {
            json!({ "name": "s", "base_url": p.upstream, "callers": callers })
        };
        let made: Value = crate::support::post_json(s, p.owner, "/v1/services", service).await;
        let id = made["service"]["id"].as_str().unwrap_or_else(|| panic!("no service made: {made}"));
        url = url.replace("{service_id}", id);
    }
    if url.contains("{template_id}") || p.id == "renderPrompt" {
        // A user template of the caller's own, named after them (so the render finds one).
        let made = crate::support::post_json(
            s,
            &p.me.access,
            "/v1/prompt-templates",
            json!({ "level": "user", "name": prompt_name(&p), "sections": [{ "name": "a", "text": "hi {{ user.name }}" }] }),
        )
        .await;
        let id = made["id"].as_str().unwrap_or_else(|| panic!("no template made: {made}"));
        url = url.replace("{template_id}", id);
    }
    if url.contains("{app_id}") {
        let made = crate::support::post_json(s, p.owner, "/v1/oauth-apps", app_input()).await;
        let id = made["app"]["id"].as_str().unwrap_or_else(|| panic!("no app made: {made}"));
        url = url.replace("{app_id}", id);
    }
    if url.contains("/v1/sso/providers/{provider_id}") {
        let id = crate::sso::static_provider(s, p.owner, p.issuer).await;
        url = url.replace("{provider_id}", &id);
    }
    if url.contains("{provider_id}") {
        let id = crate::connections::client_credentials_provider(s, p.owner, p.tokens).await;
        url = url.replace("{provider_id}", &id);
    }
    if matches!(p.id, "getConnection" | "refreshConnection" | "deleteConnection") {
        // The organization's connection, made with client credentials.
        let provider = crate::connections::client_credentials_provider(s, p.owner, p.tokens).await;
        let made = crate::support::post_json(s, p.owner, "/v1/connections", json!({ "provider_id": provider })).await;
        let id = made["id"].as_str().unwrap_or_else(|| panic!("no connection made: {made}"));
        let rest = url.trim_start_matches("/v1/connections/").split_once('/').map(|(_, r)| format!("/{r}"));
        url = format!("/v1/connections/{id}{}", rest.unwrap_or_default());
    }
    let body = match p.id {
        "createOAuthProvider" => Some(json!({
            "template": "custom", "grant": "client_credentials", "token_url": format!("{}/token", p.tokens),
            "client_id": "c", "client_secret": "s",
        })),
        "updateOAuthProvider" | "updateSsoProvider" | "updateOAuthApp" => Some(json!({ "name": "renamed" })),
        "createSsoProvider" => Some(json!({ "issuer": p.issuer, "client_id": "c" })),
        "createOAuthApp" => Some(app_input()),
        "setOAuthAppsPolicy" => Some(json!({ "dynamic_registration": false })),
        "setSsoPolicy" => Some(json!({ "required": false })),
        "createConnection" => {
            let provider = crate::connections::client_credentials_provider(s, p.owner, p.tokens).await;
            Some(json!({ "provider_id": provider }))
        }
        "startConnectionAuthorization" => {
            let made = crate::support::post_json(
                s,
                p.owner,
                "/v1/oauth/providers",
                json!({
                    "template": "custom", "authorize_url": format!("{}/authorize", p.tokens),
                    "token_url": format!("{}/token", p.tokens), "client_id": "c",
                }),
            )
            .await;
            Some(json!({ "provider_id": made["id"] }))
        }
        "createService" => Some(json!({ "name": "s", "base_url": "http://localhost:9" })),
        "callMcpTool" => Some(json!({ "arguments": { "message": "hi" } })),
        "createPromptTemplate" => Some(json!({
            "level": "user", "name": format!("new-{}", prompt_name(&p)), "sections": [{ "name": "a", "text": "hi" }],
        })),
        "updatePromptTemplate" => Some(json!({ "note": "again", "sections": [{ "name": "a", "text": "hello" }] })),
        "rollbackPromptTemplate" => Some(json!({ "to_version": 1 })),
        "renderPrompt" => Some(json!({ "name": prompt_name(&p) })),
        "diffPromptTemplateVersions" => {
            url.push_str("?from=1");
            None
        }
        "testMcpServer" => Some(json!({ "base_url": p.mcp })),
        "readMcpResource" => {
            let listed = crate::support::get_json(s, p.owner, &url.replace("/read", "")).await;
            Some(json!({ "uri": listed["items"][0]["uri"] }))
        }
        "createWebhookEndpoint" => Some(json!({ "url": "http://localhost:9/hook", "event_types": ["nothing.here"] })),
        "recoverWebhookMessages" => Some(json!({ "since": outpost::ids::rfc3339(outpost::ids::now_ms() - 60_000) })),
        "search" => {
            url.push_str("?q=hello");
            None
        }
        "changeMyPassword" => {
            Some(json!({ "current_password": crate::identity::PASSWORD, "new_password": NEW_PASSWORD }))
        }
        "createApiKey" => Some(json!({ "name": "k", "scopes": [policy::permissions(p.role)[0].as_str()] })),
        "createChannel" => Some(json!({ "kind": "public", "name": slug("c") })),
        "createTask" => Some(json!({ "title": "t" })),
        "createInvitation" => Some(json!({ "email": format!("{}@example.org", slug("i")), "role": "guest" })),
        "inviteParticipant" => Some(json!({ "user_id": p.target(), "role": "member" })),
        "addChannelMember" => Some(json!({ "user_id": p.target() })),
        "applyDocumentUpdate" => return (url, Some(Body::Bytes("application/octet-stream", yjs_update()))),
        "uploadAsset" => {
            url.push_str("?name=b.txt");
            return (url, Some(Body::Bytes("text/plain", b"hello".to_vec())));
        }
        "uploadAssetForm" => {
            let form = "--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b.txt\"\r\n\
                        Content-Type: text/plain\r\n\r\nhello\r\n--B--\r\n";
            return (url, Some(Body::Bytes("multipart/form-data; boundary=B", form.as_bytes().to_vec())));
        }
        "createUpload" => return (url, Some(Body::Tus(vec![("upload-length", "5".into())], None))),
        "getUploadOffset" | "terminateUpload" => return (url, Some(Body::Tus(vec![], None))),
        "appendUpload" => {
            return (url, Some(Body::Tus(vec![("upload-offset", "0".into())], Some(b"hello".to_vec()))));
        }
        "signAssetUrl" | "getMcpPrompt" => Some(json!({})),
        "addRoomAssetVersion" => Some(json!({ "name": "scene.glb", "asset_id": p.asset })),
        "getAssetThumbnail" => {
            // A picture of the caller's own (the fixture's file is text).
            use image::ImageEncoder;
            let mut png = Vec::new();
            image::codecs::png::PngEncoder::new(&mut png)
                .write_image(&[0u8; 12], 2, 2, image::ExtendedColorType::Rgb8)
                .unwrap();
            let r = s
                .http
                .post(s.url("/v1/assets?name=p.png&content_type=image/png"))
                .bearer_auth(&p.me.access)
                .body(png)
                .send()
                .await
                .unwrap();
            let picture: Value = r.json().await.unwrap();
            url = format!("/v1/assets/{}/thumbnail", picture["id"].as_str().unwrap());
            None
        }
        "changeParticipantRole" | "removeParticipant" => {
            let (room, maker) = at.room;
            post(maker, format!("/v1/rooms/{room}/participants"), json!({ "user_id": p.target() })).await;
            None
        }
        "removeChannelMember" => {
            let (channel, maker) = at.channel;
            post(maker, format!("/v1/channels/{channel}/members"), json!({ "user_id": p.target() })).await;
            None
        }
        "removeTaskDependency" => {
            let (tasks, maker) = at.tasks;
            let path = format!("/v1/tasks/{}/dependencies/{}", tasks[0], tasks[1]);
            let r = s.http.put(s.url(&path)).bearer_auth(maker).send().await.unwrap();
            assert!(r.status().is_success(), "setting up {path}");
            None
        }
        "reactivateUser" => {
            post(p.owner, format!("/v1/users/{}/suspend", p.target()), json!({})).await;
            None
        }
        "revokeApiKey" => {
            let key: Value = crate::support::post_json(
                s,
                &p.me.access,
                "/v1/api-keys",
                json!({ "name": "k", "scopes": [policy::permissions(p.role)[0].as_str()] }),
            )
            .await;
            let key_id = key["id"].as_str().or(key["key"]["id"].as_str());
            url = url.replace("{key_id}", key_id.unwrap_or_else(|| panic!("no API key made: {key}")));
            None
        }
        _ => None,
    };
    (url, body.map(Body::Json))
}

/// An update that writes one word into a fresh document's text.
fn yjs_update() -> Vec<u8> {
    use yrs::{GetString, Text, Transact};
    let doc = yrs::Doc::new();
    let text = doc.get_or_insert_text("text");
    let mut txn = doc.transact_mut();
    text.insert(&mut txn, 0, "hello");
    let _ = text.get_string(&txn);
    txn.encode_update_v1()
}

fn room_role_action(need: RoomRole) -> policy::RoomAction {
    match need {
        RoomRole::Viewer | RoomRole::Member => policy::RoomAction::Participate,
        RoomRole::Moderator => policy::RoomAction::Moderate,
        RoomRole::Host => policy::RoomAction::Host,
    }
}

/// An OAuth app to register.
fn app_input() -> Value {
    json!({ "name": "app", "redirect_uris": ["https://app.example/callback"], "scopes": ["self.manage"] })
}

//! Journeys: each resource's life over HTTP, recorded step by step and compared with a
//! committed snapshot (`tests/it/snapshots/`), so any change to what clients see shows up in
//! review. Ids become `<id N>` numbered by first appearance (or a name given with
//! [`Journey::name`]), so who-refers-to-what stays checkable; times and secrets are redacted.
//!
//! After an intended change, `INSTA_UPDATE=always cargo nextest run journey` rewrites the
//! snapshots; review the diff before committing.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;
use reqwest::Method as M;
use serde_json::{Value, json};

use crate::identity::{Login, create_org, login, operator_invite_and_accept};
use crate::support::TestServer;

static UUID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").unwrap());
static TIME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$").unwrap());

/// Keys whose values differ on every run whatever they hold.
const SECRET_KEYS: &[&str] = &["access_token", "refresh_token", "token", "request_id"];

pub struct Journey<'a> {
    s: &'a TestServer,
    steps: Vec<Value>,
    ids: HashMap<String, String>,
    numbered: usize,
    literals: Vec<(String, String)>,
}

impl<'a> Journey<'a> {
    pub fn new(s: &'a TestServer) -> Self {
        Self { s, steps: Vec::new(), ids: HashMap::new(), numbered: 0, literals: Vec::new() }
    }

    /// Shows `id` as `<label>` in the snapshot.
    pub fn name(&mut self, id: &str, label: &str) {
        self.ids.insert(id.to_owned(), format!("<{label}>"));
    }

    /// Shows `text` (a random slug, say) as `<label>`.
    pub fn literal(&mut self, text: &str, label: &str) {
        self.literals.push((text.to_owned(), format!("<{label}>")));
    }

    /// Sends one request as `who` and records it; answers the response body.
    pub async fn step(&mut self, who: &Login, method: M, path: &str, body: Option<Value>) -> Value {
        self.step_with(who, method, path, &[], body).await
    }

    /// [`Journey::step`] with request headers (recorded too).
    pub async fn step_with(
        &mut self,
        who: &Login,
        method: M,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Value {
        let mut req = self.s.http.request(method.clone(), self.s.url(path)).bearer_auth(&who.access);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let answer: Value = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() };
        let actor = self.redact_str(&who.user_id);
        let mut step = json!({ "request": format!("{actor} {method} {path}"), "status": status });
        if !headers.is_empty() {
            step["headers"] = headers.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
        }
        if let Some(b) = body {
            step["body"] = b;
        }
        step["response"] = answer.clone();
        let step = self.redact(step);
        self.steps.push(step);
        answer
    }

    /// Posts `body` to `path` with `idempotency_key`, then sends the same request again as a
    /// client retrying after a timeout would; records both steps and answers the first body.
    pub async fn post_and_retry(&mut self, who: &Login, path: &str, idempotency_key: &str, body: Value) -> Value {
        let headers = [("Idempotency-Key", idempotency_key)];
        let first = self.step_with(who, M::POST, path, &headers, Some(body.clone())).await;
        self.step_with(who, M::POST, path, &headers, Some(body)).await;
        first
    }

    /// The recorded steps, for `insta::assert_json_snapshot!`.
    pub fn steps(&self) -> &[Value] {
        &self.steps
    }

    fn redact(&mut self, v: Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.redact_str(&s)),
            Value::Array(a) => Value::Array(a.into_iter().map(|x| self.redact(x)).collect()),
            Value::Object(o) => Value::Object(
                o.into_iter()
                    .map(|(k, x)| {
                        let x = if SECRET_KEYS.contains(&k.as_str()) && x.is_string() {
                            json!("<secret>")
                        } else {
                            self.redact(x)
                        };
                        (k, x)
                    })
                    .collect(),
            ),
            other => other,
        }
    }

    fn redact_str(&mut self, s: &str) -> String {
        if TIME.is_match(s) {
            return "<time>".into();
        }
        let mut out = s.to_owned();
        for (text, label) in &self.literals {
            out = out.replace(text, label);
        }
        let found: Vec<String> = UUID.find_iter(&out).map(|m| m.as_str().to_owned()).collect();
        for id in found {
            if !self.ids.contains_key(&id) {
                self.numbered += 1;
                self.ids.insert(id.clone(), format!("<id {}>", self.numbered));
            }
            let label = self.ids[&id].clone();
            out = out.replace(&id, &label);
        }
        out
    }
}

/// An organization with an admin `ada`, members `tia` and `max`, and a guest `gus`, each
/// named in the journey.
async fn cast(s: &TestServer, j: &mut Journey<'_>) -> (Login, Login, Login, Login) {
    let (org_id, sl) = create_org(s).await;
    j.name(&org_id, "org");
    j.literal(&sl, "org slug");
    let mut people = Vec::new();
    for (name, role) in [("ada", "admin"), ("tia", "member"), ("max", "member"), ("gus", "guest")] {
        operator_invite_and_accept(s, &org_id, &format!("{name}@example.org"), role).await;
        let l = login(s, &sl, name).await;
        j.name(&l.user_id, &format!("@{name}"));
        j.name(&l.session_id, &format!("{name}'s session"));
        people.push(l);
    }
    let mut it = people.into_iter();
    (it.next().unwrap(), it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn room_journey() {
    let s = TestServer::start().await;
    let mut j = Journey::new(&s);
    let (ada, tia, max, gus) = cast(&s, &mut j).await;

    let room = j
        .step(
            &tia,
            M::POST,
            "/v1/rooms",
            Some(json!({ "name": "Design review", "description": "Weekly", "visibility": "private", "max_participants": 3, "settings": { "video": true } })),
        )
        .await;
    let r = id(&room);
    j.step(&tia, M::GET, &format!("/v1/rooms/{r}"), None).await;
    j.step(&max, M::GET, &format!("/v1/rooms/{r}"), None).await;
    j.step(&tia, M::POST, &format!("/v1/rooms/{r}/participants"), Some(json!({ "user_id": max.user_id }))).await;
    j.step(&max, M::POST, &format!("/v1/rooms/{r}/join"), None).await;
    j.step(
        &tia,
        M::POST,
        &format!("/v1/rooms/{r}/participants"),
        Some(json!({ "user_id": gus.user_id, "role": "viewer" })),
    )
    .await;
    j.step(&gus, M::POST, &format!("/v1/rooms/{r}/join"), None).await;
    j.step(&ada, M::POST, &format!("/v1/rooms/{r}/join"), None).await;
    j.step(&tia, M::GET, &format!("/v1/rooms/{r}/participants"), None).await;
    j.step(&max, M::PATCH, &format!("/v1/rooms/{r}"), Some(json!({ "name": "Not mine" }))).await;
    j.step_with(
        &tia,
        M::PATCH,
        &format!("/v1/rooms/{r}"),
        &[("If-Match", "\"1\"")],
        Some(json!({ "name": "Design review (Q3)" })),
    )
    .await;
    j.step_with(&tia, M::PATCH, &format!("/v1/rooms/{r}"), &[("If-Match", "\"1\"")], Some(json!({ "name": "Stale" })))
        .await;
    j.step(
        &tia,
        M::PUT,
        &format!("/v1/rooms/{r}/participants/{}/role", max.user_id),
        Some(json!({ "role": "moderator" })),
    )
    .await;
    j.step(&tia, M::GET, "/v1/rooms?mine=true", None).await;
    j.step(&tia, M::DELETE, &format!("/v1/rooms/{r}/participants/{}", gus.user_id), None).await;
    j.step(&max, M::POST, &format!("/v1/rooms/{r}/leave"), None).await;
    j.step(&tia, M::POST, &format!("/v1/rooms/{r}/archive"), None).await;
    j.step(&tia, M::GET, "/v1/rooms?status=archived", None).await;
    j.step(&tia, M::POST, &format!("/v1/rooms/{r}/restore"), None).await;
    j.step(&tia, M::DELETE, &format!("/v1/rooms/{r}"), None).await;
    j.step(&tia, M::GET, &format!("/v1/rooms/{r}"), None).await;
    insta::assert_json_snapshot!(j.steps());
    s.stop().await;
}

#[tokio::test]
async fn chat_journey() {
    let s = TestServer::start().await;
    let mut j = Journey::new(&s);
    let (ada, tia, max, gus) = cast(&s, &mut j).await;

    let general = j.step(&tia, M::POST, "/v1/channels", Some(json!({ "kind": "public", "name": "general" }))).await;
    let c = id(&general);
    j.step(&max, M::POST, &format!("/v1/channels/{c}/join"), None).await;
    // The retry after a timeout: the same message, not a second one.
    let hello = j
        .post_and_retry(
            &tia,
            &format!("/v1/channels/{c}/messages"),
            "k-1",
            json!({ "text": "Hello @max", "mention_ids": [max.user_id] }),
        )
        .await;
    let m = id(&hello);
    j.step(&max, M::POST, &format!("/v1/channels/{c}/messages"), Some(json!({ "text": "Hi!", "thread_parent_id": m })))
        .await;
    j.step(&max, M::PUT, &format!("/v1/channels/{c}/messages/{m}/reactions/wave"), None).await;
    j.step(&tia, M::PATCH, &format!("/v1/channels/{c}/messages/{m}"), Some(json!({ "text": "Hello @max, welcome" })))
        .await;
    j.step(&max, M::PATCH, &format!("/v1/channels/{c}/messages/{m}"), Some(json!({ "text": "not mine" }))).await;
    j.step(&gus, M::GET, &format!("/v1/channels/{c}/messages/{m}"), None).await;
    j.step(&max, M::GET, &format!("/v1/channels/{c}/messages"), None).await;
    j.step(&max, M::GET, &format!("/v1/channels/{c}/messages?thread={m}"), None).await;
    j.step(&tia, M::GET, "/v1/channels", None).await;
    j.step(&max, M::POST, &format!("/v1/channels/{c}/read"), Some(json!({ "seq": 2 }))).await;
    j.step_with(
        &tia,
        M::PATCH,
        &format!("/v1/channels/{c}"),
        &[("If-Match", "\"1\"")],
        Some(json!({ "topic": "Anything goes" })),
    )
    .await;
    j.step(&ada, M::DELETE, &format!("/v1/channels/{c}/messages/{m}"), None).await;
    j.step(&max, M::GET, &format!("/v1/channels/{c}/messages?around=1&limit=3"), None).await;

    let private = j
        .step(
            &tia,
            M::POST,
            "/v1/channels",
            Some(json!({ "kind": "private", "name": "plans", "member_ids": [max.user_id] })),
        )
        .await;
    let p = id(&private);
    j.step(&gus, M::GET, &format!("/v1/channels/{p}"), None).await;
    j.step(&tia, M::POST, &format!("/v1/channels/{p}/members"), Some(json!({ "user_id": gus.user_id }))).await;
    j.step(&tia, M::DELETE, &format!("/v1/channels/{p}/members/{}", gus.user_id), None).await;
    j.step(&tia, M::POST, &format!("/v1/channels/{p}/archive"), None).await;
    j.step(&tia, M::POST, &format!("/v1/channels/{p}/messages"), Some(json!({ "text": "too late" }))).await;

    let dm =
        j.step(&tia, M::POST, "/v1/channels", Some(json!({ "kind": "direct", "member_ids": [max.user_id] }))).await;
    j.step(&max, M::POST, "/v1/channels", Some(json!({ "kind": "direct", "member_ids": [tia.user_id] }))).await;
    j.step(&max, M::POST, &format!("/v1/channels/{}/messages", id(&dm)), Some(json!({ "text": "psst" }))).await;
    j.step(&tia, M::GET, "/v1/channels", None).await;
    insta::assert_json_snapshot!(j.steps());
    s.stop().await;
}

#[tokio::test]
async fn task_journey() {
    let s = TestServer::start().await;
    let mut j = Journey::new(&s);
    let (ada, tia, max, gus) = cast(&s, &mut j).await;

    let spec = j
        .step(
            &tia,
            M::POST,
            "/v1/tasks",
            Some(json!({ "title": "Write spec", "priority": "high", "assignee_ids": [max.user_id], "labels": ["docs"], "due_at": "2030-01-10T00:00:00Z" })),
        )
        .await;
    let ship = j.step(&tia, M::POST, "/v1/tasks", Some(json!({ "title": "Ship it" }))).await;
    let (a, b) = (id(&spec), id(&ship));
    j.step(&tia, M::PUT, &format!("/v1/tasks/{b}/dependencies/{a}"), None).await;
    j.step(&tia, M::PUT, &format!("/v1/tasks/{a}/dependencies/{b}"), None).await;
    j.step(&tia, M::PATCH, &format!("/v1/tasks/{b}"), Some(json!({ "status": "done" }))).await;
    j.step(&gus, M::GET, &format!("/v1/tasks/{b}?include=dependencies"), None).await;
    j.step(&gus, M::GET, &format!("/v1/tasks?assignee={}&status=todo", max.user_id), None).await;

    // Comments are messages.
    let note = j
        .post_and_retry(
            &max,
            &format!("/v1/tasks/{a}/comments"),
            "c-1",
            json!({ "text": "Draft is up, @tia", "mention_ids": [tia.user_id] }),
        )
        .await;
    let n = id(&note);
    j.step(&tia, M::POST, &format!("/v1/tasks/{a}/comments"), Some(json!({ "text": "Thanks!" }))).await;
    j.step(&gus, M::POST, &format!("/v1/tasks/{a}/comments"), Some(json!({ "text": "me too" }))).await;
    j.step(&tia, M::PUT, &format!("/v1/tasks/{a}/comments/{n}/reactions/tada"), None).await;
    j.step(&max, M::PATCH, &format!("/v1/tasks/{a}/comments/{n}"), Some(json!({ "text": "Draft v2 is up, @tia" })))
        .await;
    j.step(&gus, M::GET, &format!("/v1/tasks/{a}/comments/{n}"), None).await;
    j.step(&gus, M::GET, &format!("/v1/tasks/{b}/comments/{n}"), None).await;
    j.step(&ada, M::DELETE, &format!("/v1/tasks/{a}/comments/{n}"), None).await;
    j.step(&gus, M::GET, &format!("/v1/tasks/{a}/comments"), None).await;

    j.step(&tia, M::PATCH, &format!("/v1/tasks/{a}"), Some(json!({ "status": "done", "version": 1 }))).await;
    j.step_with(&tia, M::PATCH, &format!("/v1/tasks/{a}"), &[("If-Match", "\"1\"")], Some(json!({ "status": "done" })))
        .await;
    j.step(&tia, M::PATCH, &format!("/v1/tasks/{b}"), Some(json!({ "status": "done", "force": true }))).await;
    j.step(&tia, M::DELETE, &format!("/v1/tasks/{b}/dependencies/{a}"), None).await;
    j.step(&tia, M::DELETE, &format!("/v1/tasks/{a}"), None).await;
    j.step(&gus, M::GET, &format!("/v1/tasks/{a}/comments"), None).await;
    insta::assert_json_snapshot!(j.steps());
    s.stop().await;
}

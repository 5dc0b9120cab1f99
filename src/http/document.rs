//! The API document as client developers and their generators read it.
//!
//! poem-openapi writes the document from the handlers and the wire types. This module makes it
//! say what the derive cannot, each rule read off how the server really behaves:
//!
//! - a documented field that refers to a schema is a plain `$ref` with its description beside it
//!   (generators cannot take the `allOf: [$ref, {description}]` wrapper the derive writes);
//! - ids are UUIDs and times RFC 3339 (`format: uuid`, `format: date-time`);
//! - an optional field may be `null` (`nullable`): poem-openapi sends `None` as `null`, and a
//!   request's `null` means the same as leaving the field out;
//! - request bodies refuse unknown fields (`additionalProperties: false`);
//! - unsigned numbers are not negative, page sizes have the bounds the server checks, and
//!   `If-Match` is an ETag;
//! - every answer carries `X-Request-Id`, 429 and 503 carry `Retry-After`, and an operation a
//!   user's token reaches may answer 429 (the request budgets);
//! - a create links to the operations on what it made (OpenAPI links), so SDK docs and stateful
//!   tests can chain them.
//!
//! The same paths give a 405 its `Allow` header (`allowed_methods`).

use std::collections::BTreeSet;
use std::sync::LazyLock;

use serde_json::{Map, Value, json};

use super::audit::PAGE_MAX as LOG_PAGE_MAX;
use super::search::{LIMIT_MAX as SEARCH_LIMIT_MAX, OFFSET_MAX as SEARCH_OFFSET_MAX, Q_CHARS_MAX};
use crate::auth::password::{PASSWORD_CHARS_MAX, PASSWORD_CHARS_MIN};
use crate::domain::chat::{channels, posts};
use crate::domain::paging::LIMIT_MAX;
use crate::domain::policy::Permission;
use crate::domain::{api_keys, assets, connections, docs, orgs, rooms, services, tasks, users, webhooks};

/// The document, pretty-printed with a final newline: what `openapi/outpost.json` holds and
/// `/v1/openapi.json` serves.
pub static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    let mut s = serde_json::to_string_pretty(&*EXACT).expect("a JSON value serializes");
    s.push('\n');
    s
});

/// The document as a value, made once: the text above and the route table below read it.
static EXACT: LazyLock<Value> = LazyLock::new(|| {
    let raw: Value = serde_json::from_str(&super::api_service().spec()).expect("poem-openapi writes JSON");
    exact(raw)
});

/// A pattern for comma-separated values of the enum schema `name` (empty items are skipped), as
/// the task filters take them.
fn comma_list(doc: &Value, name: &str) -> String {
    let values: Vec<&str> = doc["components"]["schemas"][name]["enum"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let one = values.join("|");
    format!("^({one})?(,({one})?)*$")
}

/// Operations on the organization's event log and audit trail, whose pages are larger.
const LOG_PAGES: &[&str] = &["listOrganizationEvents", "listOrganizationAudit", "queryAudit"];

/// Makes poem-openapi's document exact (see the module doc).
pub fn exact(mut doc: Value) -> Value {
    doc["servers"] = json!([{
        "url": "http://127.0.0.1:8080",
        "description": "The default listen address (`listen` in the configuration); use your server's base URL."
    }]);
    doc["components"]["headers"] = json!({
        "X-Request-Id": {
            "description": "The request's id: the client's own `X-Request-Id` if it sent a usable one, else a new UUIDv7. Logged with the request.",
            "schema": { "type": "string" }
        },
        "Retry-After": {
            "description": "Seconds to wait before trying again.",
            "schema": { "type": "integer", "minimum": 0 }
        }
    });
    doc["components"]["schemas"]["JsonObject"] = json!({
        "type": "object",
        "title": "JsonObject",
        "description": "A JSON object whose keys and values are the client's own.",
        "additionalProperties": {}
    });
    doc["components"]["schemas"]["Permission"] = json!({
        "type": "string",
        "title": "Permission",
        "description": "A permission an organization role holds; API keys are scoped to some of them.",
        "enum": Permission::ALL.map(Permission::as_str)
    });
    let bodies = with_nested(&doc, request_body_schemas(&doc, "application/json"));
    let forms = request_body_schemas(&doc, "multipart/form-data");
    // Request bodies that carry the version a change is based on (the alternative to If-Match).
    let versioned_schemas: BTreeSet<String> = bodies
        .iter()
        .filter(|b| doc.pointer(&format!("/components/schemas/{b}/properties/version")).is_some())
        .cloned()
        .collect();
    if let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(Value::as_object_mut) {
        for (name, schema) in schemas.iter_mut() {
            let kind = if forms.contains(name) {
                Some(BodyKind::Form)
            } else {
                bodies.contains(name).then_some(BodyKind::Json)
            };
            exact_schema(name, schema, kind);
        }
    }
    let links = links(&doc);
    let filters = [("status", comma_list(&doc, "TaskStatus")), ("priority", comma_list(&doc, "TaskPriority"))];
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else { continue };
            for (method, op) in item.iter_mut() {
                let id = op["operationId"].as_str().unwrap_or_default().to_owned();
                exact_parameters(op, &id, &filters);
                let versioned_body = op
                    .pointer("/requestBody/content")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flat_map(|c| c.values())
                    .filter_map(|m| m.pointer("/schema/$ref").and_then(Value::as_str))
                    .any(|r| versioned_schemas.contains(schema_name(r)));
                exact_responses(op, versioned_body);
                if let Some(l) = links.iter().find(|l| l.path == *path && l.method == *method) {
                    if let Some(created) = op.pointer_mut("/responses/201") {
                        created["links"] = Value::Object(l.to.clone());
                    }
                }
            }
        }
    }
    doc
}

/// Schemas named directly as a JSON request body.
fn request_body_schemas(doc: &Value, media_type: &str) -> BTreeSet<String> {
    operations(doc)
        .filter_map(|(_, _, op)| op.pointer("/requestBody/content"))
        .filter_map(Value::as_object)
        .flat_map(|content| content.iter())
        .filter(|(ct, _)| ct.starts_with(media_type))
        .filter_map(|(_, media)| media.pointer("/schema/$ref").and_then(Value::as_str))
        .map(|r| schema_name(r).to_owned())
        .collect()
}

/// `names` and every schema their fields name in turn (a body's nested objects are bodies too).
fn with_nested(doc: &Value, mut names: BTreeSet<String>) -> BTreeSet<String> {
    let mut todo: Vec<String> = names.iter().cloned().collect();
    while let Some(name) = todo.pop() {
        let mut found = Vec::new();
        refs_in(&doc["components"]["schemas"][&name], &mut found);
        for r in found {
            if names.insert(r.clone()) {
                todo.push(r);
            }
        }
    }
    names
}

fn refs_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match x.as_str() {
                    Some(r) if k == "$ref" => out.push(schema_name(r).to_owned()),
                    _ => refs_in(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs_in(x, out)),
        _ => {}
    }
}

fn schema_name(reference: &str) -> &str {
    reference.rsplit('/').next().unwrap_or(reference)
}

fn operations(doc: &Value) -> impl Iterator<Item = (&str, &str, &Value)> {
    doc["paths"].as_object().into_iter().flat_map(|paths| {
        paths.iter().flat_map(|(path, item)| {
            item.as_object()
                .into_iter()
                .flat_map(move |ops| ops.iter().map(move |(m, op)| (path.as_str(), m.as_str(), op)))
        })
    })
}

/// Unicode's White_Space, what `str::trim` and `char::is_whitespace` take, as a regex class body
/// (regex `\s` differs between languages: ECMAScript's lacks U+0085, Python's has U+001C). Less
/// U+2028 and U+2029: a TypeScript generator writes the class into a regex literal, where those
/// two end the line; text of nothing but them is the one case the schema lets through.
const WHITE_SPACE: &str = r"\t-\r \u0085\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000";

/// "Not only spaces": one character outside White_Space.
fn not_space() -> String {
    format!("[^{WHITE_SPACE}]")
}

/// What the domain checks of a request's text fields, stated where the fields are. Lengths count
/// characters, as the domain does.
fn field_rule(schema: &str, field: &str) -> Option<Value> {
    let text = |max: usize| json!({ "type": "string", "minLength": 1, "maxLength": max, "pattern": not_space() });
    let at_most = |max: usize| json!({ "maxLength": max });
    Some(match (schema, field) {
        ("CreateApiKey", "name") => text(api_keys::NAME_CHARS_MAX),
        ("NewService" | "ServiceChanges", "name") => text(services::NAME_CHARS_MAX),
        ("NewService" | "ServiceChanges", "kind") => at_most(services::NAME_CHARS_MAX),
        ("NewService" | "ServiceChanges", "description") => at_most(services::DESCRIPTION_CHARS_MAX),
        ("NewService" | "ServiceChanges", "base_url") => json!({ "maxLength": services::URL_BYTES_MAX }),
        ("NewWebhookEndpoint" | "WebhookEndpointChanges", "url") => json!({ "maxLength": webhooks::URL_BYTES_MAX }),
        ("NewWebhookEndpoint" | "WebhookEndpointChanges", "description") => at_most(webhooks::DESCRIPTION_CHARS_MAX),
        ("NewWebhookEndpoint", "rate_limit_per_s") => json!({ "minimum": 1, "maximum": webhooks::RATE_MAX }),
        ("WebhookEndpointChanges", "rate_limit_per_s") => json!({ "maximum": webhooks::RATE_MAX }),
        ("NewSignedUrl", "ttl_s") => json!({ "minimum": 1 }),
        ("NewRoomAssetVersion" | "AssetForm", "name") => json!({
            "minLength": 1,
            "maxLength": assets::NAME_CHARS_MAX,
            "pattern": format!("^[^{CONTROL}]*[^{WHITE_SPACE}{CONTROL}][^{CONTROL}]*$")
        }),
        ("NewRoomAssetVersion", "asset_id") => json!({ "format": "uuid" }),
        ("OAuthProviderInput" | "OAuthProviderPatch", "name") => text(connections::NAME_CHARS_MAX),
        ("OAuthProviderInput", "template") => {
            json!({ "enum": connections::templates().iter().map(|t| t.key.as_str()).collect::<Vec<_>>() })
        }
        ("OAuthProviderInput" | "OAuthProviderPatch", "client_id") => {
            json!({ "minLength": 1, "maxLength": connections::CLIENT_ID_BYTES_MAX })
        }
        ("AssetForm", "content_type") => json!({
            "maxLength": assets::TYPE_CHARS_MAX,
            "pattern": format!("^{t}/{t}$", t = MEDIA_TYPE_TOKEN)
        }),
        ("CreateRoom" | "UpdateRoom", "name") => text(rooms::NAME_CHARS_MAX),
        ("CreateRoom" | "UpdateRoom", "description") => at_most(rooms::DESCRIPTION_CHARS_MAX),
        ("CreateChannel" | "UpdateChannel", "name") => text(channels::NAME_CHARS_MAX),
        ("CreateChannel" | "UpdateChannel", "topic") => at_most(channels::TOPIC_CHARS_MAX),
        ("CreateOrganization" | "UpdateOrganization", "name") => text(orgs::NAME_CHARS_MAX),
        ("CreateOrganization", "slug") => json!({ "pattern": "^[a-z0-9][a-z0-9-]{0,61}[a-z0-9]$" }),
        ("NewDocument" | "RestoreVersion", "name") => text(docs::NAME_CHARS_MAX),
        ("NewDocumentVersion", "label") => text(docs::LABEL_CHARS_MAX),
        ("NewTask" | "TaskFields", "title") => text(tasks::TITLE_CHARS_MAX),
        ("NewTask" | "TaskFields", "description") => at_most(tasks::DESCRIPTION_CHARS_MAX),
        ("PostMessage" | "EditMessage" | "PostComment", "text") => text(posts::TEXT_CHARS_MAX),
        (_, "display_name") => text(users::DISPLAY_NAME_CHARS_MAX),
        ("UpdateMe", "avatar" | "time_zone" | "locale") => at_most(users::PROFILE_FIELD_CHARS_MAX),
        ("CreateInvitation" | "OperatorInvitation", "email") => json!({
            "maxLength": users::EMAIL_CHARS_MAX,
            "pattern": format!(r"^[^@{w}]+@[^{w}.][^{w}]*\.[^{w}]*[^{w}.]$", w = WHITE_SPACE)
        }),
        ("CreateRoom" | "UpdateRoom", "max_participants") => {
            json!({ "minimum": 1, "maximum": rooms::PARTICIPANTS_MAX })
        }
        ("NewTask" | "TaskFields", "labels") => {
            json!({ "maxItems": tasks::LABELS_MAX, "items": text(tasks::LABEL_CHARS_MAX) })
        }
        ("NewTask" | "TaskFields", "assignee_ids") => {
            json!({ "maxItems": tasks::ASSIGNEES_MAX, "items": { "type": "string", "format": "uuid" } })
        }
        ("NewTask" | "TaskFields", "attachment_ids") => {
            json!({ "maxItems": tasks::ATTACHMENTS_MAX, "items": { "type": "string", "format": "uuid" } })
        }
        ("PostMessage" | "PostComment", "attachment_ids") => {
            json!({ "maxItems": posts::ATTACHMENTS_MAX, "items": { "type": "string", "format": "uuid" } })
        }
        ("PostMessage" | "PostComment", "mention_ids") => {
            json!({ "maxItems": posts::MENTIONS_MAX, "items": { "type": "string", "format": "uuid" } })
        }
        ("PostMessage" | "PostComment", "idempotency_key") => {
            json!({ "minLength": 1, "maxLength": posts::IDEMPOTENCY_KEY_CHARS_MAX })
        }
        ("CreateApiKey", "scopes") => json!({ "minItems": 1, "items": { "$ref": "#/components/schemas/Permission" } }),
        ("CallMute", "source") => json!({ "enum": ["mic", "camera", "screen"] }),
        ("AcceptInvitation", "username") => json!({ "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{1,39}$" }),
        ("AcceptInvitation" | "RedeemPasswordReset", "password") | ("ChangePassword", "new_password") => {
            json!({ "minLength": PASSWORD_CHARS_MIN, "maxLength": PASSWORD_CHARS_MAX })
        }
        _ => return None,
    })
}

/// How a request body that a schema describes is sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    /// `multipart/form-data`: a part is there or not, never `null`.
    Form,
}

fn exact_schema(name: &str, schema: &mut Value, request_body: Option<BodyKind>) {
    let required: BTreeSet<String> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        for (field, prop) in props.iter_mut() {
            unwrap_all_of(prop);
            name_free_form(prop);
            formats_by_name(field, prop);
            unsigned_bounds(prop);
            if let (Some(rule), Some(p)) = (field_rule(name, field), prop.as_object_mut()) {
                p.extend(rule.as_object().into_iter().flatten().map(|(k, v)| (k.clone(), v.clone())));
            }
            // Optional fields are `Option`s; a field with a default is not, and refuses `null`.
            if !required.contains(field) && prop.get("default").is_none() && request_body != Some(BodyKind::Form) {
                nullable(prop);
            }
        }
    }
    if request_body.is_some() && schema.get("properties").is_some() {
        schema["additionalProperties"] = Value::Bool(false);
    }
}

/// A free-form JSON object (settings, metadata, preferences) refers to one named schema, so a
/// generated SDK has one `JsonObject` type instead of one made-up name per field and variant.
fn name_free_form(prop: &mut Value) {
    let free =
        prop["type"] == "object" && prop.get("properties").is_none() && prop["additionalProperties"] == json!({});
    if !free {
        return;
    }
    let mut named = Map::new();
    named.insert("$ref".into(), json!("#/components/schemas/JsonObject"));
    if let Some(d) = prop.get("description").cloned() {
        named.insert("description".into(), d);
    }
    *prop = Value::Object(named);
}

/// `{description, allOf: [{$ref}, {description}]}` → `{$ref, description}`.
fn unwrap_all_of(prop: &mut Value) {
    let Some(all_of) = prop.get("allOf").and_then(Value::as_array) else { return };
    let [first, rest @ ..] = all_of.as_slice() else { return };
    let Some(reference) = first.get("$ref").cloned() else { return };
    let only_notes = rest.iter().all(|s| s.as_object().is_some_and(|m| m.keys().all(|k| k == "description")));
    if !only_notes {
        return;
    }
    let mut plain = Map::new();
    plain.insert("$ref".into(), reference);
    if let Some(d) = prop.get("description").cloned() {
        plain.insert("description".into(), d);
    }
    *prop = Value::Object(plain);
}

/// Ids (`id`, `…_id`, `…_ids`; not a client's `request_id` nor an OAuth `client_id`) are UUIDs; `…_at` and `at` are RFC
/// 3339 times.
fn formats_by_name(name: &str, prop: &mut Value) {
    let is_id = name == "id" || (name.ends_with("_id") && name != "request_id" && name != "client_id");
    let is_time = name == "at" || name.ends_with("_at");
    match prop["type"].as_str() {
        Some("string") if prop.get("format").is_none() => {
            if is_id {
                prop["format"] = json!("uuid");
            } else if is_time {
                prop["format"] = json!("date-time");
            }
        }
        Some("array") if name.ends_with("_ids") && prop["items"]["type"] == "string" => {
            prop["items"]["format"] = json!("uuid");
        }
        _ => {}
    }
}

/// poem-openapi writes `format: uint32` without the bounds that format implies.
fn unsigned_bounds(prop: &mut Value) {
    if let Some(items) = prop.get_mut("items") {
        unsigned_bounds(items);
    }
    let max = match prop["format"].as_str() {
        Some("uint8") => u64::from(u8::MAX),
        Some("uint16") => u64::from(u16::MAX),
        Some("uint32") => u64::from(u32::MAX),
        Some("uint64") => u64::MAX,
        _ => return,
    };
    if prop.get("minimum").is_none() {
        prop["minimum"] = json!(0);
    }
    if prop.get("maximum").is_none() {
        prop["maximum"] = json!(max);
    }
}

fn nullable(prop: &mut Value) {
    if let Some(reference) = prop.get("$ref").cloned() {
        let mut wrapped = Map::new();
        wrapped.insert("oneOf".into(), json!([{ "$ref": reference }]));
        wrapped.insert("nullable".into(), Value::Bool(true));
        if let Some(d) = prop.get("description").cloned() {
            wrapped.insert("description".into(), d);
        }
        *prop = Value::Object(wrapped);
    } else if prop.is_object() {
        prop["nullable"] = Value::Bool(true);
    }
}

fn exact_parameters(op: &mut Value, operation: &str, task_filters: &[(&str, String)]) {
    let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else { return };
    for p in params {
        let name = p["name"].as_str().unwrap_or_default().to_owned();
        let place = p["in"].as_str().unwrap_or_default().to_owned();
        let mut required = false;
        let Some(schema) = p.get_mut("schema") else { continue };
        unsigned_bounds(schema);
        match (place.as_str(), name.as_str()) {
            ("path", n) if n.ends_with("_id") => schema["format"] = json!("uuid"),
            ("header", "Idempotency-Key") => {
                schema["minLength"] = json!(1);
                schema["maxLength"] = json!(posts::IDEMPOTENCY_KEY_CHARS_MAX);
            }
            // What a reaction may be (`posts::change`): 1–32 characters without spaces.
            ("path", "emoji") => {
                schema["minLength"] = json!(1);
                schema["maxLength"] = json!(posts::EMOJI_CHARS_MAX);
                schema["pattern"] = json!(format!("^{}+$", not_space()));
            }
            ("query", "q") if operation == "search" => {
                schema["minLength"] = json!(1);
                schema["maxLength"] = json!(Q_CHARS_MAX);
                schema["pattern"] = json!(not_space());
            }
            ("query", "offset") if operation == "search" => schema["maximum"] = json!(SEARCH_OFFSET_MAX),
            ("query", "assignee" | "room" | "channel") if operation == "listTasks" => schema["format"] = json!("uuid"),
            ("query", filter) if operation == "listTasks" && task_filters.iter().any(|(f, _)| *f == filter) => {
                let pattern = task_filters.iter().find(|(f, _)| *f == filter).map(|(_, p)| p.clone());
                schema["pattern"] = json!(pattern);
            }
            // What `PageRequest::parse` decodes: canonical URL-safe base64 without padding.
            ("query", "cursor") => {
                schema["pattern"] =
                    json!("^([A-Za-z0-9_-]{4})*([A-Za-z0-9_-][AQgw]|[A-Za-z0-9_-]{2}[AEIMQUYcgkosw048])?$");
            }
            ("query", "since" | "until" | "due_after" | "due_before") => schema["format"] = json!("date-time"),
            ("query", "limit") => {
                let max = if LOG_PAGES.contains(&operation) {
                    LOG_PAGE_MAX
                } else if matches!(operation, "listMessages" | "listTaskComments") {
                    posts::HISTORY_LIMIT_MAX_U32
                } else if operation == "search" {
                    SEARCH_LIMIT_MAX
                } else {
                    LIMIT_MAX
                };
                schema["minimum"] = json!(1);
                schema["maximum"] = json!(max);
            }
            // What `parse_if_match` takes: `*`, or a version as `"3"`, `W/"3"` or `3`.
            ("header", "If-Match") => schema["pattern"] = json!(r#"^(\*|(W/)?"?[0-9]{1,19}"?)$"#),
            // tus: the one version spoken (another, or none, is a 412 as the protocol says).
            ("header", "Tus-Resumable") => {
                schema["enum"] = json!([crate::http::files::TUS_VERSION]);
                required = true;
            }
            ("header", "Upload-Length") => required = true,
            ("header", "Upload-Metadata") => schema["maxLength"] = json!(crate::http::files::METADATA_BYTES_MAX),
            ("header", "Upload-Checksum") => schema["pattern"] = json!("^(sha1|sha256) [A-Za-z0-9+/]+={0,2}$"),
            ("query", "name") if operation == "uploadAsset" => {
                schema["minLength"] = json!(1);
                schema["maxLength"] = json!(assets::NAME_CHARS_MAX);
                schema["pattern"] = json!(format!("^[^{CONTROL}]*[^{WHITE_SPACE}{CONTROL}][^{CONTROL}]*$"));
            }
            ("query", "content_type") if operation == "uploadAsset" => {
                schema["maxLength"] = json!(assets::TYPE_CHARS_MAX);
                schema["pattern"] = json!(format!("^{t}/{t}$", t = MEDIA_TYPE_TOKEN));
            }
            _ => {}
        }
        if required {
            p["required"] = json!(true);
        }
    }
}

/// Unicode's control characters (`char::is_control`), as a regex class body.
const CONTROL: &str = r"\u0000-\u001f\u007f-\u009f";

/// One side of a media type (`assets::check_type`): a letter or digit, then token characters.
const MEDIA_TYPE_TOKEN: &str = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*";

/// Statuses an operation cannot answer, whatever happens: the problem types are shared by
/// operations of a kind, and some members of a kind take no body (no 415), no If-Match and no
/// version (no 412), nothing a client could get wrong beyond the path, where a malformed id is
/// a 404 (no 400), or nothing at all (no 422).
fn impossible_statuses(op: &Value, versioned_body: bool) -> Vec<&'static str> {
    let params = op["parameters"].as_array().map(Vec::as_slice).unwrap_or_default();
    let has_body = op.get("requestBody").is_some();
    let mut out = Vec::new();
    if !has_body {
        out.push("415");
    }
    if !versioned_body && !params.iter().any(|p| p["name"] == "If-Match" || p["name"] == "Tus-Resumable") {
        out.push("412");
    }
    if !has_body && params.iter().all(|p| p["in"] == "path") {
        out.push("400");
    }
    if !has_body && params.is_empty() {
        out.push("422");
    }
    out
}

fn exact_responses(op: &mut Value, versioned_body: bool) {
    let by_users = op["security"].as_array().is_some_and(|reqs| reqs.iter().any(|r| r.get("UserAuth").is_some()));
    let impossible = impossible_statuses(op, versioned_body);
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else { return };
    responses.retain(|status, _| !impossible.contains(&status.as_str()));
    let problem = responses.values().find(|r| r.pointer("/content/application~1problem+json").is_some()).cloned();
    // The edge refuses a declared Content-Length over the body limit before any operation runs.
    if let (Some(problem), false) = (&problem, responses.contains_key("413")) {
        let mut too_large = problem.clone();
        too_large["description"] = json!(super::problem::describe(413));
        responses.insert("413".into(), too_large);
        sort_statuses(responses);
    }
    // Every user request spends the user's and the organization's request budgets.
    if by_users && !responses.contains_key("429") {
        if let Some(problem) = &problem {
            let mut limited = problem.clone();
            limited["description"] =
                json!("Too Many Requests: a request budget is spent; retry after `Retry-After` seconds.");
            responses.insert("429".into(), limited);
            sort_statuses(responses);
        }
    }
    for (status, answer) in responses.iter_mut() {
        let Some(answer) = answer.as_object_mut() else { continue };
        let headers = answer.entry("headers").or_insert_with(|| json!({}));
        headers["X-Request-Id"] = json!({ "$ref": "#/components/headers/X-Request-Id" });
        if status == "429" || status == "503" {
            headers["Retry-After"] = json!({ "$ref": "#/components/headers/Retry-After" });
        }
    }
}

fn sort_statuses(responses: &mut Map<String, Value>) {
    let mut all: Vec<(String, Value)> = std::mem::take(responses).into_iter().collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    responses.extend(all);
}

/// The links of one create operation's 201 answer.
struct CreateLinks {
    path: String,
    method: String,
    to: Map<String, Value>,
}

/// For each `POST` answering 201 with an object that has an `id`: links to every operation on
/// the made thing, found under the create's own path (`/v1/rooms` → `/v1/rooms/{room_id}…`) or,
/// for a thing made inside another, under its own collection (`/v1/rooms/{room_id}/docs` →
/// `/v1/docs/{doc_id}…`). The new id fills the target's first parameter; parameters the create's
/// path shares are passed on from the request.
fn links(doc: &Value) -> Vec<CreateLinks> {
    let schemas = &doc["components"]["schemas"];
    let mut out = Vec::new();
    for (path, method, op) in operations(doc) {
        if method != "post" {
            continue;
        }
        let Some(created) = op.pointer("/responses/201/content/application~1json; charset=utf-8/schema/$ref") else {
            continue;
        };
        let made = &schemas[schema_name(created.as_str().unwrap_or_default())];
        if made.pointer("/properties/id").is_none() {
            continue;
        }
        let collection = path.rsplit('/').next().unwrap_or_default();
        let prefixes = [path.to_owned(), format!("/v1/{collection}")];
        let mut links = Map::new();
        for prefix in prefixes {
            for (target_path, target_method, target) in operations(doc) {
                let Some(rest) = target_path.strip_prefix(&format!("{prefix}/{{")) else { continue };
                let Some((param, _)) = rest.split_once('}') else { continue };
                let mut parameters = Map::new();
                let mut complete = true;
                for p in target["parameters"].as_array().into_iter().flatten().filter(|p| p["in"] == "path") {
                    let name = p["name"].as_str().unwrap_or_default();
                    if name == param {
                        parameters.insert(name.into(), json!("$response.body#/id"));
                    } else if path.contains(&format!("{{{name}}}")) {
                        parameters.insert(name.into(), json!(format!("$request.path.{name}")));
                    } else {
                        complete = false;
                    }
                }
                let id = target["operationId"].as_str().unwrap_or_default();
                if complete && !id.is_empty() && !(target_path == path && target_method == method) {
                    links.insert(
                        id.to_owned(),
                        json!({ "operationId": id, "parameters": parameters, "description": format!("{}: the one this made.", target["summary"].as_str().unwrap_or(id)) }),
                    );
                }
            }
            if !links.is_empty() {
                break;
            }
        }
        if !links.is_empty() {
            out.push(CreateLinks { path: path.to_owned(), method: method.to_owned(), to: links });
        }
    }
    out
}

/// Routes outside the API document, with their methods.
const OTHER_ROUTES: &[(&str, &str)] =
    &[("/v1/openapi.json", "GET"), ("/metrics", "GET"), ("/v1/realtime", "GET"), ("/v1/yjs/{doc_id}", "GET")];

/// Path templates (split at `/`, `None` for a parameter) and the methods each answers.
type RouteTable = Vec<(Vec<Option<String>>, Vec<String>)>;

static ROUTES: LazyLock<RouteTable> = LazyLock::new(|| {
    let doc = &*EXACT;
    let split = |p: &str| -> Vec<Option<String>> {
        p.split('/').map(|s| (!s.starts_with('{')).then(|| s.to_owned())).collect()
    };
    let mut table: RouteTable = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        let methods = item.as_object().into_iter().flat_map(|m| m.keys()).map(|m| m.to_uppercase()).collect();
        table.push((split(path), methods));
    }
    for (path, method) in OTHER_ROUTES {
        table.push((split(path), vec![(*method).to_owned()]));
    }
    table
});

/// The methods `path` answers, as an `Allow` header value; `None` for a path nothing serves.
/// Where a fixed segment and a parameter both match (`/v1/assets/form`, `/v1/assets/{id}`),
/// the router takes the fixed one, and so does this.
pub fn allowed_methods(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split('/').collect();
    let matching: Vec<&(Vec<Option<String>>, Vec<String>)> = ROUTES
        .iter()
        .filter(|(template, _)| {
            template.len() == segments.len()
                && template.iter().zip(&segments).all(|(t, s)| t.as_deref().is_none_or(|t| t == *s))
        })
        .collect();
    let fixed = |template: &[Option<String>]| template.iter().map(Option::is_some).collect::<Vec<bool>>();
    let best = matching.iter().map(|(t, _)| fixed(t)).max()?;
    let mut methods: Vec<&str> =
        matching.iter().filter(|(t, _)| fixed(t) == best).flat_map(|(_, m)| m.iter().map(String::as_str)).collect();
    if methods.is_empty() {
        return None;
    }
    methods.sort_unstable();
    methods.dedup();
    Some(methods.join(", "))
}

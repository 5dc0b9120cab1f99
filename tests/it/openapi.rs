//! The committed API document matches what the code generates, and is served.

use crate::support::TestServer;

/// Operations anyone may call: they authenticate with what they carry (a password, a refresh,
/// invitation or reset token) or publish public keys.
pub const PUBLIC: &[&str] =
    &["login", "refreshTokens", "listPublicKeys", "acceptInvitation", "redeemPasswordReset", "ssoCallback"];

/// Operations without a bearer credential that are not logins: tus discovery, downloads by a
/// signed link (the signature in the query is the credential, refused with 403), and the OAuth
/// callback (the single-use state in the query is the credential, refused with 400), the
/// start of a single sign-on with an organization's options for it, and an identity provider's
/// back-channel logout (its signed logout token is the credential, refused with 400).
pub const OPEN: &[&str] =
    &["uploadOptions", "downloadSignedAsset", "oauthCallback", "listSsoOptions", "startSso", "ssoBackchannelLogout"];

#[test]
fn committed_document_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/outpost.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let generated = outpost::http::openapi_json();
    assert!(committed == generated, "openapi/outpost.json is stale: run `cargo run -- openapi > openapi/outpost.json`");
}

#[tokio::test]
async fn document_is_served_and_every_operation_is_documented() {
    let s = TestServer::start().await;
    let doc: serde_json::Value = s.http.get(s.url("/v1/openapi.json")).send().await.unwrap().json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.contains_key("/v1/orgs"));
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            let where_ = format!("{method} {path}");
            assert!(op["operationId"].is_string(), "{where_}: operationId");
            assert!(op["tags"].as_array().is_some_and(|t| !t.is_empty()), "{where_}: tag");
            assert!(op["summary"].is_string(), "{where_}: summary");
            let id = op["operationId"].as_str().unwrap();
            if path.starts_with("/v1/") && !PUBLIC.contains(&id) && !OPEN.contains(&id) {
                assert!(op["security"].as_array().is_some_and(|s| !s.is_empty()), "{where_}: security");
                let responses = op["responses"].as_object().unwrap();
                for code in ["401", "500", "503"] {
                    assert!(responses.contains_key(code), "{where_}: documents {code}");
                }
            }
        }
    }
    let docs = s.http.get(s.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"));
    s.stop().await;
}

/// RFC 9110: a 405 names the methods the resource answers, read off the same paths as the
/// document; a path nothing serves stays a 404.
#[tokio::test]
async fn a_405_carries_allow() {
    let s = TestServer::start().await;
    for (method, path, allow) in [
        ("PUT", "/v1/rooms", "GET, POST"),
        ("POST", "/v1/rooms/01a23f92-9d69-7626-9365-cc42f4c6b382", "DELETE, GET, PATCH"),
        ("DELETE", "/health/live", "GET"),
        ("POST", "/v1/openapi.json", "GET"),
    ] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = s.http.request(m, s.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 405, "{method} {path}");
        assert_eq!(resp.headers().get("allow").and_then(|v| v.to_str().ok()), Some(allow), "{method} {path}");
        assert_eq!(resp.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("application/problem+json"));
    }
    let resp = s.http.put(s.url("/v1/nothing-here")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.headers().get("allow").is_none());
    s.stop().await;
}

/// Every status the document lists for an operation is one it can answer, by what it takes:
/// the other direction (every answer is documented) is the contract run's `status_code_conformance`.
#[test]
fn documented_statuses_are_ones_the_operation_can_answer() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/outpost.json");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let schemas = &doc["components"]["schemas"];
    let mut wrong = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap();
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let named = |place: &str| params.iter().any(|p| p["in"] == place);
            let body = op.get("requestBody").is_some();
            let body_has = |field: &str| {
                op["requestBody"]["content"].as_object().into_iter().flatten().any(|(_, m)| {
                    m["schema"]["$ref"]
                        .as_str()
                        .is_some_and(|r| schemas[r.rsplit('/').next().unwrap()]["properties"].get(field).is_some())
                })
            };
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            let by_users = op["security"].as_array().is_some_and(|s| s.iter().any(|r| r.get("UserAuth").is_some()));
            let public = PUBLIC.contains(&id);
            // The OAuth and SSO callbacks are GETs because providers redirect browsers to them,
            // and they make the connection or the session.
            let writes = method != "get" || id == "oauthCallback" || id == "ssoCallback";
            for status in op["responses"].as_object().unwrap().keys() {
                let possible = match status.as_str() {
                    "400" => body || named("query") || named("header"),
                    "401" => secured || public,
                    // A password login is refused when the organization requires SSO.
                    "403" => secured || OPEN.contains(&id) || id == "login",
                    "404" => named("path") || body || named("query") || secured,
                    "409" | "507" => writes,
                    "412" => {
                        params.iter().any(|p| p["name"] == "If-Match" || p["name"] == "Tus-Resumable")
                            || body_has("version")
                    }
                    "415" => body,
                    "422" => body || named("query") || named("header") || named("path"),
                    "429" => by_users || public,
                    _ => true,
                };
                if !possible {
                    wrong.push(format!("{method} {path} ({id}) documents {status}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "statuses the operation cannot answer:\n{}", wrong.join("\n"));
}

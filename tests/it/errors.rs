//! Every error is problem+json with the right status and a stable code.

use serde_json::json;

use crate::support::{TestServer, expect_problem};

#[tokio::test]
async fn error_shapes() {
    let s = TestServer::start().await;
    let post_raw = |body: &'static str| {
        s.http.post(s.url("/v1/orgs")).bearer_auth(&s.key).header("content-type", "application/json").body(body)
    };

    // Invalid JSON.
    expect_problem(post_raw("{\"slug\": ").send().await.unwrap(), 400, "invalid_json").await;
    expect_problem(post_raw("").send().await.unwrap(), 400, "invalid_json").await;
    // A body is an object: serde would read a struct from an array of its fields.
    expect_problem(post_raw(r#"["abc", "A"]"#).send().await.unwrap(), 400, "invalid_json").await;
    expect_problem(post_raw(" []").send().await.unwrap(), 400, "invalid_json").await;

    // Unknown field: pointer to it.
    let p = expect_problem(
        post_raw(r#"{"slug":"abc","name":"A","colour":"red"}"#).send().await.unwrap(),
        400,
        "invalid_body",
    )
    .await;
    assert_eq!(p["errors"][0]["pointer"], "/colour");
    assert_eq!(p["errors"][0]["code"], "unknown_field");

    // Wrong type: pointer to the value, also nested.
    let p = expect_problem(post_raw(r#"{"slug":"abc","name":5}"#).send().await.unwrap(), 400, "invalid_body").await;
    assert_eq!(p["errors"][0]["pointer"], "/name");
    assert_eq!(p["errors"][0]["code"], "invalid_type");
    let p = expect_problem(
        post_raw(r#"{"slug":"abc","name":"A","settings":[1]}"#).send().await.unwrap(),
        400,
        "invalid_body",
    )
    .await;
    assert_eq!(p["errors"][0]["pointer"], "/settings");

    // Missing field.
    let p = expect_problem(post_raw(r#"{"slug":"abc"}"#).send().await.unwrap(), 400, "invalid_body").await;
    assert_eq!(p["errors"][0]["pointer"], "/name");

    // Semantic validation: every bad field listed.
    let p =
        expect_problem(post_raw(r#"{"slug":"-Bad-","name":"   "}"#).send().await.unwrap(), 422, "validation_failed")
            .await;
    let pointers: Vec<&str> = p["errors"].as_array().unwrap().iter().map(|e| e["pointer"].as_str().unwrap()).collect();
    assert_eq!(pointers, ["/slug", "/name"]);

    // Not JSON at all.
    let r = s
        .http
        .post(s.url("/v1/orgs"))
        .bearer_auth(&s.key)
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    expect_problem(r, 415, "unsupported_media_type").await;

    // Too large, with and without a declared length.
    let big = format!(r#"{{"slug":"abc","name":"{}"}}"#, "x".repeat(2 << 20));
    let r = s
        .http
        .post(s.url("/v1/orgs"))
        .bearer_auth(&s.key)
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    expect_problem(r, 413, "payload_too_large").await;
    let stream = futures_util::stream::iter(
        big.into_bytes().chunks(64 * 1024).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>(),
    );
    let r = s
        .http
        .post(s.url("/v1/orgs"))
        .bearer_auth(&s.key)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    expect_problem(r, 413, "payload_too_large").await;

    // Unknown route, wrong method.
    expect_problem(s.get("/v1/nothing-here").send().await.unwrap(), 404, "not_found").await;
    expect_problem(s.http.get(s.url("/nope")).send().await.unwrap(), 404, "not_found").await;
    expect_problem(s.http.put(s.url("/v1/orgs")).bearer_auth(&s.key).send().await.unwrap(), 405, "method_not_allowed")
        .await;
    // Methods of a client's own invention are answered, and counted under one label: what
    // clients send cannot grow the metrics without bound.
    for (i, invented) in ["BREW", "WHEN", "PROPFIND"].iter().enumerate() {
        let method = reqwest::Method::from_bytes(invented.as_bytes()).unwrap();
        let r = s.http.request(method, s.url(&format!("/v1/nothing-{i}"))).send().await.unwrap();
        assert!(r.status().is_client_error(), "{invented}: {}", r.status());
    }
    let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("method=\"other\""), "{metrics}");
    assert!(!metrics.contains("BREW") && !metrics.contains("PROPFIND"), "{metrics}");

    // Missing, malformed and unknown operator keys.
    let r = s.http.get(s.url("/v1/orgs")).send().await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    expect_problem(r, 401, "unauthenticated").await;
    let r = s.http.get(s.url("/v1/orgs")).bearer_auth("garbage").send().await.unwrap();
    expect_problem(r, 401, "invalid_credentials").await;
    let forged = format!("{}X", &s.key[..s.key.len() - 1]);
    let r = s.http.get(s.url("/v1/orgs")).bearer_auth(forged).send().await.unwrap();
    expect_problem(r, 401, "invalid_credentials").await;
    let r = s.http.post(s.url("/v1/orgs")).json(&json!({"slug":"abc","name":"A"})).send().await.unwrap();
    expect_problem(r, 401, "unauthenticated").await;

    // Bad parameters and ids.
    let r = s.get("/v1/orgs?limit=lots").send().await.unwrap();
    let p = expect_problem(r, 400, "invalid_parameter").await;
    assert_eq!(p["errors"][0]["pointer"], "?limit");
    expect_problem(s.get("/v1/orgs/not-a-uuid").send().await.unwrap(), 404, "not_found").await;
    expect_problem(s.get(&format!("/v1/orgs/{}", outpost::ids::Id::new())).send().await.unwrap(), 404, "not_found")
        .await;

    // Every answer carries a request id, generated when the client sent none.
    let r = s.get("/v1/nothing-here").send().await.unwrap();
    assert!(r.headers()["x-request-id"].to_str().unwrap().len() >= 32);
    s.stop().await;
}

#[tokio::test]
async fn security_headers_and_cors() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::config_for(dir.path());
    config.http.cors_allowed_origins = vec!["https://app.example.org".into()];
    let s = TestServer::start_with(config).await;
    let r = s.get("/v1/orgs").send().await.unwrap();
    for (h, v) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(r.headers()[h], v, "{h}");
    }
    assert!(r.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    let preflight = |origin: &'static str| {
        s.http
            .request(reqwest::Method::OPTIONS, s.url("/v1/me"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let ok = preflight("https://app.example.org").await.unwrap();
    assert!(ok.status().is_success());
    assert_eq!(ok.headers()["access-control-allow-origin"], "https://app.example.org");
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    assert_eq!(other.status(), 403);
    // A simple cross-origin request from an allowed origin can read the answer.
    let r = s.get("/v1/orgs").header("origin", "https://app.example.org").send().await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://app.example.org");
    s.stop().await;
}

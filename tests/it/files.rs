//! Files: a stock tus client resuming after both it and the server were killed, the tus
//! protocol's edges, downloads as curl sees them, signed links, limits and quotas, dedup.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::identity::{create_org, login, operator_invite_and_accept};
use crate::support::{ChildServer, TestServer, config_for, expect_problem, get_json, peer_python};

const TUS: (&str, &str) = ("tus-resumable", "1.0.0");

/// An organization with one member, logged in: (org id, access token).
async fn member(s: &TestServer) -> (String, String) {
    let (org, _, token) = member_and_slug(s).await;
    (org, token)
}

/// As `member`, with the organization's slug: (org id, slug, access token).
async fn member_and_slug(s: &TestServer) -> (String, String, String) {
    let (org, sl) = create_org(s).await;
    operator_invite_and_accept(s, &org, "mia@example.org", "member").await;
    let token = login(s, &sl, "mia").await.access;
    (org, sl, token)
}

/// Bytes that do not repeat in any way a compressor or a dedup could exploit.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    outpost::blobs::Sha256::of(bytes).hex()
}

/// Uploads `bytes` in one request as `name`; the asset.
async fn put_file(s: &TestServer, token: &str, name: &str, bytes: Vec<u8>) -> reqwest::Response {
    s.http.post(s.url(&format!("/v1/assets?name={name}"))).bearer_auth(token).body(bytes).send().await.unwrap()
}

/// Holds `org` to files of 6,000 bytes at most and 10,000 in all.
async fn limit_files(s: &TestServer, org: &str) {
    let r = s
        .http
        .patch(s.url(&format!("/v1/orgs/{org}")))
        .bearer_auth(&s.key)
        .json(&json!({ "settings": { "files_quota_bytes": 10_000, "files_max_bytes": 6_000 } }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// Begins a tus upload of `length` bytes (creation without bytes).
async fn begin_upload(s: &TestServer, token: &str, length: &str) -> reqwest::Response {
    let req = s.http.post(s.url("/v1/uploads")).bearer_auth(token).header(TUS.0, TUS.1);
    req.header("upload-length", length).send().await.unwrap()
}

/// Runs the tus peer with `args`; its JSON line.
async fn tus_peer(args: &[&str]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/tus_upload.py");
    let out = tokio::process::Command::new(peer_python()).arg(script).args(args).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(text.lines().last().unwrap_or_default()).unwrap()
}

/// tuspy uploads a file in 1 MiB chunks and is killed after 10 MiB; the server is SIGKILLed
/// too. Both start again: the client asks where the upload is, goes on from exactly what was
/// acknowledged (with checksums now), and the stored file is the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_tus_client_resumes_after_it_and_the_server_were_killed() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config_for(dir.path())).await;
    let (_, token) = member(&s).await;
    s.stop().await;
    let file = dir.path().join("big.bin");
    let bytes = noise(24 << 20, 1);
    std::fs::write(&file, &bytes).unwrap();
    let file = file.to_str().unwrap();

    let server = ChildServer::start(dir.path());
    let first = tus_peer(&[&server.base, &token, file, "1048576", "--stop-after", "10485760"]).await;
    let url = first["url"].as_str().unwrap().to_owned();
    let acked = first["offset"].as_u64().unwrap();
    assert!(acked >= 10 << 20, "{first}");

    let old_base = server.base.clone();
    server.kill9();

    // The same upload on the restarted server (a new port here; the same path).
    let server = ChildServer::start(dir.path());
    let url = url.replace(&old_base, &server.base);
    let second = tus_peer(&[&server.base, &token, file, "4194304", "--resume", &url, "--checksum"]).await;
    assert_eq!(second["started"].as_u64(), Some(acked), "resumed from what was acknowledged: {second}");
    assert_eq!(second["offset"].as_u64(), Some(bytes.len() as u64), "{second}");

    let id = url.rsplit('/').next().unwrap();
    let http = reqwest::Client::new();
    let asset: Value = http
        .get(format!("{}/v1/assets/{id}", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(asset["sha256"], sha256_hex(&bytes), "{asset}");
    assert_eq!(asset["name"], "big.bin");
    assert_eq!(asset["size"], bytes.len());
    let got = http.get(format!("{}/v1/assets/{id}/content", server.base)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(sha256_hex(&got.bytes().await.unwrap()), sha256_hex(&bytes));
    // The upload's staging is gone; the bytes are one blob.
    assert_eq!(count_files(&dir.path().join("uploads")), 0);
    assert_eq!(count_files(&dir.path().join("blobs")), 1);
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.map(|e| e.unwrap().path()).map(|p| if p.is_dir() { count_files(&p) } else { 1 }).sum()
}

/// What the tus protocol says of the edges: discovery, versions, offsets, checksums, body
/// types, owners, termination, creation with the bytes.
#[tokio::test]
async fn the_tus_protocol_edges_answer_as_the_protocol_says() {
    let s = TestServer::start().await;
    let (org, sl, token) = member_and_slug(&s).await;
    operator_invite_and_accept(&s, &org, "otto@example.org", "member").await;
    let other = login(&s, &sl, "otto").await.access;
    let r = s.http.request(reqwest::Method::OPTIONS, s.url("/v1/uploads")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["tus-resumable"], "1.0.0");
    assert_eq!(r.headers()["tus-version"], "1.0.0");
    let ext = r.headers()["tus-extension"].to_str().unwrap().to_owned();
    for e in ["creation", "creation-with-upload", "termination", "checksum", "expiration"] {
        assert!(ext.split(',').any(|x| x == e), "{ext}");
    }
    assert!(r.headers()["tus-checksum-algorithm"].to_str().unwrap().contains("sha1"));

    let create = |len: &str| {
        s.http.post(s.url("/v1/uploads")).bearer_auth(&token).header(TUS.0, TUS.1).header("upload-length", len)
    };
    // No Tus-Resumable: 412.
    let r = s.http.post(s.url("/v1/uploads")).bearer_auth(&token).header("upload-length", "5").send().await.unwrap();
    expect_problem(r, 412, "tus_version_unsupported").await;
    // Metadata that is not base64: 400.
    let r = create("5").header("upload-metadata", "filename !!!").send().await.unwrap();
    expect_problem(r, 400, "invalid_upload_metadata").await;

    let r =
        create("10").header("upload-metadata", "filename aGVsbG8udHh0,filetype dGV4dC9wbGFpbg==").send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["upload-offset"], "0");
    assert!(r.headers().contains_key("upload-expires"));
    let url = s.url(r.headers()["location"].to_str().unwrap());
    let patch = |offset: &str, body: &'static [u8]| {
        s.http
            .patch(&url)
            .bearer_auth(&token)
            .header(TUS.0, TUS.1)
            .header("upload-offset", offset)
            .header("content-type", "application/offset+octet-stream")
            .body(body)
    };
    let offset = || async {
        let r = s.http.head(&url).bearer_auth(&token).header(TUS.0, TUS.1).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["cache-control"], "no-store");
        r.headers()["upload-offset"].to_str().unwrap().parse::<u64>().unwrap()
    };
    let r = patch("0", b"hello").send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["upload-offset"], "5");
    // Not where the upload is: 409, nothing taken.
    expect_problem(patch("3", b"xx").send().await.unwrap(), 409, "offset_mismatch").await;
    // Bytes that do not match their checksum: 460, dropped.
    let bad =
        patch("5", b"world").header("upload-checksum", format!("sha256 {}", b64(&[0u8; 32]))).send().await.unwrap();
    expect_problem(bad, 460, "checksum_mismatch").await;
    assert_eq!(offset().await, 5);
    // Not the offset stream type: 415.
    let r = s
        .http
        .patch(&url)
        .bearer_auth(&token)
        .header(TUS.0, TUS.1)
        .header("upload-offset", "5")
        .header("content-type", "text/plain")
        .body("world")
        .send()
        .await
        .unwrap();
    expect_problem(r, 415, "unsupported_media_type").await;
    // Someone else's upload is not there for them.
    let r = s.http.head(&url).bearer_auth(&other).header(TUS.0, TUS.1).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // The right checksum (sha1, which tus requires, as tuspy sends it) completes it.
    let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, b"world");
    let r =
        patch("5", b"world").header("upload-checksum", format!("sha1 {}", b64(sha1.as_ref()))).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(offset().await, 10);
    let id = url.rsplit('/').next().unwrap();
    let a = get_json(&s, &token, &format!("/v1/assets/{id}")).await;
    assert_eq!(a["name"], "hello.txt");
    assert_eq!(a["content_type"], "text/plain");
    assert_eq!(a["sha256"], sha256_hex(b"helloworld"));
    // Past the declared length: 413, the bytes within kept.
    let r = create("3").send().await.unwrap();
    let url2 = s.url(r.headers()["location"].to_str().unwrap());
    let r = s
        .http
        .patch(&url2)
        .bearer_auth(&token)
        .header(TUS.0, TUS.1)
        .header("upload-offset", "0")
        .header("content-type", "application/offset+octet-stream")
        .body("abcdef")
        .send()
        .await
        .unwrap();
    expect_problem(r, 413, "upload_too_long").await;
    // Creation with the whole upload in it: stored at once.
    let r = create("4").header("content-type", "application/offset+octet-stream").body("data").send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["upload-offset"], "4");
    let id3 = r.headers()["location"].to_str().unwrap().rsplit('/').next().unwrap().to_owned();
    assert_eq!(get_json(&s, &token, &format!("/v1/assets/{id3}")).await["size"], 4);
    // Terminated: gone.
    let r = create("8").send().await.unwrap();
    let url4 = s.url(r.headers()["location"].to_str().unwrap());
    let r = s.http.delete(&url4).bearer_auth(&token).header(TUS.0, TUS.1).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = s.http.head(&url4).bearer_auth(&token).header(TUS.0, TUS.1).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // The files list shows the caller's files, newest first.
    let mine = get_json(&s, &token, "/v1/assets").await;
    let ids: Vec<&str> = mine["items"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [id3.as_str(), id]);
    assert_eq!(get_json(&s, &other, "/v1/assets").await["items"], json!([]));
    s.stop().await;
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Runs curl with `args` (loopback only); (status, headers lowercased, body).
async fn curl(args: &[&str]) -> (u16, String, Vec<u8>) {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-D", "/dev/stderr", "--noproxy", "*"])
        .args(args)
        .output()
        .await
        .expect("curl");
    let headers = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
    let status = headers.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, headers, out.stdout)
}

/// A browser's form (here curl's `-F`) uploads a file in one request: named and typed by its
/// part or by the form's other parts, held to the size limit and the quota as it arrives, and
/// nothing kept of a form that fails.
#[tokio::test]
async fn a_form_uploads_a_file_in_one_request() {
    let s = TestServer::start().await;
    let (org, token) = member(&s).await;
    limit_files(&s, &org).await;
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.pdf");
    let bytes = noise(5_000, 21);
    std::fs::write(&report, &bytes).unwrap();
    let big = dir.path().join("big.bin");
    std::fs::write(&big, noise(7_000, 22)).unwrap();
    let url = s.url("/v1/assets/form");
    let auth = format!("Authorization: Bearer {token}");
    let file = |p: &std::path::Path, ty: &str| format!("file=@{};type={ty}", p.display());
    // An upload held open keeps the organization's reservations counting through the forms.
    let r = begin_upload(&s, &token, "100").await;
    assert_eq!(r.status(), 201);

    // Over the file size limit: refused as it arrives, nothing kept.
    let big_form = file(&big, "application/octet-stream");
    let (status, _, body) = curl(&["-H", &auth, "-F", &big_form, &url]).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["code"], "file_too_large");

    let (status, h, body) = curl(&["-H", &auth, "-F", &file(&report, "application/pdf"), &url]).await;
    assert_eq!(status, 201, "{h}{}", String::from_utf8_lossy(&body));
    let a: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((a["name"].as_str(), a["content_type"].as_str()), (Some("report.pdf"), Some("application/pdf")));
    assert_eq!(a["size"], 5_000);
    assert_eq!(a["sha256"], sha256_hex(&bytes).as_str());
    let got = s.http.get(s.url(a["content_url"].as_str().unwrap())).bearer_auth(&token).send().await.unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), bytes.as_slice());

    // The form's fields, before or after the file, name and type it over the part's own.
    let notes = dir.path().join("notes.pdf");
    std::fs::write(&notes, noise(1_000, 23)).unwrap();
    let (status, _, body) = curl(&[
        "-H",
        &auth,
        "-F",
        "name=notes for Ann.txt",
        "-F",
        &file(&notes, "application/pdf"),
        "-F",
        "content_type=text/plain",
        &url,
    ])
    .await;
    assert_eq!(status, 201);
    let b: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((b["name"].as_str(), b["content_type"].as_str()), (Some("notes for Ann.txt"), Some("text/plain")));

    // Forms that cannot be taken, each with its code; none leaves anything behind.
    let after = format!("file=@{}", notes.display());
    // A name that is not UTF-8 (curl's `<` sends a file's bytes as the part's text).
    let garbled = dir.path().join("garbled-name");
    std::fs::write(&garbled, [0xf2, 0xf2, b'x', 0xff]).unwrap();
    let garbled = format!("name=<{}", garbled.display());
    let cases: [(Vec<&str>, u16, &str); 5] = [
        (vec!["-F", after.as_str(), "-F", after.as_str()], 400, "invalid_form"),
        (vec!["-F", garbled.as_str(), "-F", after.as_str()], 400, "invalid_form"),
        (vec!["-F", "name=nothing.txt"], 422, "validation_failed"),
        (vec!["-F", "colour=blue", "-F", after.as_str()], 400, "invalid_form"),
        (vec!["-H", "Content-Type: text/plain", "--data-binary", "hello"], 415, "unsupported_media_type"),
    ];
    for (args, want_status, want_code) in &cases {
        let mut all = vec!["-H", auth.as_str()];
        all.extend(args);
        all.push(&url);
        let (status, _, body) = curl(&all).await;
        let p: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((status, p["code"].as_str().unwrap()), (*want_status, *want_code), "{args:?}: {p}");
    }
    // The form's path is its own, not a file's id.
    let r = s.http.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["allow"].to_str().unwrap()), (405, "POST"));
    // 6,000 of 10,000 bytes stored and 100 held: 3,800 more fit only if every form gave back
    // all it held beyond its file.
    let mine = get_json(&s, &token, "/v1/assets").await;
    assert_eq!(mine["items"].as_array().unwrap().len(), 2, "{mine}");
    assert_eq!(put_file(&s, &token, "more", noise(3_800, 24)).await.status(), 201);
    s.stop().await;
}

/// Ranges, validators and HEAD, as curl sends them.
#[tokio::test]
async fn downloads_answer_ranges_and_validators_as_curl_sees_them() {
    let s = TestServer::start().await;
    let (_, token) = member(&s).await;
    let bytes = noise(100_000, 2);
    let r = put_file(&s, &token, "data.bin", bytes.clone()).await;
    assert_eq!(r.status(), 201);
    let a: Value = r.json().await.unwrap();
    let url = s.url(a["content_url"].as_str().unwrap());
    let auth = format!("Authorization: Bearer {token}");
    let etag = format!("\"{}\"", sha256_hex(&bytes));

    let (status, h, body) = curl(&["-H", &auth, &url]).await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(body, bytes);
    assert!(h.contains(&format!("etag: {etag}")), "{h}");
    assert!(h.contains("accept-ranges: bytes"), "{h}");
    assert!(h.contains("content-disposition: attachment; filename=\"data.bin\""), "{h}");

    let (status, h, body) = curl(&["-H", &auth, "-r", "10-19", &url]).await;
    assert_eq!(status, 206, "{h}");
    assert!(h.contains("content-range: bytes 10-19/100000"), "{h}");
    assert_eq!(body, &bytes[10..20]);
    let (status, _, body) = curl(&["-H", &auth, "-r", "-5", &url]).await;
    assert_eq!((status, body.as_slice()), (206, &bytes[99_995..]));

    let (status, h, body) = curl(&["-H", &auth, "-H", &format!("If-None-Match: {etag}"), &url]).await;
    assert_eq!(status, 304, "{h}");
    assert!(body.is_empty());
    // If-Range with the current ETag: the range; with another: the whole file.
    let (status, _, _) = curl(&["-H", &auth, "-H", &format!("If-Range: {etag}"), "-r", "0-0", &url]).await;
    assert_eq!(status, 206);
    let (status, _, body) = curl(&["-H", &auth, "-H", "If-Range: \"stale\"", "-r", "0-0", &url]).await;
    assert_eq!((status, body.len()), (200, bytes.len()));
    // Past the end: 416 with the size.
    let (status, h, _) = curl(&["-H", &auth, "-r", "200000-", &url]).await;
    assert_eq!(status, 416, "{h}");
    assert!(h.contains("content-range: bytes */100000"), "{h}");
    // HEAD: the headers, the length, no body.
    let (status, h, body) = curl(&["-H", &auth, "-I", &url]).await;
    assert_eq!(status, 200, "{h}");
    assert!(h.contains("content-length: 100000"), "{h}");
    assert!(body.is_empty() || String::from_utf8_lossy(&body).to_ascii_lowercase().contains("content-length"));
    // Without the token: 401.
    let (status, _, _) = curl(&[&url]).await;
    assert_eq!(status, 401);

    // An image whose bytes are not an image comes as an attachment of no particular type; a
    // real one (PNG signature) inline.
    let r = s
        .http
        .post(s.url("/v1/assets?name=x.png&content_type=image/png"))
        .bearer_auth(&token)
        .body("<svg onload=alert(1)>")
        .send()
        .await
        .unwrap();
    let fake: Value = r.json().await.unwrap();
    let r = s.http.get(s.url(fake["content_url"].as_str().unwrap())).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert!(r.headers()["content-disposition"].to_str().unwrap().starts_with("attachment"));
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&[0; 32]);
    let r = s
        .http
        .post(s.url("/v1/assets?name=y.png&content_type=image/png"))
        .bearer_auth(&token)
        .body(png)
        .send()
        .await
        .unwrap();
    let real: Value = r.json().await.unwrap();
    let r = s.http.get(s.url(real["content_url"].as_str().unwrap())).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "image/png");
    assert!(r.headers()["content-disposition"].to_str().unwrap().starts_with("inline"));
    s.stop().await;
}

/// A signed link downloads without credentials until it expires, and only the file and the
/// organization it was made for.
#[tokio::test]
async fn signed_links_expire_and_name_one_file_of_one_organization() {
    let s = TestServer::start().await;
    let (org, token) = member(&s).await;
    let (org2, token2) = member(&s).await;
    let mut ids = Vec::new();
    for (t, body) in [(&token, "a"), (&token, "b"), (&token2, "c")] {
        let a: Value = put_file(&s, t, "f.txt", body.as_bytes().to_vec()).await.json().await.unwrap();
        ids.push(a["id"].as_str().unwrap().to_owned());
    }
    let sign = |id: &str, ttl: u64| {
        s.http
            .post(s.url(&format!("/v1/assets/{id}/signed-url")))
            .bearer_auth(&token)
            .json(&json!({ "ttl_s": ttl }))
            .send()
    };
    let link: Value = sign(&ids[0], 60).await.unwrap().json().await.unwrap();
    let url = link["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&format!("/v1/download/{org}/{}", ids[0])), "{url}");
    let r = s.http.get(s.url(&url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["cache-control"].to_str().unwrap().starts_with("private, max-age="));
    assert_eq!(r.text().await.unwrap(), "a");
    // The same signature for another file of the organization, or the same file id under
    // another organization: refused.
    let other_file = url.replace(&ids[0], &ids[1]);
    expect_problem(s.http.get(s.url(&other_file)).send().await.unwrap(), 403, "invalid_signature").await;
    let other_org = url.replace(&org, &org2);
    expect_problem(s.http.get(s.url(&other_org)).send().await.unwrap(), 403, "invalid_signature").await;
    let other_both = url.replace(&org, &org2).replace(&ids[0], &ids[2]);
    expect_problem(s.http.get(s.url(&other_both)).send().await.unwrap(), 403, "invalid_signature").await;
    // A later expiry is a different text: refused.
    let (head, _) = url.split_once("expires=").unwrap();
    let stretched = format!("{head}expires=99999999999&{}", url.split('&').nth(1).unwrap());
    expect_problem(s.http.get(s.url(&stretched)).send().await.unwrap(), 403, "invalid_signature").await;
    // Someone else's file cannot be signed by the caller.
    assert_eq!(sign(&ids[2], 60).await.unwrap().status(), 404);
    // A link lives as long as asked.
    let short: Value = sign(&ids[1], 1).await.unwrap().json().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = s.http.get(s.url(short["url"].as_str().unwrap())).send().await.unwrap();
    expect_problem(r, 403, "link_expired").await;
    // A deleted file is gone from its links too.
    let r = s.http.delete(s.url(&format!("/v1/assets/{}", ids[0]))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(s.http.get(s.url(&url)).send().await.unwrap().status(), 404);
    s.stop().await;
}

/// The organization's limits refuse before bytes are written, and what was stored stays.
#[tokio::test]
async fn size_limits_and_quotas_refuse_before_writing_and_lose_nothing() {
    let s = TestServer::start().await;
    let (org, token) = member(&s).await;
    limit_files(&s, &org).await;
    let a = noise(4_000, 3);
    let b = noise(5_000, 4);
    assert_eq!(put_file(&s, &token, "a", a.clone()).await.status(), 201);
    // Over the file size limit: 413 whichever way it comes.
    expect_problem(put_file(&s, &token, "big", noise(7_000, 5)).await, 413, "file_too_large").await;
    let r = begin_upload(&s, &token, "7000").await;
    expect_problem(r, 413, "file_too_large").await;
    let b_asset: Value = put_file(&s, &token, "b", b.clone()).await.json().await.unwrap();
    // 9,000 of 10,000 used: 2,000 more is refused, before any byte is written.
    expect_problem(put_file(&s, &token, "c", noise(2_000, 6)).await, 507, "storage_quota_exceeded").await;
    // An upload in progress holds its length: a second one does not fit beside it.
    let r = begin_upload(&s, &token, "1000").await;
    assert_eq!(r.status(), 201);
    let held = s.url(r.headers()["location"].to_str().unwrap());
    expect_problem(put_file(&s, &token, "d", noise(500, 7)).await, 507, "storage_quota_exceeded").await;
    let r = s.http.delete(&held).bearer_auth(&token).header(TUS.0, TUS.1).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(put_file(&s, &token, "d", noise(500, 7)).await.status(), 201);
    // Everything acknowledged is there, byte for byte.
    let mine = get_json(&s, &token, "/v1/assets").await;
    assert_eq!(mine["items"].as_array().unwrap().len(), 3, "{mine}");
    let got = s
        .http
        .get(s.url(b_asset["content_url"].as_str().unwrap()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), b.as_slice());
    // Deleting frees the quota.
    let r = s.http.delete(s.url(&format!("/v1/assets/{}", b_asset["id"].as_str().unwrap()))).bearer_auth(&token);
    assert_eq!(r.send().await.unwrap().status(), 204);
    assert_eq!(put_file(&s, &token, "e", noise(5_000, 8)).await.status(), 201);
    s.stop().await;
}

/// The same content twice in one organization is one blob; in another organization, another.
#[tokio::test]
async fn identical_files_are_stored_once_per_organization() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config_for(dir.path())).await;
    let (_, t1) = member(&s).await;
    let (_, t2) = member(&s).await;
    let bytes = noise(50_000, 9);
    for t in [&t1, &t1, &t2] {
        assert_eq!(put_file(&s, t, "same.bin", bytes.clone()).await.status(), 201);
    }
    assert_eq!(get_json(&s, &t1, "/v1/assets").await["items"].as_array().unwrap().len(), 2);
    assert_eq!(count_files(&dir.path().join("blobs")), 2);
    s.stop().await;
}

/// A backup taken while the server runs carries the files' bytes; restore writes them back,
/// each checked against its digest.
#[tokio::test]
async fn backup_and_restore_bring_the_files_back() {
    let s = TestServer::start().await;
    let (_, token) = member(&s).await;
    let files = [noise(300_000, 10), noise(10, 11)];
    for (i, f) in files.iter().enumerate() {
        assert_eq!(put_file(&s, &token, &format!("f{i}"), f.clone()).await.status(), 201);
    }
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("outpost.backup");
    let (config, f) = (s.config.clone(), file.clone());
    tokio::task::spawn_blocking(move || outpost::commands::backup(&config, &f)).await.unwrap().unwrap();
    let _keep = s.stop_keep_dir().await;

    let fresh = out.path().join("restored");
    let (code, text, err) = crate::support::cli(
        &["restore", "--from", file.to_str().unwrap(), "--data", fresh.to_str().unwrap()],
        &[],
        None,
    );
    assert_eq!(code, 0, "{text}{err}");
    let mut restored: Vec<String> = Vec::new();
    collect_hashes(&fresh.join("blobs"), &mut restored);
    let mut want: Vec<String> = files.iter().map(|f| sha256_hex(f)).collect();
    restored.sort();
    want.sort();
    assert_eq!(restored, want);
}

/// The SHA-256 of every file under `dir`.
fn collect_hashes(dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect_hashes(&p, out);
        } else {
            out.push(sha256_hex(&std::fs::read(&p).unwrap()));
        }
    }
}

/// `outpost fsck` passes a healthy store and names a file with one flipped byte.
#[tokio::test]
async fn fsck_finds_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config_for(dir.path())).await;
    let (_, token) = member(&s).await;
    let bytes = noise(70_000, 12);
    assert_eq!(put_file(&s, &token, "a", bytes.clone()).await.status(), 201);
    assert_eq!(put_file(&s, &token, "b", noise(100, 13)).await.status(), 201);
    s.stop().await;
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = crate::support::cli(&["fsck", "--data", d], &[], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 files (70100 bytes) checked"), "{out}");

    let sha = sha256_hex(&bytes);
    let mut path = None;
    let mut stack = vec![dir.path().join("blobs")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap().to_str() == Some(sha.as_str()) {
                path = Some(p);
            }
        }
    }
    let path = path.expect("the blob");
    let mut damaged = std::fs::read(&path).unwrap();
    damaged[12_345] ^= 0x01;
    std::fs::write(&path, damaged).unwrap();
    let (code, out, _) = crate::support::cli(&["fsck", "--data", d], &[], None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("DAMAGED: organization") && out.contains(&sha), "{out}");
}

/// Deleted files' bytes are collected after the grace period, unless another file still has
/// the same content; the same content uploaded again afterwards is stored anew.
#[tokio::test]
async fn the_collector_removes_bytes_no_record_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.files.gc_grace_s = 0;
    config.files.gc_interval_s = 1;
    let s = TestServer::start_with(config).await;
    let (_, token) = member(&s).await;
    let (lone, shared) = (noise(5_000, 14), noise(6_000, 15));
    let id = |v: Value| v["id"].as_str().unwrap().to_owned();
    let a = id(put_file(&s, &token, "lone", lone.clone()).await.json().await.unwrap());
    let b1 = id(put_file(&s, &token, "shared1", shared.clone()).await.json().await.unwrap());
    let _b2 = id(put_file(&s, &token, "shared2", shared.clone()).await.json().await.unwrap());
    assert_eq!(count_files(&dir.path().join("blobs")), 2);
    for asset in [&a, &b1] {
        let r = s.http.delete(s.url(&format!("/v1/assets/{asset}"))).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 204);
    }
    // The lone file's bytes go; the shared content stays for the file that still has it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while count_files(&dir.path().join("blobs")) != 1 {
        assert!(std::time::Instant::now() < deadline, "the collector did not remove the bytes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mine = get_json(&s, &token, "/v1/assets").await;
    let left = &mine["items"][0];
    let got = s.http.get(s.url(left["content_url"].as_str().unwrap())).bearer_auth(&token).send().await.unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), shared.as_slice());
    // Uploaded again, the lone content is stored anew and reads back.
    let again: Value = put_file(&s, &token, "lone again", lone.clone()).await.json().await.unwrap();
    let got = s.http.get(s.url(again["content_url"].as_str().unwrap())).bearer_auth(&token).send().await.unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), lone.as_slice());
    let m = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("outpost_file_blobs_collected_total 1"), "{m}");
    s.stop().await;
}

/// An image's thumbnails: fitted to the size asked, turned upright by the EXIF orientation,
/// cached; a file that declares a huge picture (a decompression bomb) is refused before any
/// pixel is decoded; a file that is not an image is refused.
#[tokio::test]
async fn thumbnails_are_upright_bounded_and_cached() {
    use image::{ImageEncoder, Rgb, RgbImage};
    let s = TestServer::start().await;
    let (_, token) = member(&s).await;
    let upload = |name: &str, ty: &str, bytes: Vec<u8>| {
        s.http.post(s.url(&format!("/v1/assets?name={name}&content_type={ty}"))).bearer_auth(&token).body(bytes).send()
    };
    let thumb = |id: String, size: &'static str| {
        s.http.get(s.url(&format!("/v1/assets/{id}/thumbnail?size={size}"))).bearer_auth(&token).send()
    };
    let id = |v: Value| v["id"].as_str().unwrap().to_owned();

    // A 300x100 picture stored as PNG: its small thumbnail is 128 wide, proportions kept.
    let picture = RgbImage::from_fn(300, 100, |x, _| if x < 150 { Rgb([255, 0, 0]) } else { Rgb([0, 0, 255]) });
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&picture, 300, 100, image::ExtendedColorType::Rgb8)
        .unwrap();
    let png_id = id(upload("wide.png", "image/png", png).await.unwrap().json().await.unwrap());
    let r = thumb(png_id.clone(), "small").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let t = image::load_from_memory(&r.bytes().await.unwrap()).unwrap();
    assert_eq!((t.width(), t.height()), (128, 43));
    // Asked again: the same bytes from the cache; with its ETag: 304.
    assert_eq!(thumb(png_id.clone(), "small").await.unwrap().status(), 200);
    let r = s
        .http
        .get(s.url(&format!("/v1/assets/{png_id}/thumbnail?size=small")))
        .bearer_auth(&token)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    // The same picture as a JPEG whose EXIF says "rotate 90°": the thumbnail stands upright
    // (taller than wide) and carries no EXIF of its own.
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .write_image(&picture, 300, 100, image::ExtendedColorType::Rgb8)
        .unwrap();
    let rotated = with_exif_orientation(&jpeg, 6);
    let jpg_id = id(upload("photo.jpg", "image/jpeg", rotated).await.unwrap().json().await.unwrap());
    let r = thumb(jpg_id, "small").await.unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    let t = image::load_from_memory(&bytes).unwrap();
    assert_eq!((t.width(), t.height()), (43, 128));
    assert!(!bytes.windows(6).any(|w| w == b"Exif\0\0"), "the thumbnail carries EXIF");

    // 30000 x 30000 pixels declared in a file of a few dozen bytes: refused unread.
    let bomb_id =
        id(upload("bomb.png", "image/png", png_declaring(30_000, 30_000)).await.unwrap().json().await.unwrap());
    expect_problem(thumb(bomb_id, "large").await.unwrap(), 422, "image_too_large").await;
    let text_id = id(upload("a.txt", "text/plain", b"words".to_vec()).await.unwrap().json().await.unwrap());
    expect_problem(thumb(text_id, "small").await.unwrap(), 422, "not_an_image").await;
    let m = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("outpost_thumbnails_made_total 2"), "{m}");
    assert!(m.contains("outpost_thumbnails_served_cached_total 1"), "{m}");
    s.stop().await;
}

/// `jpeg` with an APP1 Exif segment saying `orientation` inserted after its start marker.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    // TIFF, little-endian: header, one IFD with one entry (0x0112 Orientation, SHORT, 1).
    let mut tiff = b"II*\0\x08\0\0\0".to_vec();
    tiff.extend_from_slice(&1u16.to_le_bytes());
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A PNG that declares `w` x `h` 8-bit RGBA pixels and holds almost none of them.
fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 == 1 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: [u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    chunk(&mut out, *b"IHDR", &ihdr);
    // A zlib stream of a few zero bytes (stored block).
    chunk(&mut out, *b"IDAT", &[0x78, 0x01, 0x01, 0x04, 0x00, 0xFB, 0xFF, 0, 0, 0, 0, 0x00, 0x04, 0x00, 0x01]);
    chunk(&mut out, *b"IEND", &[]);
    out
}

/// A file attached to a message in a private channel is readable by the channel's members and
/// nobody else; one attached to a task's comment by whoever reads the tasks. Only one's own
/// files can be attached.
#[tokio::test]
async fn attachments_are_visible_where_their_message_is() {
    let s = TestServer::start().await;
    let (org, sl, ann_token) = member_and_slug(&s).await;
    let mut users = Vec::new();
    for name in ["bob", "cat"] {
        let u = operator_invite_and_accept(&s, &org, &format!("{name}@example.org"), "member").await;
        users.push((
            u["user"]["id"].as_str().or(u["id"].as_str()).unwrap().to_owned(),
            login(&s, &sl, name).await.access,
        ));
    }
    let [(bob_id, bob), (_, cat)] = [users[0].clone(), users[1].clone()];
    let file: Value = put_file(&s, &ann_token, "plan.txt", b"the plan".to_vec()).await.json().await.unwrap();
    let file_id = file["id"].as_str().unwrap().to_owned();
    let chan: Value = crate::support::post_json(
        &s,
        &ann_token,
        "/v1/channels",
        json!({ "kind": "private", "name": "planning", "member_ids": [bob_id] }),
    )
    .await;
    let chan_id = chan["id"].as_str().unwrap().to_owned();
    let posted = s
        .http
        .post(s.url(&format!("/v1/channels/{chan_id}/messages")))
        .bearer_auth(&ann_token)
        .json(&json!({ "text": "here it is", "attachment_ids": [file_id] }))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 201);
    let posted: Value = posted.json().await.unwrap();
    assert_eq!(posted["attachments"][0]["name"], "plan.txt", "{posted}");
    // Bob, in the channel, sees it in the history and downloads it.
    let history = get_json(&s, &bob, &format!("/v1/channels/{chan_id}/messages")).await;
    let att = &history["items"][0]["attachments"][0];
    assert_eq!(att["id"], file_id.as_str(), "{history}");
    let r = s.http.get(s.url(att["content_url"].as_str().unwrap())).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "the plan");
    // Cat, not in the channel, finds nothing.
    for path in [format!("/v1/assets/{file_id}"), format!("/v1/assets/{file_id}/content")] {
        let r = s.http.get(s.url(&path)).bearer_auth(&cat).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    // Someone else's file cannot be attached.
    let cats: Value = put_file(&s, &cat, "cat.txt", b"mine".to_vec()).await.json().await.unwrap();
    let r = s
        .http
        .post(s.url(&format!("/v1/channels/{chan_id}/messages")))
        .bearer_auth(&ann_token)
        .json(&json!({ "text": "borrowed", "attachment_ids": [cats["id"]] }))
        .send()
        .await
        .unwrap();
    let p = expect_problem(r, 422, "validation_failed").await;
    assert_eq!(p["errors"][0]["pointer"], "/attachment_ids/0", "{p}");
    // A task's comment shares its file with whoever reads the tasks: Cat too.
    let task: Value = crate::support::post_json(&s, &ann_token, "/v1/tasks", json!({ "title": "ship it" })).await;
    let notes: Value = put_file(&s, &ann_token, "notes.txt", b"notes".to_vec()).await.json().await.unwrap();
    let r = s
        .http
        .post(s.url(&format!("/v1/tasks/{}/comments", task["id"].as_str().unwrap())))
        .bearer_auth(&ann_token)
        .json(&json!({ "text": "see notes", "attachment_ids": [notes["id"]] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = s.http.get(s.url(notes["content_url"].as_str().unwrap())).bearer_auth(&cat).send().await.unwrap();
    assert_eq!(r.status(), 200);
    s.stop().await;
}

/// A task carries files of its own: whoever reads the tasks reads them; a change keeps the
/// files it names (whoever attached them) and detaches the rest; only one's own files are added.
#[tokio::test]
async fn a_task_carries_files_its_readers_download() {
    let s = TestServer::start().await;
    let (org, sl, ann) = member_and_slug(&s).await;
    operator_invite_and_accept(&s, &org, "bob@example.org", "member").await;
    let bob = login(&s, &sl, "bob").await.access;
    let spec: Value = put_file(&s, &ann, "spec.md", b"# spec".to_vec()).await.json().await.unwrap();
    let spec_url = spec["content_url"].as_str().unwrap().to_owned();
    let r = s.http.get(s.url(&spec_url)).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(r.status(), 404, "not shared yet");
    let task: Value = crate::support::post_json(
        &s,
        &ann,
        "/v1/tasks",
        json!({ "title": "write it", "attachment_ids": [spec["id"]] }),
    )
    .await;
    assert_eq!(task["attachments"][0]["name"], "spec.md", "{task}");
    let task_path = format!("/v1/tasks/{}", task["id"].as_str().unwrap());
    let seen = get_json(&s, &bob, &task_path).await;
    assert_eq!(seen["attachments"][0]["content_url"], spec_url.as_str(), "{seen}");
    let r = s.http.get(s.url(&spec_url)).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "# spec");
    // Bob adds his mock-up and keeps Ann's spec; Ann's other file he cannot add.
    let mock: Value = put_file(&s, &bob, "mock.png.txt", b"mock".to_vec()).await.json().await.unwrap();
    let hidden: Value = put_file(&s, &ann, "diary.txt", b"private".to_vec()).await.json().await.unwrap();
    let patch = |body: Value| s.http.patch(s.url(&task_path)).bearer_auth(&bob).json(&body).send();
    let r = patch(json!({ "attachment_ids": [spec["id"], hidden["id"]] })).await.unwrap();
    let p = expect_problem(r, 422, "validation_failed").await;
    assert_eq!(p["errors"][0]["pointer"], "/attachment_ids/1", "{p}");
    let r = patch(json!({ "attachment_ids": [spec["id"], mock["id"], mock["id"]] })).await.unwrap();
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    let names: Vec<&str> = t["attachments"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["spec.md", "mock.png.txt"], "{t}");
    let r = s.http.get(s.url(mock["content_url"].as_str().unwrap())).bearer_auth(&ann).send().await.unwrap();
    assert_eq!(r.status(), 200, "Ann reads the file Bob attached");
    // Detaching leaves the task without them; 51 files are too many.
    let r = patch(json!({ "attachment_ids": [] })).await.unwrap();
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["attachments"], json!([]), "{t}");
    let many: Vec<Value> = (0..51).map(|_| mock["id"].clone()).collect();
    let r = patch(json!({ "attachment_ids": many })).await.unwrap();
    expect_problem(r, 422, "validation_failed").await;
    s.stop().await;
}

/// A room's named file keeps its versions; the room's participants read every version, others
/// nothing.
#[tokio::test]
async fn a_rooms_files_keep_their_versions_for_its_participants() {
    let s = TestServer::start().await;
    let (org, sl, ann) = member_and_slug(&s).await;
    let mut others = Vec::new();
    for name in ["bob", "cat"] {
        let u = operator_invite_and_accept(&s, &org, &format!("{name}@example.org"), "member").await;
        others.push((
            u["user"]["id"].as_str().or(u["id"].as_str()).unwrap().to_owned(),
            login(&s, &sl, name).await.access,
        ));
    }
    let [(bob_id, bob), (_, cat)] = [others[0].clone(), others[1].clone()];
    let room: Value =
        crate::support::post_json(&s, &ann, "/v1/rooms", json!({ "name": "studio", "visibility": "private" })).await;
    let room_id = room["id"].as_str().unwrap().to_owned();
    assert!(
        s.http
            .post(s.url(&format!("/v1/rooms/{room_id}/join")))
            .bearer_auth(&ann)
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let r = s
        .http
        .post(s.url(&format!("/v1/rooms/{room_id}/participants")))
        .bearer_auth(&ann)
        .json(&json!({ "user_id": bob_id, "role": "viewer" }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    assert!(
        s.http
            .post(s.url(&format!("/v1/rooms/{room_id}/join")))
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let mut versions = Vec::new();
    for body in ["model one", "model two"] {
        let f: Value = put_file(&s, &ann, "scene.glb", body.as_bytes().to_vec()).await.json().await.unwrap();
        let r = s
            .http
            .post(s.url(&format!("/v1/rooms/{room_id}/assets")))
            .bearer_auth(&ann)
            .json(&json!({ "name": "scene.glb", "asset_id": f["id"] }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        versions.push(f["id"].as_str().unwrap().to_owned());
    }
    let list = get_json(&s, &bob, &format!("/v1/rooms/{room_id}/assets")).await;
    let item = &list["items"][0];
    assert_eq!(item["name"], "scene.glb", "{list}");
    let got: Vec<(u64, &str)> = item["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_u64().unwrap(), v["asset_id"].as_str().unwrap()))
        .collect();
    assert_eq!(got, [(1, versions[0].as_str()), (2, versions[1].as_str())]);
    // Bob, a viewer in the room, reads the first version; Cat, outside it, reads neither.
    let first = item["versions"][0]["content_url"].as_str().unwrap();
    let r = s.http.get(s.url(first)).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "model one");
    for v in &versions {
        let r = s.http.get(s.url(&format!("/v1/assets/{v}/content"))).bearer_auth(&cat).send().await.unwrap();
        assert_eq!(r.status(), 404);
    }
    assert_eq!(
        s.http.get(s.url(&format!("/v1/rooms/{room_id}/assets"))).bearer_auth(&cat).send().await.unwrap().status(),
        404
    );
    // A viewer may not add versions.
    let f: Value = put_file(&s, &bob, "mine.glb", b"bob's".to_vec()).await.json().await.unwrap();
    let r = s
        .http
        .post(s.url(&format!("/v1/rooms/{room_id}/assets")))
        .bearer_auth(&bob)
        .json(&json!({ "name": "scene.glb", "asset_id": f["id"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    s.stop().await;
}

/// File names are found by search: one's own files by their owner, and the message a file is
/// attached to by whoever reads its channel.
#[tokio::test]
async fn search_finds_files_by_name_for_those_who_may_read_them() {
    let s = TestServer::start().await;
    let (org, sl, ann) = member_and_slug(&s).await;
    operator_invite_and_accept(&s, &org, "bob@example.org", "member").await;
    let bob = login(&s, &sl, "bob").await.access;
    let f: Value = put_file(&s, &ann, "quarterly-figures.pdf", b"%PDF-1.7".to_vec()).await.json().await.unwrap();
    let find = |token: String, q: &'static str| {
        let req = s.http.get(s.url(&format!("/v1/search?q={q}"))).bearer_auth(token);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let hits = find(ann.clone(), "quarterly").await;
        if hits["items"].as_array().is_some_and(|h| h.iter().any(|h| h["type"] == "file" && h["id"] == f["id"])) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the owner's file was not found: {hits}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(find(bob.clone(), "quarterly").await["items"], json!([]));
    let chan: Value =
        crate::support::post_json(&s, &ann, "/v1/channels", json!({ "kind": "public", "name": "finance" })).await;
    let msg: Value = crate::support::post_json(
        &s,
        &ann,
        &format!("/v1/channels/{}/messages", chan["id"].as_str().unwrap()),
        json!({ "text": "for the review", "attachment_ids": [f["id"]] }),
    )
    .await;
    loop {
        let hits = find(bob.clone(), "quarterly").await;
        let items = hits["items"].as_array().cloned().unwrap_or_default();
        if items.iter().any(|h| h["type"] == "message" && h["id"] == msg["id"]) {
            assert!(!items.iter().any(|h| h["type"] == "file"), "{hits}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the message with the file was not found: {hits}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.stop().await;
}

/// An avatar that names an image file of one's own: every member then reads it (and its
/// thumbnails); a file that is not an image is refused.
#[tokio::test]
async fn an_avatar_is_an_image_file_every_member_reads() {
    use image::ImageEncoder;
    let s = TestServer::start().await;
    let (org, sl, ann) = member_and_slug(&s).await;
    operator_invite_and_accept(&s, &org, "bob@example.org", "guest").await;
    let bob = login(&s, &sl, "bob").await.access;
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&[200u8; 64 * 64 * 3], 64, 64, image::ExtendedColorType::Rgb8)
        .unwrap();
    let r =
        s.http.post(s.url("/v1/assets?name=me.png&content_type=image/png")).bearer_auth(&ann).body(png).send().await;
    let pic: Value = r.unwrap().json().await.unwrap();
    let text: Value = put_file(&s, &ann, "bio.txt", b"hello".to_vec()).await.json().await.unwrap();
    let set = |v: &Value| s.http.patch(s.url("/v1/me")).bearer_auth(&ann).json(&json!({ "avatar": v["id"] })).send();
    let p = expect_problem(set(&text).await.unwrap(), 422, "validation_failed").await;
    assert_eq!(p["errors"][0]["code"], "not_an_image", "{p}");
    assert_eq!(set(&pic).await.unwrap().status(), 200);
    let r = s.http.get(s.url(&format!("/v1/assets/{}/thumbnail?size=small", pic["id"].as_str().unwrap())));
    let r = r.bearer_auth(&bob).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    // The text file stays private.
    let r = s.http.get(s.url(&format!("/v1/assets/{}", text["id"].as_str().unwrap()))).bearer_auth(&bob).send().await;
    assert_eq!(r.unwrap().status(), 404);
    s.stop().await;
}

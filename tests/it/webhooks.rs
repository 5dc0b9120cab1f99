//! Webhooks, checked by an independent implementation: the `standardwebhooks` library from
//! PyPI verifies what Outpost signs.

use base64::Engine as _;
use outpost::webhooks::signing::{self, Secret};
use serde_json::{Value, json};

use crate::support::peer_python;

/// Verifies each case with `standardwebhooks.Webhook(secret).verify(body, headers)`; prints
/// one line per case: `ok`, or the library's error.
const VERIFY: &str = r#"
import base64, json, sys
from standardwebhooks import Webhook
for case in json.load(sys.stdin):
    body = base64.b64decode(case["body"])
    try:
        Webhook(case["secret"]).verify(body, case["headers"], json_parse=False)
        print("ok")
    except Exception as e:
        print(type(e).__name__ + ": " + str(e).replace("\n", " "))
"#;

fn case(secret: &Secret, headers: &[(&str, String); 3], body: &[u8]) -> Value {
    let headers: serde_json::Map<String, Value> =
        headers.iter().map(|(k, v)| ((*k).to_owned(), Value::String(v.clone()))).collect();
    json!({
        "secret": secret.written(),
        "headers": headers,
        "body": base64::engine::general_purpose::STANDARD.encode(body),
    })
}

#[tokio::test]
async fn the_standard_webhooks_library_verifies_every_signature_across_a_rotation() {
    use tokio::io::AsyncWriteExt;
    let (old, new, stranger) = (Secret::generate(), Secret::generate(), Secret::generate());
    let now = outpost::ids::now_ms() / 1000;
    let body = br#"{"type":"message.created","data":{"text":"h\u00e9 \ud83d\ude00"}}"#;
    let one = signing::headers(&[&old], "msg_01", now, body);
    let both = signing::headers(&[&new, &old], "msg_02", now, body);
    let cases = json!([
        case(&old, &one, body),
        // During the overlap a receiver holding either secret verifies.
        case(&old, &both, body),
        case(&new, &both, body),
        // And nobody else, nor a changed body, nor a replayed old timestamp.
        case(&stranger, &both, body),
        case(&old, &one, br#"{"type":"message.created","data":{"text":"changed"}}"#),
        case(&old, &signing::headers(&[&old], "msg_03", now - 3600, body), body),
    ]);
    let mut child = tokio::process::Command::new(peer_python())
        .args(["-c", VERIFY])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(cases.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert_eq!(&lines[..3], ["ok", "ok", "ok"], "{lines:?}");
    for refused in &lines[3..] {
        assert!(refused.starts_with("WebhookVerificationError"), "{lines:?}");
    }
}

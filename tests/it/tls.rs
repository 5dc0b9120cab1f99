//! HTTPS from certificate files, and a renewed certificate picked up without a restart.
//! Certificates come from the `openssl` command; the client is `curl`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{TestServer, config_for};

fn make_cert(dir: &Path, name: &str) -> String {
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    let ok = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl")
        .status
        .success();
    assert!(ok, "openssl could not make a certificate");
    let out =
        Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha256", "-in"]).arg(&cert).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn served_fingerprint(addr: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_and_reloads_a_renewed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let first = make_cert(dir.path(), "first");
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    std::fs::copy(dir.path().join("first.crt"), &cert).unwrap();
    std::fs::copy(dir.path().join("first.key"), &key).unwrap();
    let mut config = config_for(&dir.path().join("data"));
    config.tls.cert_file = Some(cert.clone());
    config.tls.key_file = Some(key.clone());
    config.tls.reload_interval_s = 1;
    let s = TestServer::start_with_scheme(config, "https").await;
    let addr = s.base.trim_start_matches("https://").to_owned();

    let ca = dir.path().join("first.crt");
    let out = tokio::task::spawn_blocking({
        let (ca, url) = (ca.clone(), s.url("/health/live"));
        move || Command::new("curl").args(["-sS", "-i", "--cacert"]).arg(ca).arg(url).output().unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/") && text.contains(" 200"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.to_lowercase().contains("strict-transport-security"), "{text}");
    let a = addr.clone();
    assert_eq!(tokio::task::spawn_blocking(move || served_fingerprint(&a)).await.unwrap(), first);

    // Renew: new files in place; the server picks them up within a few reload intervals.
    let second = make_cert(dir.path(), "second");
    std::fs::copy(dir.path().join("second.key"), &key).unwrap();
    std::fs::copy(dir.path().join("second.crt"), &cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = addr.clone();
        if tokio::task::spawn_blocking(move || served_fingerprint(&a)).await.unwrap() == second {
            break;
        }
        assert!(Instant::now() < deadline, "the renewed certificate was not picked up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.stop().await;
}

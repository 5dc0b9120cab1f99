//! Online backup under write load, then restore into a fresh data dir.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{TestServer, cli, config_for, slug};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_under_load_restores_everything_acknowledged_before_it() {
    let s = TestServer::start().await;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..8 {
        let (http, url, key, acked, stop) =
            (s.http.clone(), s.url("/v1/orgs"), s.key.clone(), acked.clone(), stop.clone());
        writers.spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = json!({ "slug": slug(&format!("bk{w}x{i}")), "name": "load" });
                let r = http.post(&url).bearer_auth(&key).json(&body).send().await.unwrap();
                assert_eq!(r.status(), 201);
                let v: Value = r.json().await.unwrap();
                acked.lock().unwrap().push(v["id"].as_str().unwrap().to_owned());
                i += 1;
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before: Vec<String> = acked.lock().unwrap().clone();
    assert!(!before.is_empty());
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("outpost.backup");
    let config = s.config.clone();
    let f = file.clone();
    let summary = tokio::task::spawn_blocking(move || outpost::commands::backup(&config, &f)).await.unwrap().unwrap();
    assert!(summary.entries > 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while let Some(r) = writers.join_next().await {
        r.unwrap();
    }
    let old_epoch: Value = s.get(&format!("/v1/orgs/{}/events", before[0])).send().await.unwrap().json().await.unwrap();
    let s_dir = s.config.data_dir.clone();
    let _keep_dir = s.stop_keep_dir().await;

    // A non-empty target is refused without --force.
    let target = tempfile::tempdir().unwrap();
    std::fs::write(target.path().join("something"), b"x").unwrap();
    let (code, _, err) =
        cli(&["restore", "--from", file.to_str().unwrap(), "--data", target.path().to_str().unwrap()], &[], None);
    assert_eq!(code, 1);
    assert!(err.contains("not empty"), "{err}");
    let fresh = target.path().join("fresh");
    let (code, out_text, err) =
        cli(&["restore", "--from", file.to_str().unwrap(), "--data", fresh.to_str().unwrap()], &[], None);
    assert_eq!(code, 0, "{out_text}{err}");

    // The vault's master key is not in backups (it must be kept apart); bring it along.
    std::fs::copy(s_dir.join("master.key"), fresh.join("master.key")).unwrap();
    let s = TestServer::start_with(config_for(&fresh)).await;
    for id in &before {
        let r = s.get(&format!("/v1/orgs/{id}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "org {id} acknowledged before the backup is missing");
    }
    let new_epoch: Value = s.get(&format!("/v1/orgs/{}/events", before[0])).send().await.unwrap().json().await.unwrap();
    assert_ne!(old_epoch["epoch"], new_epoch["epoch"], "a restore starts a new epoch");
    let v: Value = s.get("/v1/audit/verification").send().await.unwrap().json().await.unwrap();
    assert_eq!(v["ok"], true, "{v}");
    // The restored server takes writes.
    s.create_org(&slug("after-restore")).await;
    s.stop().await;

    // A damaged backup is refused before anything is written.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let damaged = out.path().join("damaged.backup");
    std::fs::write(&damaged, bytes).unwrap();
    let elsewhere = target.path().join("other");
    let (code, _, err) =
        cli(&["restore", "--from", damaged.to_str().unwrap(), "--data", elsewhere.to_str().unwrap()], &[], None);
    assert_eq!(code, 1);
    assert!(err.contains("checksum"), "{err}");
    assert!(!elsewhere.join("outpost.redb").exists());
}

#[test]
fn backup_and_verify_work_without_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // Run without a server, a command opens the store only: the media and TURN ports it would
    // listen on may be unavailable here (192.0.2.1 is no address of this host).
    let unavailable =
        [("OUTPOST_MEDIA__RTC_LISTEN", "192.0.2.1:7882"), ("OUTPOST_MEDIA__TURN_LISTEN", "192.0.2.1:3478")];
    let (code, key, err) = cli(&["operator", "create-key", "--data", d], &unavailable, None);
    assert_eq!(code, 0, "{err}");
    assert!(key.trim().starts_with("opk_"));
    let file = dir.path().join("b.backup");
    let (code, out, err) = cli(&["backup", "--out", file.to_str().unwrap(), "--data", d], &[], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("backup:"), "plain progress lines off a terminal: {err}");
    let (code, out, _) = cli(&["audit", "verify", "--data", d], &[], None);
    assert_eq!(code, 0);
    assert!(out.contains("verify"));
}

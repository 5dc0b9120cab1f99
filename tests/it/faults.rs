//! Faults an edge box meets, on a real server process: a disk that fills up, an fsync that
//! fails.
//!
//! The server runs on a 96 MiB tmpfs of its own, mounted in a user and mount namespace
//! (`unshare`), so the test needs no privilege and touches no real disk. A shell in that
//! namespace fills and frees the disk and restarts the server when the test asks it to, by a
//! file appearing beside the namespace's mount.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::BIN;

/// What the shell in the namespace runs: mount the disk, make an operator key, serve; then act
/// on the test's requests (`fill`, `free`, `restart`, as files in `$3`).
const SCRIPT: &str = r#"
set -e
mount -t tmpfs -o size=96m tmpfs "$1"
"$2" operator create-key --data "$1/data" --name faults > "$3/key"
"$2" serve --listen 127.0.0.1:0 --data "$1/data" &
pid=$!
while :; do
    if [ -e "$3/fill" ]; then
        rm "$3/fill"
        # Leave 8 MiB: below the server's 16 MiB floor, above nothing.
        avail=$(df -k --output=avail "$1" | tail -n 1)
        dd if=/dev/zero of="$1/filler" bs=1M count=$(( avail / 1024 - 8 )) 2>/dev/null || true
        touch "$3/filled"
    fi
    if [ -e "$3/free" ]; then
        rm "$3/free" "$1/filler"
        touch "$3/freed"
    fi
    if [ -e "$3/restart" ]; then
        kill -TERM $pid
        wait $pid || true
        exec "$2" serve --listen 127.0.0.1:0 --data "$1/data"
    fi
    sleep 0.05
done
"#;

/// The namespace's shell and the server in it; its stdout's ready lines come through `ready`.
struct Boxed {
    child: Child,
    ready: mpsc::Receiver<String>,
}

impl Boxed {
    fn start(control: &Path) -> Self {
        let disk = control.join("disk");
        std::fs::create_dir(&disk).unwrap();
        let mut child = Command::new("unshare")
            // Its own PID namespace too: when the shell goes, everything in it goes.
            .args(["--user", "--map-root-user", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", SCRIPT, "sh"])
            .arg(&disk)
            .arg(BIN)
            .arg(control)
            .env("OUTPOST_LOG__FORMAT", "json")
            .env("OUTPOST_LOG__LEVEL", "info")
            .env("OUTPOST_STORE__MIN_FREE_DISK_BYTES", (16u64 << 20).to_string())
            .env("OUTPOST_FILES__DISK_RESERVE_BYTES", (16u64 << 20).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare (util-linux) runs the server in a namespace");
        let stdout = child.stdout.take().unwrap();
        let (tx, ready) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
                if v["fields"]["message"] == "outpost is ready" {
                    let _ = tx.send(format!("http://{}", v["fields"]["listen"].as_str().unwrap()));
                }
            }
        });
        Self { child, ready }
    }

    fn next_ready(&self) -> String {
        self.ready.recv_timeout(Duration::from_secs(30)).expect("the server in the namespace is ready")
    }
}

impl Drop for Boxed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asks the namespace's shell for `what` and waits for it to say it is done (`done`, if any).
async fn ask(control: &Path, what: &str, done: Option<&str>) {
    std::fs::write(control.join(what), b"").unwrap();
    let Some(done) = done else { return };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !control.join(done).exists() {
        assert!(Instant::now() < deadline, "the namespace did not {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `f` until it is true (generous bound: the writer looks at the disk twice a second).
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A disk filled from outside: writes are refused with 507 `insufficient_storage` and lose
/// nothing, reads and liveness go on, readiness says why; once space is freed, writes resume by
/// themselves, and after a restart every acknowledged write is there.
#[tokio::test]
async fn a_full_disk_refuses_writes_keeps_reads_and_recovers() {
    let control = tempfile::tempdir().unwrap();
    let boxed = Boxed::start(control.path());
    let base = boxed.next_ready();
    let key = std::fs::read_to_string(control.path().join("key")).unwrap().trim().to_owned();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut acked: Vec<String> = Vec::new();
    let create = |base: &str, n: usize| {
        let req = http
            .post(format!("{base}/v1/orgs"))
            .bearer_auth(&key)
            .json(&json!({ "slug": format!("disk{n}"), "name": "Disk" }));
        async move { req.send().await.unwrap() }
    };
    let mut n = 0;
    for _ in 0..20 {
        let r = create(&base, n).await;
        n += 1;
        assert_eq!(r.status(), 201);
        acked.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
    }

    ask(control.path(), "fill", Some("filled")).await;
    let mut refused = None;
    eventually("writes are refused on a full disk", async || {
        let r = create(&base, n).await;
        n += 1;
        match r.status().as_u16() {
            201 => {
                acked.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
                false
            }
            507 => {
                refused = Some(r.json::<Value>().await.unwrap());
                true
            }
            other => panic!("a write on a full disk answered {other}"),
        }
    })
    .await;
    assert_eq!(refused.unwrap()["code"], "insufficient_storage");
    // Reads and liveness go on; readiness says why it is not ready.
    let r = http.get(format!("{base}/v1/orgs/{}", acked[0])).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(http.get(format!("{base}/health/live")).send().await.unwrap().status(), 200);
    let r = http.get(format!("{base}/health/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let ready: Value = r.json().await.unwrap();
    assert!(ready["free_disk_bytes"].as_u64().unwrap() < ready["min_free_disk_bytes"].as_u64().unwrap(), "{ready}");
    assert_eq!(ready["store_writable"], true, "refusing is not failing: {ready}");

    // Space comes back: writes resume by themselves.
    ask(control.path(), "free", Some("freed")).await;
    eventually("writes resume once space is freed", async || {
        let r = create(&base, n).await;
        n += 1;
        let ok = r.status() == 201;
        if ok {
            acked.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
        }
        ok
    })
    .await;
    assert_eq!(http.get(format!("{base}/health/ready")).send().await.unwrap().status(), 200);

    // Every acknowledged write is there after a restart.
    ask(control.path(), "restart", None).await;
    let base = boxed.next_ready();
    for id in &acked {
        let r = http.get(format!("{base}/v1/orgs/{id}")).bearer_auth(&key).send().await.unwrap();
        assert_eq!(r.status(), 200, "acknowledged org {id} is gone");
    }
    assert!(acked.len() > 20, "{}", acked.len());
}

/// A document update and an upload in progress meet a full disk: the update is refused with 507
/// and the document keeps what it had; the upload's next bytes are refused with 507 before any
/// is written, its offset stays where it was, and a new upload is refused too. Once space is
/// freed, the update goes in and the upload resumes from its offset to the end; after a
/// restart, the document and the file are whole.
#[tokio::test]
async fn a_full_disk_holds_document_updates_and_uploads_until_space_returns() {
    use yrs::updates::decoder::Decode as _;
    use yrs::{Doc, GetString as _, Text as _, Transact as _, Update};

    let control = tempfile::tempdir().unwrap();
    let boxed = Boxed::start(control.path());
    let base = boxed.next_ready();
    let key = std::fs::read_to_string(control.path().join("key")).unwrap().trim().to_owned();
    let s = crate::support::TestServer::attached(base.clone(), key);
    let (org, slug) = crate::identity::create_org(&s).await;
    crate::identity::operator_invite_and_accept(&s, &org, "dee@example.org", "member").await;
    let token = crate::identity::login(&s, &slug, "dee").await.access;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let room: Value = crate::support::post_json(&s, &token, "/v1/rooms", json!({ "name": "r" })).await;
    let doc: Value = crate::support::post_json(
        &s,
        &token,
        &format!("/v1/rooms/{}/docs", room["id"].as_str().unwrap()),
        json!({ "name": "d" }),
    )
    .await;
    let doc = doc["id"].as_str().unwrap().to_owned();
    // Two edits from one client: the first before the disk fills, the second while it is full.
    let client = Doc::new();
    let text = client.get_or_insert_text("text");
    let edit = |at: u32, what: &str| {
        let mut txn = client.transact_mut();
        text.insert(&mut txn, at, what);
        txn.encode_update_v1()
    };
    let update = |bytes: Vec<u8>| {
        http.post(format!("{base}/v1/docs/{doc}/updates"))
            .bearer_auth(&token)
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
    };
    assert!(update(edit(0, "before ")).await.unwrap().status().is_success());
    let file: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let r = http
        .post(format!("{base}/v1/uploads"))
        .bearer_auth(&token)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", file.len().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let upload = format!("{base}{}", r.headers()["location"].to_str().unwrap());
    let patch = |from: usize, to: usize| {
        http.patch(&upload)
            .bearer_auth(&token)
            .header("tus-resumable", "1.0.0")
            .header("upload-offset", from.to_string())
            .header("content-type", "application/offset+octet-stream")
            .body(file[from..to].to_vec())
            .send()
    };
    let offset = || async {
        let r = http.head(&upload).bearer_auth(&token).header("tus-resumable", "1.0.0").send().await.unwrap();
        r.headers()["upload-offset"].to_str().unwrap().parse::<usize>().unwrap()
    };
    assert_eq!(patch(0, 1 << 20).await.unwrap().status(), 204);

    ask(control.path(), "fill", Some("filled")).await;
    let refused_edit = edit(7, "during ");
    let mut refused = None;
    eventually("a document update is refused on a full disk", async || {
        let r = update(refused_edit.clone()).await.unwrap();
        assert!(r.status() == 507 || r.status().is_success(), "{}", r.status());
        if r.status() == 507 {
            refused = Some(r.json::<Value>().await.unwrap());
        }
        refused.is_some()
    })
    .await;
    assert_eq!(refused.unwrap()["code"], "insufficient_storage");
    let r = patch(1 << 20, 2 << 20).await.unwrap();
    assert_eq!(r.status(), 507);
    // Refused before its body was read: the connection cannot carry another request.
    assert_eq!(r.headers()["connection"], "close");
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "insufficient_storage");
    assert_eq!(offset().await, 1 << 20, "no byte of a refused request is taken");
    let r = http
        .post(format!("{base}/v1/uploads"))
        .bearer_auth(&token)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "1024")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 507, "a new upload on a full disk");

    ask(control.path(), "free", Some("freed")).await;
    eventually("the document update goes in once space is freed", async || {
        update(refused_edit.clone()).await.unwrap().status().is_success()
    })
    .await;
    let r = patch(1 << 20, file.len()).await.unwrap();
    assert_eq!(r.status(), 204, "the upload resumes from its offset");
    assert_eq!(offset().await, file.len());

    ask(control.path(), "restart", None).await;
    let base = boxed.next_ready();
    let id = upload.rsplit('/').next().unwrap();
    let r = http.get(format!("{base}/v1/assets/{id}/content")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap() == file, "the file came back different");
    let state = http.get(format!("{base}/v1/docs/{doc}/state")).bearer_auth(&token).send().await.unwrap();
    let state = state.bytes().await.unwrap();
    let server = Doc::new();
    server.transact_mut().apply_update(Update::decode_v1(&state).unwrap()).unwrap();
    let t = server.get_or_insert_text("text");
    assert_eq!(t.get_string(&server.transact()), "before during ");
}

/// An fsync that fails: the write it carried is not acknowledged, and no later write is either,
/// though the disk would take them (a failed fsync may have lost pages the next fsync would not
/// report: the PostgreSQL "fsyncgate" lesson). Readiness says the store is not writable. A
/// restart recovers a consistent store with every acknowledged write, and takes writes again.
#[tokio::test]
async fn a_failed_fsync_stops_writes_until_a_restart_recovers() {
    use crate::support::{ChildServer, cli};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (code, key, _) = cli(&["operator", "create-key", "--data", data.to_str().unwrap()], &[], None);
    assert_eq!(code, 0);
    let key = key.trim().to_owned();
    let marker = dir.path().join("fail-next-fsync");
    let marker_env = marker.to_str().unwrap();
    let server = ChildServer::start_with_env(&data, &[(outpost::store::FSYNC_FAULT_ENV, marker_env)]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let create = |base: String, n: usize| {
        let req = http
            .post(format!("{base}/v1/orgs"))
            .bearer_auth(&key)
            .json(&json!({ "slug": format!("f{n}"), "name": "F" }));
        async move { req.send().await.unwrap() }
    };
    let mut acked = Vec::new();
    for n in 0..10 {
        let r = create(server.base.clone(), n).await;
        assert_eq!(r.status(), 201);
        acked.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
    }
    std::fs::write(&marker, b"").unwrap();
    let r = create(server.base.clone(), 10).await;
    let status = r.status().as_u16();
    let failed: Value = r.json().await.unwrap();
    assert!(!marker.exists(), "the write's fsync ran");
    assert_eq!((status, failed["code"].as_str()), (500, Some("storage_error")), "{failed}");
    // The disk would take the next ones; they are refused all the same.
    for n in 11..14 {
        let r = create(server.base.clone(), n).await;
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            (status, body["code"].as_str()),
            (500, Some("storage_error")),
            "a write after a failed fsync: {body}"
        );
    }
    let r = http.get(format!("{}/health/ready", server.base)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let ready: Value = r.json().await.unwrap();
    assert_eq!(ready["store_writable"], false, "{ready}");
    assert_eq!(http.get(format!("{}/health/live", server.base)).send().await.unwrap().status(), 200);

    server.kill9();
    let server = ChildServer::start(&data);
    for id in &acked {
        let r = http.get(format!("{}/v1/orgs/{id}", server.base)).bearer_auth(&key).send().await.unwrap();
        assert_eq!(r.status(), 200, "acknowledged org {id} is gone");
    }
    let r = create(server.base.clone(), 20).await;
    assert_eq!(r.status(), 201, "writes again after the restart");
    let (code, out, err) = cli(&["audit", "verify", "--data", data.to_str().unwrap()], &[], None);
    assert_eq!(code, 0, "{out}{err}");
}

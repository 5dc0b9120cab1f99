//! Configuration: layering, errors that name the key, and a start with no configuration.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{BIN, cli};

#[test]
fn errors_name_the_key_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("outpost.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:9000\"\n[store]\nqueue_len_mx = 10\n").unwrap();
    let (code, _, err) = cli(&["config", "check", "--config", file.to_str().unwrap()], &[], None);
    assert_eq!(code, 2);
    assert!(err.contains("store.queue_len_mx") && err.contains("unknown key"), "{err}");

    std::fs::write(&file, "[http]\nbody_limit_bytes = \"lots\"\n").unwrap();
    let (code, _, err) = cli(&["config", "check", "--config", file.to_str().unwrap()], &[], None);
    assert_eq!(code, 2);
    assert!(err.contains("http.body_limit_bytes"), "{err}");

    let (code, _, err) = cli(&["config", "check"], &[("OUTPOST_STORE__BATCH_LEN_MAX", "0")], Some(dir.path()));
    assert_eq!(code, 2);
    assert!(err.contains("store.batch_len_max"), "{err}");

    let (code, _, err) = cli(&["config", "check"], &[("OUTPOST_LISTEN", "not-an-address")], Some(dir.path()));
    assert_eq!(code, 2);
    assert!(err.contains("listen"), "{err}");

    let (code, _, err) = cli(&["serve"], &[("OUTPOST_NO_SUCH_KEY", "1")], Some(dir.path()));
    assert_eq!(code, 2);
    assert!(err.contains("no_such_key"), "{err}");
}

#[test]
fn the_packaged_config_is_valid() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/outpost.toml");
    let (code, out, err) = cli(&["config", "check", "--config", file], &[], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("data_dir = \"/var/lib/outpost\""), "{out}");
}

#[test]
fn file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("outpost.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:1111\"\n[events]\nbus_capacity = 64\n").unwrap();
    let f = file.to_str().unwrap();
    let (code, out, _) = cli(&["config", "check", "--config", f], &[], None);
    assert_eq!(code, 0);
    assert!(out.contains("listen = \"127.0.0.1:1111\"") && out.contains("bus_capacity = 64"), "{out}");
    let (_, out, _) = cli(&["config", "check", "--config", f], &[("OUTPOST_LISTEN", "127.0.0.1:2222")], None);
    assert!(out.contains("127.0.0.1:2222"), "{out}");
    let (_, out, _) = cli(
        &["config", "check", "--config", f, "--listen", "127.0.0.1:3333"],
        &[("OUTPOST_LISTEN", "127.0.0.1:2222")],
        None,
    );
    assert!(out.contains("127.0.0.1:3333"), "{out}");
}

/// No configuration at all: the defaults say where data goes and where to listen (8080), and
/// the server starts on them. It listens on a port of its choosing here, so the test never
/// depends on 8080 being free on the machine that runs it.
#[test]
fn zero_config_start_works() {
    let cwd = tempfile::tempdir().unwrap();
    let (code, out, _) = cli(&["config", "check"], &[], Some(cwd.path()));
    assert_eq!(code, 0);
    assert!(out.contains("data_dir = \"./outpost-data\"") && out.contains("listen = \"127.0.0.1:8080\""), "{out}");

    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(cwd.path())
        .env("OUTPOST_LOG__FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut saw_hint, mut listen) = (false, None);
    while !(saw_hint && listen.is_some()) {
        assert!(Instant::now() < deadline, "no ready line");
        let line = lines.next().expect("server exited").unwrap();
        saw_hint |= line.contains("operator create-key");
        if line.contains("outpost is ready") {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            listen = v["fields"]["listen"].as_str().map(str::to_owned);
        }
    }
    std::thread::spawn(move || for _ in lines {});
    assert!(cwd.path().join("outpost-data/outpost.redb").exists());
    let live = std::net::TcpStream::connect(listen.unwrap());
    assert!(live.is_ok());
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful stop exits 0: {status:?}");
    // The admin socket is removed on a clean stop.
    assert!(!cwd.path().join("outpost-data/admin.sock").exists());
}

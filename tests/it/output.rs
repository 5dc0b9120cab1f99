//! A server whose own output cannot be written (standard output and error on a full disk) keeps
//! serving: each log line it cannot write is dropped and counted, never a reason to stop.

use std::collections::HashSet;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::BIN;
use crate::systemd::wait_for;

/// The TCP ports process `pid` listens on (its socket inodes matched in `/proc/net/tcp*`).
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_owned))
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address is ADDR:PORT in hex; state 0A is LISTEN; the inode is column 9.
            if cols.len() > 9 && cols[3] == "0A" && inodes.contains(cols[9]) {
                let port = cols[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
                ports.extend(port);
            }
        }
    }
    ports
}

#[tokio::test]
async fn a_server_whose_output_fails_keeps_serving_and_counts_the_lost_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .env("NOTIFY_SOCKET", &path)
        .env("OUTPOST_LOG__FORMAT", "json")
        .env("OUTPOST_STORE__MIN_FREE_DISK_BYTES", "0")
        .stdout(Stdio::from(full()))
        .stderr(Stdio::from(full()))
        .spawn()
        .unwrap();
    wait_for(&sock, "READY=1");
    // The HTTP listener among them (the media relay listens for ICE over TCP too).
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let mut base = None;
    for port in listening_ports(child.id()) {
        let url = format!("http://127.0.0.1:{port}");
        if http.get(format!("{url}/health/live")).send().await.is_ok_and(|r| r.status() == 200) {
            base = Some(url);
        }
    }
    let base = base.expect("the server answers HTTP");
    // Every request writes a log line, and every one of those writes fails.
    for _ in 0..50 {
        let r = http.get(format!("{base}/health/live")).send().await.expect("the server still answers");
        assert_eq!(r.status(), 200);
    }
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("outpost_log_lines_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no outpost_log_lines_dropped_total in /metrics"));
    assert!(dropped >= 50, "{dropped} dropped lines counted for 50 requests");
    assert!(child.try_wait().unwrap().is_none(), "the server is still running");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "a graceful stop exits 0 even without output: {status:?}");
}

//! Operational checks: free disk space, readiness, systemd notifications.
//!
//! `sd_notify` messages go out only when systemd asked for them (`NOTIFY_SOCKET` set);
//! otherwise they are no-ops.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::app::App;

/// Free bytes for unprivileged users on the file system holding `path`.
pub fn free_disk_bytes(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// How long a follower may sit behind the head without advancing before it counts as stalled.
pub const FOLLOWER_STALL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub store_writable: bool,
    pub free_disk_bytes: Option<u64>,
    pub min_free_disk_bytes: u64,
    pub stalled_followers: Vec<String>,
}

/// What `/health/ready` reports.
pub fn readiness(app: &App) -> Readiness {
    let writer = app.writer.state();
    let store_writable = writer.alive() && writer.last_commit_ok();
    let free = free_disk_bytes(&app.config.data_dir);
    let floor = app.config.store.min_free_disk_bytes;
    let disk_ok = floor == 0 || free.is_some_and(|f| f >= floor);
    let stalled = app.followers.stalled(app.bus.head_gseq(), FOLLOWER_STALL);
    Readiness {
        ready: store_writable && disk_ok && stalled.is_empty(),
        store_writable,
        free_disk_bytes: free,
        min_free_disk_bytes: floor,
        stalled_followers: stalled,
    }
}

/// Tells systemd the server is ready (no-op outside systemd).
pub fn notify_ready() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
}

/// Tells systemd the server is stopping (no-op outside systemd).
pub fn notify_stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// Pets systemd's watchdog at half its interval while the store stays writable. Returns when
/// no watchdog is configured.
pub async fn watchdog(app: App) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut tick = tokio::time::interval(interval / 2);
    loop {
        tick.tick().await;
        if app.writer.state().alive() {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }
    }
}

//! The local admin socket (`<data dir>/admin.sock`, mode 0600).
//!
//! redb lets one process open the store, so CLI commands run against a data dir that a server
//! has open talk to that server through this socket instead. One JSON request per connection;
//! the server answers zero or more `{"progress": {"done", "total"}}` lines, then one
//! `{"ok": …}` or `{"error": "…"}` line. Access is the file mode: whoever can open the socket
//! is as trusted as whoever can read the data dir.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::app::App;
use crate::domain::operators;
use crate::store::backup;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Ping,
    Backup { out: PathBuf },
    AuditVerify,
    Fsck,
    Space,
    CreateOperatorKey { name: String },
    RotateSigningKey,
    RotateVault,
    Reindex,
}

/// Largest request line accepted.
const REQUEST_BYTES_MAX: usize = 64 * 1024;

/// Binds the socket (replacing a stale one) and serves it until the task is dropped.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        // The store lock proves no other server owns this data dir, so the file is stale.
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, app: App) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, app).await {
                tracing::warn!(error = %e, "admin socket connection failed");
            }
        });
    }
}

async fn handle(stream: UnixStream, app: App) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read).take(REQUEST_BYTES_MAX as u64);
    if reader.read_line(&mut line).await? == 0 {
        // A liveness probe (`server_running`) connects and hangs up without asking anything.
        return Ok(());
    }
    let req: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            return send(&mut write, &json!({ "error": format!("bad request: {e}") })).await;
        }
    };
    tracing::info!(?req, "admin request");
    let (tx, mut rx) = mpsc::channel::<Value>(64);
    let work = tokio::spawn(run(req, app, tx));
    while let Some(line) = rx.recv().await {
        send(&mut write, &line).await?;
    }
    let answer = match work.await {
        Ok(Ok(v)) => json!({ "ok": v }),
        Ok(Err(e)) => json!({ "error": e }),
        Err(e) => json!({ "error": format!("task failed: {e}") }),
    };
    send(&mut write, &answer).await
}

async fn run(req: Request, app: App, progress: mpsc::Sender<Value>) -> Result<Value, String> {
    let report = move |done: u64, total: u64| {
        // A full channel just skips a progress line.
        let _ = progress.try_send(json!({ "progress": { "done": done, "total": total } }));
    };
    match req {
        Request::Ping => Ok(json!({ "version": crate::VERSION, "pid": std::process::id() })),
        Request::Backup { out } => {
            let store = app.store.clone();
            tokio::task::spawn_blocking(move || {
                let mut report = report;
                backup::backup(&store, &out, &mut report)
            })
            .await
            .map_err(|e| e.to_string())?
            .map(|s| json!(s))
            .map_err(|e| e.to_string())
        }
        Request::AuditVerify => {
            let mut report = report;
            app.store
                .read(move |r| r.verify_audit(&mut report))
                .await
                .map(|v| json!(v))
                .map_err(|e: crate::store::StoreError| e.to_string())
        }
        Request::Fsck => {
            let mut report = report;
            let blobs = app.uploads.blobs().clone();
            app.store
                .read(move |r| crate::store::fsck::check(r, &blobs, &mut report))
                .await
                .map(|v| json!(v))
                .map_err(|e: crate::store::StoreError| e.to_string())
        }
        Request::Space => {
            let file = app.store.path().to_owned();
            app.store
                .read(move |r| r.space(&file))
                .await
                .map(|v| json!(v))
                .map_err(|e: crate::store::StoreError| e.to_string())
        }
        Request::RotateSigningKey => {
            app.rotate_signing_key("cli:admin-socket").await.map(|r| json!({ "kid": r.kid })).map_err(|e| e.to_string())
        }
        Request::Reindex => {
            let Some(index) = app.search.get().cloned() else { return Err("search is not running".into()) };
            let mut report = report;
            crate::search::reindex(&app.store, &app.writer, &index, &mut report)
                .await
                .map(|n| json!({ "documents": n }))
                .map_err(|e| e.to_string())
        }
        Request::RotateVault => {
            app.rotate_vault("cli:admin-socket").await.map(|id| json!({ "key_id": id })).map_err(|e| e.to_string())
        }
        Request::CreateOperatorKey { name } => operators::create_key(&app.writer, "cli:admin-socket", &name)
            .await
            .map(|k| json!({ "id": k.key.id, "name": k.key.name, "token": k.token }))
            .map_err(|e| e.to_string()),
    }
}

async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, v: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    w.write_all(&line).await
}

/// Whether a server answers on `path`.
pub fn server_running(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach the server's admin socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server refused: {0}")]
    Refused(String),
    #[error("the server's answer was not understood: {0}")]
    Protocol(String),
}

/// Sends `req` to the server on `path`; progress lines go to `progress`.
pub fn call(path: &Path, req: &Request, progress: &mut dyn FnMut(u64, u64)) -> Result<Value, AdminError> {
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    let mut line = serde_json::to_vec(req).map_err(|e| AdminError::Protocol(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line)?;
    for line in BufReader::new(stream).lines() {
        let v: Value = serde_json::from_str(&line?).map_err(|e| AdminError::Protocol(e.to_string()))?;
        if let Some(p) = v.get("progress") {
            progress(p["done"].as_u64().unwrap_or(0), p["total"].as_u64().unwrap_or(0));
        } else if let Some(ok) = v.get("ok") {
            return Ok(ok.clone());
        } else if let Some(e) = v.get("error") {
            return Err(AdminError::Refused(e.as_str().unwrap_or("unknown error").to_owned()));
        }
    }
    Err(AdminError::Protocol("the server closed the connection without an answer".into()))
}

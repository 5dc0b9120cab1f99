//! The CLI's commands that touch a data dir. Each works the same whether or not a server has
//! that data dir open: with one running, the command goes through its admin socket; without,
//! it opens the store itself.

use std::path::Path;

use serde_json::Value;

use crate::admin::{self, Request};
use crate::app::App;
use crate::config::Config;
use crate::domain::operators;
use crate::progress::Progress;
use crate::store::audit::Verification;
use crate::store::backup::{self, BackupSummary};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error(transparent)]
    Start(#[from] crate::app::StartError),
    #[error("{0}")]
    Refused(String),
}

/// How long a command waits for a store that another process still holds (a server that has
/// just stopped releases it within moments).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens the store of a data dir no server answers for, waiting out a lock that a stopping
/// server still holds.
fn open_direct(data_dir: &Path) -> Result<Store, CommandError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match Store::open(data_dir, &mut say_err) {
            Err(StoreError::Locked) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => return Ok(other?.0),
        }
    }
}

/// Takes an online backup of `config`'s data dir into `out`.
pub fn backup(config: &Config, out: &Path) -> Result<BackupSummary, CommandError> {
    let out = absolute(out)?;
    let mut progress = Progress::new("backup");
    let summary = if admin::server_running(&config.admin_socket()) {
        let partial = out.with_extension("partial");
        let v = admin::call(&config.admin_socket(), &Request::Backup { out }, &mut |d, t| progress.update(d, t))
            .inspect_err(|_| {
                // A server that stopped (or died) mid-way could not remove what it had written.
                let _ = std::fs::remove_file(&partial);
            })?;
        from_value(v)?
    } else {
        let store = open_direct(&config.data_dir)?;
        backup::backup(&store, &out, &mut |d, t| progress.update(d, t))?
    };
    progress.finish();
    Ok(summary)
}

/// Restores `from` into `data_dir`, refusing a data dir that is in use, or not empty without
/// `force`.
pub fn restore(from: &Path, data_dir: &Path, force: bool) -> Result<BackupSummary, CommandError> {
    let socket = data_dir.join("admin.sock");
    if admin::server_running(&socket) {
        return Err(CommandError::Refused(format!("a server is running on {}; stop it first", data_dir.display())));
    }
    let non_empty = std::fs::read_dir(data_dir).is_ok_and(|mut d| d.next().is_some());
    if non_empty && !force {
        return Err(CommandError::Refused(format!(
            "{} is not empty; restoring would replace its store (pass --force to do that)",
            data_dir.display()
        )));
    }
    let mut progress = Progress::new("restore");
    let summary = backup::restore(from, data_dir, &mut |d, t| progress.update(d, t))?;
    progress.finish();
    // The restored store must open, migrate and verify like any other.
    let (store, _) = Store::open(data_dir, &mut say_err)?;
    let v = store.reader()?.verify_audit(&mut |_, _| {})?;
    if let Some(b) = v.first_broken {
        return Err(CommandError::Refused(format!(
            "the restored audit chain does not verify: org {} record {}: {}",
            b.org, b.n, b.reason
        )));
    }
    Ok(summary)
}

/// Verifies every audit chain.
pub fn audit_verify(config: &Config) -> Result<Verification, CommandError> {
    let mut progress = Progress::new("audit verify");
    let v = if admin::server_running(&config.admin_socket()) {
        from_value(admin::call(&config.admin_socket(), &Request::AuditVerify, &mut |d, t| progress.update(d, t))?)?
    } else {
        let store = open_direct(&config.data_dir)?;
        store.reader()?.verify_audit(&mut |d, t| progress.update(d, t))?
    };
    progress.finish();
    Ok(v)
}

/// Checks every file's bytes against its record, and every record against its bytes.
pub fn fsck(config: &Config) -> Result<crate::store::fsck::FsckReport, CommandError> {
    let mut progress = Progress::new("fsck");
    let v = if admin::server_running(&config.admin_socket()) {
        from_value(admin::call(&config.admin_socket(), &Request::Fsck, &mut |d, t| progress.update(d, t))?)?
    } else {
        let store = open_direct(&config.data_dir)?;
        let blobs = crate::blobs::Blobs::open(&config.data_dir).map_err(StoreError::from)?;
        crate::store::fsck::check(&store.reader()?, &blobs, &mut |d, t| progress.update(d, t))?
    };
    progress.finish();
    Ok(v)
}

/// Where the store file's bytes go, table by table.
pub fn space(config: &Config) -> Result<crate::store::space::SpaceReport, CommandError> {
    if admin::server_running(&config.admin_socket()) {
        return from_value(admin::call(&config.admin_socket(), &Request::Space, &mut |_, _| {})?);
    }
    let store = open_direct(&config.data_dir)?;
    Ok(store.reader()?.space(store.path())?)
}

/// A new operator key: (key id, the key text shown once).
pub fn create_operator_key(config: &Config, name: &str) -> Result<(String, String), CommandError> {
    if admin::server_running(&config.admin_socket()) {
        let v =
            admin::call(&config.admin_socket(), &Request::CreateOperatorKey { name: name.to_owned() }, &mut |_, _| {})?;
        let field =
            |k: &str| v[k].as_str().map(str::to_owned).ok_or_else(|| CommandError::Refused("bad answer".into()));
        return Ok((field("id")?, field("token")?));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(StoreError::from)?;
    rt.block_on(async {
        let (app, _) = App::start(offline(config)).await?;
        let created = operators::create_key(&app.writer, "cli:local", name).await;
        app.writer.shutdown().await;
        let created = created.map_err(|e| CommandError::Refused(e.to_string()))?;
        Ok((created.key.id.to_string(), created.token))
    })
}

/// Rotates the token signing key; the new key's id.
pub fn rotate_signing_key(config: &Config) -> Result<String, CommandError> {
    with_app(config, &Request::RotateSigningKey, "kid", |app| async move {
        app.rotate_signing_key("cli:local").await.map(|r| r.kid).map_err(|e| CommandError::Refused(e.to_string()))
    })
}

/// Rebuilds the search index from the store; the number of documents.
pub fn reindex(config: &Config) -> Result<String, CommandError> {
    with_app(config, &Request::Reindex, "documents", |app| async move {
        let dir = app.config.data_dir.join("search");
        let index = crate::search::SearchIndex::open(&dir).map_err(|e| CommandError::Refused(e.to_string()))?;
        let index = std::sync::Arc::new(index);
        let mut progress = Progress::new("reindex");
        let n = crate::search::reindex(&app.store, &app.writer, &index, &mut |d, t| progress.update(d, t))
            .await
            .map_err(|e| CommandError::Refused(e.to_string()))?;
        progress.finish();
        Ok(n.to_string())
    })
}

/// Rotates the vault's master key; the new key's id.
pub fn rotate_vault(config: &Config) -> Result<String, CommandError> {
    with_app(config, &Request::RotateVault, "key_id", |app| async move {
        app.rotate_vault("cli:local").await.map_err(|e| CommandError::Refused(e.to_string()))
    })
}

/// Runs `req` on the server when one runs (answer field `field`), else `local` on an App of
/// our own.
fn with_app<F, Fut>(config: &Config, req: &Request, field: &str, local: F) -> Result<String, CommandError>
where
    F: FnOnce(App) -> Fut,
    Fut: std::future::Future<Output = Result<String, CommandError>>,
{
    if admin::server_running(&config.admin_socket()) {
        let v = admin::call(&config.admin_socket(), req, &mut |_, _| {})?;
        let answer = v[field].as_str().map(str::to_owned).or_else(|| v[field].as_u64().map(|n| n.to_string()));
        return answer.ok_or_else(|| CommandError::Refused("bad answer".into()));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(StoreError::from)?;
    rt.block_on(async {
        let (app, _) = App::start(offline(config)).await?;
        let out = local(app.clone()).await;
        app.writer.shutdown().await;
        out
    })
}

/// The configuration a command runs on when no server does: the store only. The media relay
/// and the TURN server listen on the network, and a command has no use for them.
fn offline(config: &Config) -> Config {
    let mut c = config.clone();
    c.media.rtc_listen = None;
    c.media.turn_listen = None;
    c
}

fn from_value<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, CommandError> {
    serde_json::from_value(v).map_err(|e| CommandError::Refused(format!("unexpected answer from the server: {e}")))
}

fn absolute(p: &Path) -> Result<std::path::PathBuf, CommandError> {
    std::path::absolute(p).map_err(|e| CommandError::Store(e.into()))
}

/// A line for the operator on stderr; a closed or full stderr drops it rather than failing the
/// command.
fn say_err(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

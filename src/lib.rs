//! Outpost: a multi-tenant, real-time collaboration platform in one binary.
//!
//! `run` serves one data dir on one listener until `shutdown` resolves. The layers, in one
//! direction: `http` (transport) → `auth` → `domain` → `store`. See ARCHITECTURE.md.

pub mod admin;
pub mod app;
pub mod auth;
pub mod commands;
pub mod config;
pub mod domain;
pub mod http;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod ops;
pub mod progress;
pub mod store;
pub mod tenancy;
pub mod tls;
pub mod vault;

use std::future::Future;
use std::time::Duration;

use poem::listener::{Acceptor, AcceptorExt, TcpAcceptor};

pub use app::App;
pub use config::Config;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start: {0}")]
    Start(#[from] app::StartError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Serves `config` on `listener` until `shutdown` resolves, then stops accepting, drains
/// in-flight requests (up to the configured bound), commits everything queued and returns.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let (app, report) = App::start(config).await?;
    let admin_path = app.config.admin_socket();
    let admin = admin::bind(&admin_path)?;
    let mut background = tokio::task::JoinSet::new();
    background.spawn(admin::serve(admin, app.clone()));
    background.spawn(app.clone().retention_loop());
    background.spawn(ops::watchdog(app.clone()));

    let tcp = TcpAcceptor::from_tokio(listener)?;
    let acceptor = match (&app.config.tls.cert_file, &app.config.tls.key_file) {
        (Some(cert), Some(key)) => {
            let tls =
                tls::Reloadable::open(cert, key).map_err(|e| RunError::Io(std::io::Error::other(e.to_string())))?;
            background.spawn(tls.clone().watch(Duration::from_secs(app.config.tls.reload_interval_s.max(1))));
            tls::TlsAcceptor::new(tcp, tls).boxed()
        }
        _ => tcp.boxed(),
    };
    let addr = acceptor
        .local_addr()
        .iter()
        .find_map(|a| a.as_socket_addr().copied())
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(
        listen = %addr,
        data_dir = %app.config.data_dir.display(),
        epoch = report.epoch,
        created = report.created,
        version = VERSION,
        "outpost is ready"
    );
    if !has_operator_key(&app) {
        tracing::info!(
            "no operator key yet: create one with `outpost operator create-key --data {}`",
            app.config.data_dir.display()
        );
    }
    ops::notify_ready();

    let drain = Duration::from_millis(app.config.shutdown.drain_timeout_ms);
    let stopping = async move {
        shutdown.await;
        ops::notify_stopping();
        tracing::info!("stopping: draining requests");
    };
    let served = poem::Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(http::routes(app.clone()), stopping, Some(drain))
        .await;
    background.shutdown().await;
    let _ = std::fs::remove_file(&admin_path);
    app.writer.shutdown().await;
    tracing::info!("stopped");
    served.map_err(RunError::from)
}

fn has_operator_key(app: &App) -> bool {
    app.store
        .reader()
        .and_then(|r| r.range(store::tables::OPERATOR_KEYS, &[], &[0xff; 33], false, 1))
        .is_ok_and(|rows| !rows.is_empty())
}

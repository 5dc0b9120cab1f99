//! Outpost: a multi-tenant, real-time collaboration platform in one binary.
//!
//! `run` serves one data dir on one listener until `shutdown` resolves. The layers, in one
//! direction: `http` (transport) → `auth` → `domain` → `store`. See ARCHITECTURE.md.

pub mod admin;
pub mod app;
pub mod auth;
pub mod commands;
pub mod config;
pub mod docs;
pub mod domain;
pub mod http;
pub mod ids;
pub mod limits;
pub mod media;
pub mod metrics;
pub mod ops;
pub mod progress;
pub mod realtime;
pub mod search;
pub mod store;
pub mod tenancy;
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
    background.spawn(app.hub.clone().run(app.bus.subscribe(), app.store.clone(), app.bus.head_gseq()));
    background.spawn(app.hub.clone().expire_locks());
    background.spawn(app.hub.busy.clone().sample());
    background.spawn(app.docs.clone().janitor());
    if let Some(turn) = app.turn.clone() {
        background.spawn(turn.watch(app.metrics.clone()));
    }
    if let Some(sfu) = app.sfu.clone() {
        background.spawn(sfu.follow_rooms(app.bus.subscribe(), app.store.clone(), app.bus.head_gseq()));
    }

    let (stop_search, search_stopped) = tokio::sync::watch::channel(false);
    let search_task = start_search(&app, search_stopped).await?;

    let tcp = http::tls::NoDelay(TcpAcceptor::from_tokio(listener)?);
    let acceptor = match (&app.config.tls.cert_file, &app.config.tls.key_file) {
        (Some(cert), Some(key)) => {
            let tls = http::tls::Reloadable::open(cert, key)
                .map_err(|e| RunError::Io(std::io::Error::other(e.to_string())))?;
            background.spawn(tls.clone().watch(Duration::from_secs(app.config.tls.reload_interval_s.max(1))));
            http::tls::TlsAcceptor::new(tcp, tls).boxed()
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
    let hub = app.hub.clone();
    let stopping = async move {
        shutdown.await;
        ops::notify_stopping();
        // Realtime sockets close with going-away and their resume positions.
        hub.shutdown();
        tracing::info!("stopping: draining requests");
    };
    let served = poem::Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(http::routes(app.clone()), stopping, Some(drain))
        .await;
    background.shutdown().await;
    if let Some(turn) = &app.turn {
        turn.close().await;
    }
    // The indexer finishes the batch it is on (it holds the store until then).
    let _ = stop_search.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), search_task).await;
    let _ = std::fs::remove_file(&admin_path);
    app.writer.shutdown().await;
    // Tasks that held the app (connections being torn down, finished reads) let go of it
    // within moments; wait for that, so the data dir is free for whoever comes next.
    let store = app.store.clone();
    drop(app);
    let released = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.handles() > 1 && tokio::time::Instant::now() < released {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(store);
    tracing::info!("stopped");
    served.map_err(RunError::from)
}

/// Opens the search index (filling a new one from the store first) and starts its follower.
async fn start_search(
    app: &App,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, RunError> {
    let search_err = |e: search::SearchError| RunError::Io(std::io::Error::other(e.to_string()));
    let dir = app.config.data_dir.join("search");
    let index = tokio::task::spawn_blocking(move || search::SearchIndex::open(&dir))
        .await
        .map_err(|e| RunError::Io(std::io::Error::other(e.to_string())))?
        .map_err(search_err)?;
    let index = std::sync::Arc::new(index);
    if index.created {
        reindex(app, &index, &mut |_, _| {}).await.map_err(search_err)?;
        tracing::info!(documents = index.len(), "search index built from the store");
    }
    let _ = app.search.set(index.clone());
    Ok(tokio::spawn(search::follow(app.clone(), index, stop)))
}

/// Rebuilds `index` from the store and moves the search follower to the log head it saw.
pub async fn reindex(
    app: &App,
    index: &std::sync::Arc<search::SearchIndex>,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<u64, search::SearchError> {
    let (store, idx) = (app.store.clone(), index.clone());
    // The progress callback stays on this side; the blocking task reports totals only.
    let head = tokio::task::spawn_blocking(move || search::rebuild(&store, &idx, &mut |_, _| {}))
        .await
        .map_err(|e| search::SearchError::Dir(e.to_string()))??;
    progress(index.len(), index.len());
    store::events::set_checkpoint(&app.writer, search::FOLLOWER, head).await?;
    Ok(index.len())
}

fn has_operator_key(app: &App) -> bool {
    app.store
        .reader()
        .and_then(|r| r.range(store::tables::OPERATOR_KEYS, &[], &[0xff; 33], false, 1))
        .is_ok_and(|rows| !rows.is_empty())
}

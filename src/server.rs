//! The server: `run` serves one data dir on one listener until its shutdown future resolves.
//!
//! It starts the running parts (`App`), the admin socket, the background loops (retention, the
//! realtime dispatcher, the document janitor, the media followers, the search indexer, systemd's
//! watchdog), serves HTTP (hyper's connections, each with its socket's own type, running the
//! poem routes), and on shutdown drains requests, closes sockets with going-away,
//! stops the followers and flushes the writer. This is the top of the layers: it may use any
//! module, and none uses it.
//!
//! `sd_notify` messages go out only when systemd asked for them (`NOTIFY_SOCKET` set);
//! otherwise they are no-ops.

use std::future::Future;
use std::time::Duration;

use poem::listener::{Acceptor, TcpAcceptor};
use poem::{Endpoint, EndpointExt, IntoEndpoint};

use crate::app::{self, App};
use crate::config::Config;
use crate::{admin, http, search, store};

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
    spawn_background(&app, &mut background);
    let (stop_search, search_stopped) = tokio::sync::watch::channel(false);
    let search_task = start_search(&app, search_stopped).await?;
    let webhooks_task = tokio::spawn(app.webhooks.clone().run(app.followers.clone()));
    if app.config.services.health_checks {
        background.spawn(app.registry.clone().run(stop_search.subscribe()));
        background.spawn(app.mcp.clone().run(stop_search.subscribe()));
    }
    let tcp = http::tls::NoDelay(TcpAcceptor::from_tokio(listener)?);
    let acceptor = match (&app.config.tls.cert_file, &app.config.tls.key_file) {
        (Some(cert), Some(key)) => {
            let tls = http::tls::Reloadable::open(cert, key)
                .map_err(|e| RunError::Io(std::io::Error::other(e.to_string())))?;
            background.spawn(tls.clone().watch(Duration::from_secs(app.config.tls.reload_interval_s.max(1))));
            Listening::Tls(http::tls::TlsAcceptor::new(tcp, tls))
        }
        _ => Listening::Plain(tcp),
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
        version = crate::VERSION,
        "outpost is ready"
    );
    if !has_operator_key(&app) {
        // Under a service manager the server runs as its own user (systemd sets USER): the key
        // must be made as that user too, or the files it writes belong to whoever ran it.
        let as_user = std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty() && u != "root" && std::env::var_os("NOTIFY_SOCKET").is_some())
            .map(|u| format!("sudo -u {u} "))
            .unwrap_or_default();
        tracing::info!(
            "no operator key yet: create one with `{as_user}{} operator create-key --data {}`",
            this_binary(),
            app.config.data_dir.display()
        );
    }
    notify_ready();

    let drain = Duration::from_millis(app.config.shutdown.drain_timeout_ms);
    let hub = app.hub.clone();
    let stopping = async move {
        shutdown.await;
        notify_stopping();
        // Realtime sockets close with going-away and their resume positions.
        hub.shutdown();
        tracing::info!("stopping: draining requests");
    };
    let routes = http::routes(app.clone());
    let edge = Edge {
        gate: http::gate::Gate::new(
            app.config.http.connections_max,
            app.config.http.connections_per_addr_max,
            app.metrics.clone(),
        ),
        header_read_timeout: Duration::from_millis(app.config.http.header_read_timeout_ms),
        pace_after_429: app.config.http.pace_after_429,
        drain,
    };
    let served = match acceptor {
        Listening::Tls(a) => serve_http(a, routes, stopping, edge).await,
        Listening::Plain(a) => serve_http(a, routes, stopping, edge).await,
    };
    background.shutdown().await;
    if let Some(turn) = &app.turn {
        turn.close().await;
    }
    // The indexer finishes the batch it is on (it holds the store until then).
    let _ = stop_search.send(true);
    app.webhooks.stop();
    let _ = tokio::time::timeout(Duration::from_secs(30), async { (search_task.await, webhooks_task.await) }).await;
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

/// The listener: plain TCP, or TLS over it.
enum Listening {
    Plain(http::tls::NoDelay),
    Tls(http::tls::TlsAcceptor<http::tls::NoDelay>),
}

impl Listening {
    fn local_addr(&self) -> Vec<poem::web::LocalAddr> {
        match self {
            Self::Plain(a) => a.local_addr(),
            Self::Tls(a) => a.local_addr(),
        }
    }
}

/// What bounds the connections before any request: the gate, the time to send headers, the
/// pause after a 429, and how long a stop waits for requests in flight.
struct Edge {
    gate: http::gate::Gate,
    header_read_timeout: Duration,
    pace_after_429: bool,
    drain: Duration,
}

/// Serves `routes` on the connections `acceptor` gives until `stop` resolves; then stops
/// accepting, asks every connection to finish its request in flight and close, and waits for
/// them up to the drain bound. A connection the gate does not admit gets one `overloaded`
/// answer instead.
///
/// Each connection keeps its own type (poem's server boxes them, which hides the socket's
/// vectored writes from hyper, so every answer's body would be copied once more into hyper's
/// buffer before the kernel copies it again: a megabyte per download of a megabyte).
async fn serve_http<A: Acceptor>(
    mut acceptor: A,
    routes: impl IntoEndpoint<Endpoint: 'static>,
    stop: impl Future<Output = ()>,
    edge: Edge,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    type Answer = hyper::Response<http_body_util::combinators::BoxBody<bytes::Bytes, std::io::Error>>;

    let routes = std::sync::Arc::new(routes.into_endpoint().map_to_response());
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(edge.header_read_timeout);
    let mut shed_builder = auto::Builder::new(TokioExecutor::new());
    shed_builder.http1().timer(TokioTimer::new()).header_read_timeout(http::gate::SHED_FOR).keep_alive(false);
    let mut stop = std::pin::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = acceptor.accept() => accepted,
            () = &mut stop => break,
        };
        let (io, local, remote, scheme) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: the listener stays; try again shortly.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admitted = match edge.gate.admit(remote.as_socket_addr().map(std::net::SocketAddr::ip)) {
            http::gate::Admission::Served(admitted) => admitted,
            http::gate::Admission::Shed(shedding) => {
                let service = hyper::service::service_fn(|_req: hyper::Request<hyper::body::Incoming>| async {
                    Ok::<Answer, std::convert::Infallible>(http::gate::overloaded().into())
                });
                let conn = shed_builder.serve_connection(TokioIo::new(io), service).into_owned();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(http::gate::SHED_FOR, conn).await;
                    drop(shedding);
                });
                continue;
            }
            http::gate::Admission::Dropped => continue,
        };
        let routes = routes.clone();
        let pause = std::sync::Arc::new(http::gate::Pause::default());
        let io = http::gate::Paced::new(io, pause.clone());
        let pace = edge.pace_after_429;
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let (routes, pause) = (routes.clone(), pause.clone());
            let version = req.version();
            let req = poem::Request::from((req, local.clone(), remote.clone(), scheme.clone()));
            async move {
                let resp = routes.get_response(req).await;
                if let Some(wait) = http::gate::pause_for(version, &resp).filter(|_| pace) {
                    pause.set(wait);
                }
                Ok::<Answer, std::convert::Infallible>(resp.into())
            }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
        let conn = connections.watch(conn);
        tokio::spawn(async move {
            // A connection's end (the peer gone, a broken request) is the peer's business.
            let _ = conn.await;
            drop(admitted);
        });
    }
    drop(acceptor);
    if tokio::time::timeout(edge.drain, connections.shutdown()).await.is_err() {
        tracing::info!(
            drain_ms = edge.drain.as_millis() as u64,
            "stopping: requests still in flight after the drain bound"
        );
    }
    Ok(())
}

/// The background work that runs while the server does (stopped with the set).
fn spawn_background(app: &App, background: &mut tokio::task::JoinSet<()>) {
    background.spawn(app.clone().retention_loop());
    background.spawn(watchdog(app.clone()));
    background.spawn(app.hub.clone().run(app.bus.subscribe(), app.store.clone(), app.bus.head_gseq()));
    background.spawn(app.hub.clone().expire_locks());
    background.spawn(app.hub.busy.clone().sample());
    background.spawn(app.docs.clone().janitor());
    background.spawn(app.uploads.clone().run(app.store.clone(), app.writer.clone()));
    if let Some(turn) = app.turn.clone() {
        background.spawn(turn.watch(app.metrics.clone()));
    }
    if let Some(sfu) = app.sfu.clone() {
        background.spawn(sfu.follow_rooms(app.bus.subscribe(), app.store.clone(), app.bus.head_gseq()));
    }
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
        search::reindex(&app.store, &app.writer, &index, &mut |_, _| {}).await.map_err(search_err)?;
        tracing::info!(documents = index.len(), "search index built from the store");
    }
    let _ = app.search.set(index.clone());
    Ok(tokio::spawn(search::follow(
        app.store.clone(),
        app.bus.clone(),
        app.writer.clone(),
        app.followers.clone(),
        index,
        stop,
    )))
}

/// How to run this binary again, as it was started: `target/release/outpost` under
/// `cargo run`, `outpost` when it was found on the `PATH` (or when the server runs inside
/// another program, such as a test).
fn this_binary() -> String {
    let argv0 = std::env::args().next().unwrap_or_default();
    let ours = std::path::Path::new(&argv0).file_name().is_some_and(|n| n == "outpost");
    if ours { argv0 } else { "outpost".to_owned() }
}

fn has_operator_key(app: &App) -> bool {
    app.store
        .reader()
        .and_then(|r| r.range(store::tables::OPERATOR_KEYS, &[], &[0xff; 33], false, 1))
        .is_ok_and(|rows| !rows.is_empty())
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

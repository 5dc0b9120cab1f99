//! What the load programs that run a peer in their own process share: command-line arguments,
//! percentiles, and serving on loopback.

/// The value after `--name` on the command line, or `default`.
pub fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == &format!("--{name}"))
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

/// The `p` percentile (nearest rank) of `sorted`, or the default value when it is empty.
pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Serves `app` on loopback `port` (0: a free one), bound before it returns; its base URL.
pub async fn serve_loopback(app: impl poem::Endpoint + 'static, port: u16) -> String {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("load program");
    let addr = listener.local_addr().expect("load program");
    let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).expect("load program");
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
    format!("http://{addr}")
}

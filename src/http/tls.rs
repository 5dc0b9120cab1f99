//! TLS from certificate and key files (rustls with the ring provider), reloaded without a
//! restart when the files change.
//!
//! A poem `Acceptor` over the TCP acceptor: each accepted connection does its handshake lazily,
//! on first use, so a slow client never holds up accepting others. The current server
//! configuration sits behind a lock that a watcher task swaps when the files change; a
//! configuration that fails to load is logged and the previous one stays in force.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {detail}")]
    File { path: String, detail: String },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(String),
}

/// Reads `cert` (PEM chain) and `key` (PEM private key) into a server configuration.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let file_err =
        |p: &Path, e: &dyn std::fmt::Display| TlsError::File { path: p.display().to_string(), detail: e.to_string() };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, &e))?;
    if certs.is_empty() {
        return Err(file_err(cert, &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, &e))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The configuration in force, swappable.
#[derive(Clone)]
pub struct Reloadable {
    current: Arc<RwLock<Arc<ServerConfig>>>,
    cert: PathBuf,
    key: PathBuf,
}

impl Reloadable {
    pub fn open(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(Self { current: Arc::new(RwLock::new(load(cert, key)?)), cert: cert.to_path_buf(), key: key.to_path_buf() })
    }

    fn get(&self) -> Arc<ServerConfig> {
        self.current.read().map_or_else(|p| p.into_inner().clone(), |c| c.clone())
    }

    /// Watches the files every `every` and loads them again when either changes.
    pub async fn watch(self, every: Duration) {
        let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut seen: (Option<SystemTime>, Option<SystemTime>) = (stamp(&self.cert), stamp(&self.key));
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let now = (stamp(&self.cert), stamp(&self.key));
            if now == seen {
                continue;
            }
            seen = now;
            match load(&self.cert, &self.key) {
                Ok(c) => {
                    match self.current.write() {
                        Ok(mut g) => *g = c,
                        Err(p) => *p.into_inner() = c,
                    }
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                }
                Err(e) => tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays"),
            }
        }
    }
}

/// Accepts TCP connections and speaks TLS on them.
pub struct TlsAcceptor<A> {
    inner: A,
    config: Reloadable,
}

impl<A> TlsAcceptor<A> {
    pub fn new(inner: A, config: Reloadable) -> Self {
        Self { inner, config }
    }
}

impl<A> Acceptor for TlsAcceptor<A>
where
    A: Acceptor,
    A::Io: 'static,
{
    type Io = LazyTls<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let (io, local, remote, _) = self.inner.accept().await?;
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.get());
        Ok((LazyTls::Handshaking(acceptor.accept(io).boxed()), local, remote, Scheme::HTTPS))
    }
}

/// A TLS stream whose handshake runs on first read or write.
pub enum LazyTls<S> {
    Handshaking(BoxFuture<'static, io::Result<TlsStream<S>>>),
    Ready(Box<TlsStream<S>>),
    Failed,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> LazyTls<S> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut TlsStream<S>>> {
        loop {
            match self {
                LazyTls::Handshaking(f) => match f.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(s)) => *self = LazyTls::Ready(Box::new(s)),
                    Poll::Ready(Err(e)) => {
                        *self = LazyTls::Failed;
                        return Poll::Ready(Err(e));
                    }
                },
                LazyTls::Ready(s) => return Poll::Ready(Ok(s)),
                LazyTls::Failed => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::NotConnected, "TLS handshake failed")));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> AsyncRead for LazyTls<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().poll_ready(cx) {
            Poll::Ready(Ok(s)) => Pin::new(s).poll_read(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> AsyncWrite for LazyTls<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut().poll_ready(cx) {
            Poll::Ready(Ok(s)) => Pin::new(s).poll_write(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().poll_ready(cx) {
            Poll::Ready(Ok(s)) => Pin::new(s).poll_flush(cx),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LazyTls::Ready(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// Accepted TCP connections with Nagle's algorithm off: realtime frames and small answers go
/// out at once instead of waiting for the peer's delayed acknowledgement.
pub struct NoDelay(pub poem::listener::TcpAcceptor);

impl Acceptor for NoDelay {
    type Io = tokio::net::TcpStream;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.0.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let (io, local, remote, scheme) = self.0.accept().await?;
        // Best effort: a socket that refuses the option still works.
        let _ = io.set_nodelay(true);
        Ok((io, local, remote, scheme))
    }
}

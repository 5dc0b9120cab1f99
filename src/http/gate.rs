//! The connection gate: how many connections the server holds at once, in all
//! (`http.connections_max`) and from one client address (`http.connections_per_addr_max`).
//!
//! A connection over either bound is not served. It gets one answer, `503 overloaded` with
//! `Retry-After`, and is closed. Shedding is bounded too (`SHEDDING_MAX` at once, each for at
//! most `SHED_FOR`); past that, a new connection is closed without an answer. So a flood of
//! connections, from one address or from everyone, costs a bounded amount of memory, and the
//! clients that already hold a connection keep being served.
//!
//! Requests on admitted connections meet the rate limits (`limits`) and the writer's queue
//! bound; this gate bounds what comes before any request is read. And a connection that was
//! just answered 429 is read no further until its `Retry-After` has passed (`Paced`): a client
//! that ignores it, asking again at once, is slowed to what it is allowed instead of taking
//! the server's time from everyone else (`http.pace_after_429`; HTTP/1 only, where a
//! connection carries one client's requests in turn).

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use poem::http::StatusCode;
use poem::{IntoResponse, Response};

use super::problem::Problem;
use crate::metrics::Metrics;

/// Connections being answered `overloaded` at once, at most.
pub const SHEDDING_MAX: usize = 1024;
/// Longest a shed connection is held (for its first request's headers and the answer).
pub const SHED_FOR: Duration = Duration::from_secs(3);

/// Counts connections as they open and close.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

struct Inner {
    max: usize,
    per_addr_max: usize,
    open: AtomicUsize,
    by_addr: Mutex<HashMap<IpAddr, usize>>,
    shedding: AtomicUsize,
    metrics: Arc<Metrics>,
}

/// What becomes of a new connection.
pub enum Admission {
    /// Served; the connection counts as open until this is dropped.
    Served(Admitted),
    /// Answered `overloaded` and closed; counts as shedding until this is dropped.
    Shed(Shedding),
    /// Closed at once: too many are being shed already.
    Dropped,
}

/// An open connection's place.
pub struct Admitted {
    inner: Arc<Inner>,
    addr: Option<IpAddr>,
}

/// A shed connection's place.
pub struct Shedding {
    inner: Arc<Inner>,
}

impl Gate {
    pub fn new(max: usize, per_addr_max: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::new(Inner {
                max,
                per_addr_max,
                open: AtomicUsize::new(0),
                by_addr: Mutex::new(HashMap::new()),
                shedding: AtomicUsize::new(0),
                metrics,
            }),
        }
    }

    /// Decides on a connection from `addr` (none for a Unix socket, which has no bound of its
    /// own address).
    pub fn admit(&self, addr: Option<IpAddr>) -> Admission {
        let inner = &self.inner;
        let addr = addr.map(|a| a.to_canonical());
        let admitted = {
            let mut by_addr = inner.by_addr.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let from_addr = addr.map_or(0, |a| by_addr.get(&a).copied().unwrap_or(0));
            if inner.open.load(Ordering::Relaxed) < inner.max && from_addr < inner.per_addr_max {
                inner.open.fetch_add(1, Ordering::Relaxed);
                if let Some(a) = addr {
                    *by_addr.entry(a).or_insert(0) += 1;
                }
                true
            } else {
                false
            }
        };
        if admitted {
            inner.metrics.connections_open.inc();
            return Admission::Served(Admitted { inner: inner.clone(), addr });
        }
        inner.metrics.connections_shed.inc();
        if inner.shedding.fetch_add(1, Ordering::Relaxed) < SHEDDING_MAX {
            Admission::Shed(Shedding { inner: inner.clone() })
        } else {
            inner.shedding.fetch_sub(1, Ordering::Relaxed);
            Admission::Dropped
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Relaxed)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let inner = &self.inner;
        if let Some(a) = self.addr {
            let mut by_addr = inner.by_addr.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(n) = by_addr.get_mut(&a) {
                *n -= 1;
                if *n == 0 {
                    by_addr.remove(&a);
                }
            }
        }
        inner.open.fetch_sub(1, Ordering::Relaxed);
        inner.metrics.connections_open.dec();
    }
}

impl Drop for Shedding {
    fn drop(&mut self) {
        self.inner.shedding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The one answer a shed connection gets.
pub fn overloaded() -> Response {
    let mut p = Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "the server holds as many connections as it takes (from this address, or in all); retry shortly",
    );
    p.retry_after_s = Some(1);
    let mut resp = p.into_response();
    resp.headers_mut().insert(poem::http::header::CONNECTION, poem::http::HeaderValue::from_static("close"));
    resp
}

/// Longest a connection is paused after a 429, whatever its `Retry-After` says.
pub const PAUSE_MAX: Duration = Duration::from_secs(5);

/// When a connection may be read again: set by the answer, read by the connection.
#[derive(Default)]
pub struct Pause {
    base: std::sync::OnceLock<Instant>,
    /// Milliseconds after `base`; 0: not paused.
    until_ms: AtomicU64,
}

impl Pause {
    fn base(&self) -> Instant {
        *self.base.get_or_init(Instant::now)
    }

    /// Reads nothing more for `for_` (at most `PAUSE_MAX`).
    pub fn set(&self, for_: Duration) {
        let until = Instant::now() + for_.min(PAUSE_MAX);
        let ms = until.duration_since(self.base()).as_millis() as u64;
        self.until_ms.store(ms.max(1), Ordering::Relaxed);
    }

    fn until(&self) -> Option<Instant> {
        match self.until_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.base() + Duration::from_millis(ms)),
        }
    }
}

/// A connection whose reads wait while its `Pause` is set; writes (the answer) go on.
pub struct Paced<T> {
    inner: T,
    pause: Arc<Pause>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Paced<T> {
    pub fn new(inner: T, pause: Arc<Pause>) -> Self {
        Self { inner, pause, sleep: None }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Paced<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if let Some(until) = self.pause.until() {
            if Instant::now() < until {
                let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
                if sleep.deadline() != until {
                    sleep.as_mut().reset(until);
                }
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            // Cleared unless a newer pause was set meanwhile.
            let ms = until.duration_since(self.pause.base()).as_millis() as u64;
            let _ = self.pause.until_ms.compare_exchange(ms, 0, Ordering::Relaxed, Ordering::Relaxed);
            self.sleep = None;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Paced<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The pause an answer asks for: a 429's `Retry-After`, on HTTP/1.
pub fn pause_for(version: poem::http::Version, resp: &Response) -> Option<Duration> {
    if resp.status() != StatusCode::TOO_MANY_REQUESTS || version >= poem::http::Version::HTTP_2 {
        return None;
    }
    let secs: u64 = resp.headers().get(poem::http::header::RETRY_AFTER)?.to_str().ok()?.parse().ok()?;
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn gate(max: usize, per_addr: usize) -> Gate {
        Gate::new(max, per_addr, Arc::new(Metrics::new()))
    }

    #[test]
    fn bounds_hold_per_address_and_in_all_and_free_on_drop() {
        let g = gate(3, 2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "::ffff:127.0.0.3".parse().unwrap();
        let a1 = g.admit(Some(a));
        let a2 = g.admit(Some(a));
        assert!(matches!(a1, Admission::Served(_)) && matches!(a2, Admission::Served(_)));
        assert!(matches!(g.admit(Some(a)), Admission::Shed(_)), "a third from one address");
        let b1 = g.admit(Some(b));
        assert!(matches!(b1, Admission::Served(_)));
        assert!(matches!(g.admit(Some("127.0.0.3".parse().unwrap())), Admission::Shed(_)), "over the total");
        assert_eq!(g.open(), 3);
        drop(a1);
        assert_eq!(g.open(), 2);
        assert!(matches!(g.admit(Some(a)), Admission::Served(_)), "room again once one closed");
        drop((a2, b1));
        assert!(g.inner.by_addr.lock().unwrap().is_empty(), "a closed address leaves no entry");
        assert_eq!(g.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_connection_reads_nothing_until_its_time() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(64);
        let pause = Arc::new(Pause::default());
        let mut paced = Paced::new(near, pause.clone());
        far.write_all(b"one").await.unwrap();
        let mut buf = [0u8; 3];
        paced.read_exact(&mut buf).await.unwrap();
        pause.set(Duration::from_secs(1));
        far.write_all(b"two").await.unwrap();
        let t0 = Instant::now();
        paced.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"two");
        assert!(t0.elapsed() >= Duration::from_secs(1), "read before the pause ended");
        // Writes are not paused, and once it has passed the pause is gone.
        pause.set(Duration::from_secs(60));
        paced.write_all(b"answer").await.unwrap();
        let mut answer = [0u8; 6];
        far.read_exact(&mut answer).await.unwrap();
        far.write_all(b"three").await.unwrap();
        let t0 = Instant::now();
        let mut three = [0u8; 5];
        paced.read_exact(&mut three).await.unwrap();
        assert_eq!(t0.elapsed().as_secs(), PAUSE_MAX.as_secs(), "a pause is at most PAUSE_MAX");
        assert!(pause.until().is_none());
    }

    #[test]
    fn shedding_is_bounded_too() {
        let g = gate(0, 0);
        let shed: Vec<_> = (0..SHEDDING_MAX).map(|_| g.admit(None)).collect();
        assert!(shed.iter().all(|s| matches!(s, Admission::Shed(_))));
        assert!(matches!(g.admit(None), Admission::Dropped));
        drop(shed);
        assert!(matches!(g.admit(None), Admission::Shed(_)));
    }
}

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
//! bound; this gate bounds what comes before any request is read.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

//! What every WebSocket session of the API shares, whatever it speaks (the realtime protocol,
//! y-websocket): writes under one time limit, the keep-alive ping, the closing handshake, the
//! periodic re-check of the caller (from what their credential proved), the audit context of a
//! socket's changes, and the token bucket for ephemeral frames.

use std::time::{Duration, Instant};

use crate::app::App;
use crate::auth::{self, AuthError, Principal, Proof};
use crate::http::ws::{Message, ReadError, WebSocket};
use crate::store::writer::MutationCtx;
use crate::tenancy::OrgScope;

/// A write the client does not take within this long ends the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing socket waits for the client's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// An upgraded socket, both directions (`crate::http::ws`).
pub type Socket = WebSocket;

/// Why a session ends.
pub enum End {
    /// The socket is gone; nothing more to say.
    Gone,
    /// Close with this code and reason.
    Close(u16, String),
}

impl End {
    /// How a failed read ends the session: a client that broke the protocol is told so.
    pub fn on_read(e: &ReadError) -> Self {
        match e {
            ReadError::Io(_) => End::Gone,
            ReadError::Protocol(code, reason) => End::Close(*code, (*reason).to_owned()),
        }
    }
}

/// A write that did not go through in time: the socket is as good as gone.
pub struct WriteFailed;

impl From<WriteFailed> for End {
    fn from(_: WriteFailed) -> Self {
        End::Gone
    }
}

impl From<std::io::Error> for WriteFailed {
    fn from(_: std::io::Error) -> Self {
        WriteFailed
    }
}

/// Runs `write` (feeds and a flush) within `WRITE_TIMEOUT`.
pub async fn timed<T, E>(write: impl Future<Output = Result<T, E>>) -> Result<T, WriteFailed> {
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(x)) => Ok(x),
        _ => Err(WriteFailed),
    }
}

/// Keep-alive: intermediaries see traffic, and a dead peer shows up as a failed write.
pub async fn ping(ws: &mut Socket) -> Result<(), WriteFailed> {
    timed(ws.ping()).await
}

/// The closing handshake: our close frame, then the client's answer (for a moment), so the
/// socket is not torn down under data the client has yet to read.
pub async fn bye(ws: &mut Socket, code: u16, reason: &str) {
    if timed(ws.close(code, reason)).await.is_err() {
        return;
    }
    let answered = async {
        while let Some(Ok(m)) = ws.recv().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, answered).await;
    let _ = timed(ws.shutdown()).await;
}

/// The close codes a protocol gives a lapsed token, and what it tells a client whose access
/// token expired.
pub struct LapseCodes {
    pub expired: u16,
    pub expired_reason: &'static str,
    pub revoked: u16,
}

/// When a socket checks its caller again ([`recheck`]) and pings: every `realtime.recheck_s`,
/// the first a period after it opens (the credential was checked as it opened), a late tick
/// delaying the next rather than bunching them.
pub fn recheck_every(app: &App) -> tokio::time::Interval {
    let every = Duration::from_secs(app.config.realtime.recheck_s);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Checks a socket's caller again from what their credential proved when the socket opened
/// (the credential itself is not kept): the caller as they stand now, `None` when the store could
/// not say (a hiccup is not a verdict on the session; look again next time), or how to close when
/// the token expired or its session, user or organization no longer stands.
pub async fn recheck(app: &App, proof: &Proof, codes: &LapseCodes) -> Result<Option<Principal>, End> {
    match auth::stand(&app.store, &app.auth_caches, proof).await {
        Ok(p) => Ok(Some(p)),
        Err(AuthError::Store(e)) => {
            tracing::warn!(error = %e, "a socket's recheck could not read the store");
            Ok(None)
        }
        Err(AuthError::Token(_)) => Err(End::Close(codes.expired, codes.expired_reason.to_owned())),
        Err(e) => Err(End::Close(codes.revoked, e.to_string())),
    }
}

/// The context of a change a socket's user makes (no HTTP request behind it).
pub fn socket_ctx(p: &Principal) -> MutationCtx {
    MutationCtx { scope: OrgScope::member(p), actor: p.actor(), request_id: None, client_addr: None }
}

/// A token bucket for ephemeral frames: `rate` a second, bursts of twice that.
pub struct Budget {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Budget {
    pub fn new(rate: u32) -> Self {
        let rate = f64::from(rate);
        Self { rate, tokens: 2.0 * rate, at: Instant::now() }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    fn take_at(&mut self, now: Instant) -> bool {
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(2.0 * self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_a_burst_of_twice_the_rate_then_refills() {
        let mut b = Budget::new(5);
        let t0 = b.at;
        assert_eq!((0..20).filter(|_| b.take_at(t0)).count(), 10);
        // A fifth of a second later one token is back (5 a second), and only one.
        let later = t0 + Duration::from_millis(200);
        assert!(b.take_at(later));
        assert!(!b.take_at(later));
    }
}

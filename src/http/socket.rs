//! What every WebSocket session of the API shares, whatever it speaks (the realtime protocol,
//! y-websocket): writes under one time limit, the keep-alive ping, the closing handshake, the
//! periodic re-check of the caller's token, the audit context of a socket's changes, and the
//! token bucket for ephemeral frames.

use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use poem::web::websocket::{CloseCode, Message, WebSocketStream};

use crate::app::App;
use crate::auth::{self, AuthError, Principal};
use crate::store::writer::MutationCtx;
use crate::tenancy::OrgScope;

/// A write the client does not take within this long ends the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing socket waits for the client's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

pub type Sink = SplitSink<WebSocketStream, Message>;
pub type Stream = SplitStream<WebSocketStream>;

/// Why a session ends.
pub enum End {
    /// The socket is gone; nothing more to say.
    Gone,
    /// Close with this code and reason.
    Close(u16, String),
}

/// Runs a socket's session as a task of its own, for `on_upgrade` when the session lasts as long
/// as the socket (the Yjs socket's does; the realtime socket's opening ends and spawns its loop).
/// poem's upgrade task would
/// otherwise hold the session's future inside its own for the socket's whole life, with what
/// it keeps beside it (the request's protocol header, which may carry the access token, among
/// it): a few hundred bytes per open socket, freed here as soon as the upgrade is done.
pub fn detached(session: impl Future<Output = ()> + Send + 'static) -> std::future::Ready<()> {
    tokio::spawn(session);
    std::future::ready(())
}

/// A write that did not go through in time: the socket is as good as gone.
pub struct WriteFailed;

impl From<WriteFailed> for End {
    fn from(_: WriteFailed) -> Self {
        End::Gone
    }
}

/// Feeds `messages` and flushes once, all within `WRITE_TIMEOUT`; how many it wrote.
pub async fn write_all(sink: &mut Sink, messages: Vec<Message>) -> Result<usize, WriteFailed> {
    let write = async {
        let mut wrote = 0;
        for m in messages {
            sink.feed(m).await.map_err(|_| WriteFailed)?;
            wrote += 1;
        }
        sink.flush().await.map_err(|_| WriteFailed)?;
        Ok(wrote)
    };
    tokio::time::timeout(WRITE_TIMEOUT, write).await.map_err(|_| WriteFailed)?
}

/// Keep-alive: intermediaries see traffic, and a dead peer shows up as a failed write.
pub async fn ping(sink: &mut Sink) -> Result<(), WriteFailed> {
    match tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::Ping(Vec::new()))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(WriteFailed),
    }
}

/// The closing handshake: our close frame, then the client's answer (for a moment), so the
/// socket is not torn down under data the client has yet to read.
pub async fn bye(sink: &mut Sink, stream: &mut Stream, code: u16, reason: &str) {
    // Close reasons are at most 123 bytes.
    let reason: String = reason.chars().take(100).collect();
    let close = Message::Close(Some((CloseCode::from(code), reason)));
    if !matches!(tokio::time::timeout(WRITE_TIMEOUT, sink.send(close)).await, Ok(Ok(()))) {
        return;
    }
    let answered = async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, answered).await;
    let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.close()).await;
}

/// The close codes a protocol gives a lapsed token, and what it tells a client whose access
/// token expired.
pub struct LapseCodes {
    pub expired: u16,
    pub expired_reason: &'static str,
    pub revoked: u16,
}

/// Checks a socket's token again: the caller as they stand now, `None` when the store could not
/// say (a hiccup is not a verdict on the session; look again next time), or how to close when
/// the token expired or its session, user or organization no longer stands.
pub async fn recheck_token(app: &App, token: &str, codes: &LapseCodes) -> Result<Option<Principal>, End> {
    match auth::user(&app.store, &app.auth_caches, &app.keys.ring(), token, app.access_ttl()).await {
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

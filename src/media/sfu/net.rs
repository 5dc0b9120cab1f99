//! One UDP socket for every peer connection (ICE multiplexing), and ICE over TCP on the same
//! port number for networks that let no UDP through.
//!
//! Each peer connection has its own ICE username fragment. A STUN binding request names it in
//! its USERNAME attribute (`<our ufrag>:<their ufrag>`), which tells which connection a new
//! remote address belongs to; from then on everything from that address (DTLS, SRTP, SRTCP)
//! goes to the same connection. The ICE agent of that connection still checks the request's
//! integrity with its password, so a guessed address mapping gains a stranger nothing: the
//! agent drops what it cannot authenticate and DTLS refuses a peer without the fingerprint.
//!
//! Over TCP (RFC 6544, passive on our side), each accepted connection carries RFC 4571 frames
//! (a 2-byte length, then a STUN, DTLS or SRTP packet); its first frame must be a binding
//! request, which names the peer connection the whole TCP connection then belongs to.
//! Outgoing frames for a remote address go to that address's TCP connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

use super::peer::PeerMsg;
use crate::ids::Id;
use crate::metrics::Metrics;

/// Datagrams larger than this are not media (the path MTU is far below it).
const DATAGRAM_MAX: usize = 2048;

/// Where inbound datagrams go.
#[derive(Clone)]
pub(super) struct Route {
    pub session: Id,
    pub tx: mpsc::Sender<PeerMsg>,
}

/// Connections by ICE username fragment and by the remote addresses they were reached from.
#[derive(Default)]
pub(super) struct Routes {
    by_ufrag: HashMap<String, Route>,
    by_addr: HashMap<SocketAddr, Route>,
}

impl Routes {
    pub fn add(&mut self, ufrag: String, route: Route) {
        self.by_ufrag.insert(ufrag, route);
    }

    /// Forgets a connection and every address that led to it.
    pub fn remove(&mut self, ufrag: &str, session: Id) {
        self.by_ufrag.remove(ufrag);
        self.by_addr.retain(|_, r| r.session != session);
    }
}

/// Reads the shared socket forever, handing each datagram to its connection. A connection
/// whose queue is full loses the datagram, as a congested network would.
pub(super) async fn read_loop(socket: Arc<UdpSocket>, routes: Arc<RwLock<Routes>>, metrics: Arc<Metrics>) {
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(v) => v,
            // ICMP errors for earlier sends surface here on Linux; they are not fatal.
            Err(e)
                if matches!(e.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset) =>
            {
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "media socket read failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let data = &buf[..n];
        let route = route_for(&routes, data, from);
        let Some(route) = route else {
            metrics.media_datagrams_unrouted.inc();
            continue;
        };
        let msg = PeerMsg::Datagram { data: BytesMut::from(data), from, at: Instant::now(), tcp: false };
        if route.tx.try_send(msg).is_err() {
            metrics.media_datagrams_dropped.inc();
        }
    }
}

fn route_for(routes: &RwLock<Routes>, data: &[u8], from: SocketAddr) -> Option<Route> {
    if let Some(ufrag) = binding_request_ufrag(data) {
        let mut w = routes.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let route = w.by_ufrag.get(ufrag)?.clone();
        let known = w.by_addr.get(&from).is_some_and(|r| r.session == route.session);
        if !known {
            w.by_addr.insert(from, route.clone());
        }
        return Some(route);
    }
    routes.read().unwrap_or_else(std::sync::PoisonError::into_inner).by_addr.get(&from).cloned()
}

/// The TCP connections' writers, by remote address.
pub(super) type TcpConns = Arc<std::sync::Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>>;

/// A frame larger than this is not media: the connection is dropped.
const TCP_FRAME_MAX: usize = 4096;
/// Frames queued for one TCP connection at most.
const TCP_QUEUE: usize = 1024;

/// Accepts ICE-TCP connections until the listener fails, at most `max` at once.
pub(super) async fn tcp_accept_loop(
    listener: TcpListener,
    routes: Arc<RwLock<Routes>>,
    conns: TcpConns,
    metrics: Arc<Metrics>,
    max: usize,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "media TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
        let _ = stream.set_nodelay(true);
        let (routes, conns, metrics) = (routes.clone(), conns.clone(), metrics.clone());
        tokio::spawn(async move {
            serve_tcp(stream, from, &routes, &conns, &metrics).await;
            conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&from);
            drop(permit);
        });
    }
}

/// One RFC 4571 frame; `None` at the end, on an error or on a frame that is not media.
async fn read_frame(rd: &mut OwnedReadHalf) -> Option<BytesMut> {
    let mut len = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(60), rd.read_exact(&mut len)).await.ok()?.ok()?;
    let n = usize::from(u16::from_be_bytes(len));
    if n == 0 || n > TCP_FRAME_MAX {
        return None;
    }
    let mut data = BytesMut::zeroed(n);
    rd.read_exact(&mut data).await.ok()?;
    Some(data)
}

async fn write_frames(mut wr: OwnedWriteHalf, mut out: mpsc::Receiver<Bytes>) {
    while let Some(b) = out.recv().await {
        let Ok(n) = u16::try_from(b.len()) else { continue };
        if wr.write_all(&n.to_be_bytes()).await.is_err() || wr.write_all(&b).await.is_err() {
            return;
        }
    }
}

async fn serve_tcp(
    stream: tokio::net::TcpStream,
    from: SocketAddr,
    routes: &RwLock<Routes>,
    conns: &TcpConns,
    metrics: &Metrics,
) {
    let (mut rd, wr) = stream.into_split();
    // The first frame names the connection; nothing comes before it.
    let Some(first) = read_frame(&mut rd).await else { return };
    let route = binding_request_ufrag(&first)
        .and_then(|u| routes.read().unwrap_or_else(std::sync::PoisonError::into_inner).by_ufrag.get(u).cloned());
    let Some(route) = route else {
        metrics.media_datagrams_unrouted.inc();
        return;
    };
    let (tx, out) = mpsc::channel::<Bytes>(TCP_QUEUE);
    conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(from, tx);
    let writer = tokio::spawn(write_frames(wr, out));
    let mut frame = Some(first);
    while let Some(data) = frame {
        let msg = PeerMsg::Datagram { data, from, at: Instant::now(), tcp: true };
        if route.tx.try_send(msg).is_err() {
            metrics.media_datagrams_dropped.inc();
        }
        frame = read_frame(&mut rd).await;
    }
    writer.abort();
}

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const BINDING_REQUEST: u16 = 0x0001;
const ATTR_USERNAME: u16 = 0x0006;

/// Our ufrag from a STUN binding request's USERNAME (`ours:theirs`), if `data` is one.
pub fn binding_request_ufrag(data: &[u8]) -> Option<&str> {
    if data.len() < 20 || data[4..8] != MAGIC_COOKIE {
        return None;
    }
    let kind = u16::from_be_bytes([data[0], data[1]]);
    if kind != BINDING_REQUEST {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
    let attrs = data.get(20..20 + len)?;
    let mut at = 0;
    while at + 4 <= attrs.len() {
        let typ = u16::from_be_bytes([attrs[at], attrs[at + 1]]);
        let alen = usize::from(u16::from_be_bytes([attrs[at + 2], attrs[at + 3]]));
        let value = attrs.get(at + 4..at + 4 + alen)?;
        if typ == ATTR_USERNAME {
            let name = std::str::from_utf8(value).ok()?;
            return name.split(':').next();
        }
        at += 4 + alen.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (typ, value) in attrs {
            body.extend_from_slice(&typ.to_be_bytes());
            body.extend_from_slice(&(value.len() as u16).to_be_bytes());
            body.extend_from_slice(value);
            body.resize(body.len().div_ceil(4) * 4, 0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn finds_our_ufrag_after_other_attributes() {
        let m = binding(&[(0x0024, &[0, 0, 0, 1]), (ATTR_USERNAME, b"abcd:wxyz"), (0x0008, &[0; 20])]);
        assert_eq!(binding_request_ufrag(&m), Some("abcd"));
    }

    #[test]
    fn ignores_other_messages_and_truncation() {
        let mut m = binding(&[(ATTR_USERNAME, b"abcd:wxyz")]);
        assert_eq!(binding_request_ufrag(&m[..m.len() - 2]), None);
        m[1] = 0x01; // still a request of type 0x0101? no: a success response
        m[0] = 0x01;
        assert_eq!(binding_request_ufrag(&m), None);
        assert_eq!(binding_request_ufrag(&[0x80, 0x60, 0, 0]), None); // RTP
    }
}

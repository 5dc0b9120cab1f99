//! The built-in TURN server (RFC 5766, over UDP and TCP on the same port) and the time-limited
//! credentials the API hands out.
//!
//! Credentials follow the TURN REST convention coturn and browsers' ICE configs use: the
//! username is `<expiry unix seconds>:<user id>`, the password is base64(HMAC-SHA1(secret,
//! username)). The server recomputes the password from the username, so it keeps no list of
//! credentials, refuses an expired username, and knows whose allocation it is. The secret is
//! derived from the vault's master key: credentials survive a restart and end with a rotation.
//!
//! TURN over TCP (for networks that let no UDP out) carries STUN messages and ChannelData
//! frames back to back on the stream; `TcpFramed` cuts them apart so each accepted connection
//! looks like a packet connection with one peer, served by a TURN server of its own (a TCP
//! client's allocations belong to its connection anyway) that closes with it. Connections are
//! capped by `media.turn_tcp_connections_max`.
//!
//! Relays never reach this host's loopback, multicast or unspecified addresses (a TURN server
//! must not become a way into the services beside it); `media.turn_allow_loopback_peers` lifts
//! the loopback part for tests and single-box setups.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;
use turn::auth::{AuthHandler, generate_auth_key};
use turn::relay::RelayAddressGenerator;
use turn::relay::relay_range::RelayAddressGeneratorRanges;
use turn::server::Server;
use turn::server::config::{ConnConfig, ServerConfig};
use webrtc_util::Conn;
use webrtc_util::vnet::net::Net;

use crate::config::MediaConfig;
use crate::ids::Id;

/// The realm of every credential.
pub const REALM: &str = "outpost";

/// Credentials for one user, and where to use them.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// `turn:host:port?transport=udp`.
    pub urls: Vec<String>,
    pub username: String,
    pub password: String,
    pub expires_at_s: u64,
}

/// A running TURN server.
pub struct Turn {
    server: Server,
    secret: Arc<[u8; 32]>,
    urls: Vec<String>,
    ttl: Duration,
    tcp: Arc<TcpSide>,
}

/// What serving TURN over TCP needs: the listener's settings and one server per connection.
struct TcpSide {
    auth: Arc<RestAuth>,
    relay: RelaySettings,
    servers: Mutex<HashMap<u64, Arc<Server>>>,
    next: AtomicU64,
    slots: Arc<Semaphore>,
}

/// How relayed addresses are made.
#[derive(Clone)]
struct RelaySettings {
    public: IpAddr,
    bind: IpAddr,
    min_port: u16,
    max_port: u16,
    allow_loopback: bool,
}

impl RelaySettings {
    fn generator(&self) -> FilteredRelays {
        FilteredRelays {
            inner: RelayAddressGeneratorRanges {
                relay_address: self.public,
                min_port: self.min_port,
                max_port: self.max_port,
                max_retries: 16,
                address: self.bind.to_string(),
                net: Arc::new(Net::new(None)),
            },
            allow_loopback: self.allow_loopback,
        }
    }
}

/// Whether a relay may exchange datagrams with `peer`.
fn peer_allowed(peer: IpAddr, allow_loopback: bool) -> bool {
    let ip = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    };
    !(ip.is_unspecified() || ip.is_multicast() || (ip.is_loopback() && !allow_loopback))
}

/// Relays on a port range whose sockets refuse the peers `peer_allowed` refuses.
struct FilteredRelays {
    inner: RelayAddressGeneratorRanges,
    allow_loopback: bool,
}

#[async_trait::async_trait]
impl RelayAddressGenerator for FilteredRelays {
    fn validate(&self) -> Result<(), turn::Error> {
        self.inner.validate()
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        let (conn, addr) = self.inner.allocate_conn(use_ipv4, requested_port).await?;
        Ok((Arc::new(PeerFilter { inner: conn, allow_loopback: self.allow_loopback }), addr))
    }
}

/// A relay socket that neither sends to nor hears from a refused peer.
struct PeerFilter {
    inner: Arc<dyn Conn + Send + Sync>,
    allow_loopback: bool,
}

#[async_trait::async_trait]
impl Conn for PeerFilter {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        self.inner.connect(addr).await
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.inner.recv_from(buf).await?;
            if peer_allowed(from.ip(), self.allow_loopback) {
                return Ok((n, from));
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.inner.send(buf).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if !peer_allowed(target.ip(), self.allow_loopback) {
            // Dropped, as a datagram to nowhere would be.
            return Ok(buf.len());
        }
        self.inner.send_to(buf, target).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr()
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.inner.close().await
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

async fn server_on(
    conn: Arc<dyn Conn + Send + Sync>,
    relay: &RelaySettings,
    auth: Arc<RestAuth>,
) -> Result<Server, TurnError> {
    Server::new(ServerConfig {
        conn_configs: vec![ConnConfig { conn, relay_addr_generator: Box::new(relay.generator()) }],
        realm: REALM.to_owned(),
        auth_handler: auth,
        channel_bind_timeout: Duration::ZERO,
        alloc_close_notify: None,
    })
    .await
    .map_err(|e| TurnError::Start(e.to_string()))
}

#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("cannot listen for TURN on {addr}: {detail}")]
    Listen { addr: SocketAddr, detail: String },
    #[error("the TURN server did not start: {0}")]
    Start(String),
}

impl Turn {
    /// Starts the server if the config asks for one.
    pub async fn start(cfg: &MediaConfig, secret: [u8; 32]) -> Result<Option<Self>, TurnError> {
        let Some(addr) = cfg.turn_listen else {
            return Ok(None);
        };
        let listen_err = |e: std::io::Error| TurnError::Listen { addr, detail: e.to_string() };
        // TCP on the same port (with port 0, the one UDP was given).
        let (conn, tcp_listener) = super::bind_udp_and_tcp(addr, true).await.map_err(listen_err)?;
        let tcp_listener =
            tcp_listener.unwrap_or_else(|| Err(std::io::Error::other("no TCP listener"))).map_err(listen_err)?;
        let local = conn.local_addr().map_err(listen_err)?;
        let public = cfg.public_ip.unwrap_or(if addr.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            addr.ip()
        });
        let relay = RelaySettings {
            public,
            bind: addr.ip(),
            min_port: cfg.turn_relay_port_min,
            max_port: cfg.turn_relay_port_max,
            allow_loopback: cfg.turn_allow_loopback_peers,
        };
        let auth = Arc::new(RestAuth { secret: Arc::new(secret) });
        let server = server_on(Arc::new(conn), &relay, auth.clone()).await?;
        let host = match public {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        };
        let urls = vec![
            format!("turn:{host}:{}?transport=udp", local.port()),
            format!("turn:{host}:{}?transport=tcp", local.port()),
        ];
        let tcp = Arc::new(TcpSide {
            auth: auth.clone(),
            relay,
            servers: Mutex::default(),
            next: AtomicU64::new(0),
            slots: Arc::new(Semaphore::new(cfg.turn_tcp_connections_max)),
        });
        tokio::spawn(tcp.clone().accept(tcp_listener));
        Ok(Some(Self {
            server,
            secret: auth.secret.clone(),
            urls,
            ttl: Duration::from_secs(cfg.turn_credential_ttl_s),
            tcp,
        }))
    }

    /// Fresh credentials for `user`.
    pub fn credentials(&self, user: Id) -> Credentials {
        let expires_at_s = (SystemTime::now() + self.ttl).duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let username = format!("{expires_at_s}:{user}");
        let password = password(&self.secret, &username);
        Credentials { urls: self.urls.clone(), username, password, expires_at_s }
    }

    /// Allocations open now, over UDP and TCP.
    pub async fn allocations(&self) -> usize {
        let mut n = self.server.get_allocations_info(None).await.map_or(0, |m| m.len());
        let tcp: Vec<Arc<Server>> = self.tcp.lock().values().cloned().collect();
        for server in tcp {
            n += server.get_allocations_info(None).await.map_or(0, |m| m.len());
        }
        n
    }

    /// Keeps the allocation gauge current, for as long as the server runs.
    pub async fn watch(self: Arc<Self>, metrics: Arc<crate::metrics::Metrics>) {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            metrics.turn_allocations.set(self.allocations().await as i64);
        }
    }

    pub async fn close(&self) {
        if let Err(e) = self.server.close().await {
            tracing::warn!(error = %e, "closing the TURN server");
        }
        let tcp: Vec<Arc<Server>> = self.tcp.lock().drain().map(|(_, s)| s).collect();
        for server in tcp {
            let _ = server.close().await;
        }
    }
}

impl TcpSide {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Server>>> {
        self.servers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Accepts TURN-over-TCP connections for as long as the server runs.
    async fn accept(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, from) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "TURN over TCP: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                tracing::warn!(%from, "TURN over TCP: too many connections; refused one");
                continue;
            };
            let side = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = side.serve(stream).await {
                    tracing::debug!(%from, error = %e, "TURN over TCP connection failed");
                }
            });
        }
    }

    /// Serves one connection with a TURN server of its own until the connection ends.
    async fn serve(&self, stream: TcpStream) -> Result<(), TurnError> {
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(TcpFramed::new(stream).map_err(|e| TurnError::Start(e.to_string()))?);
        let ended = conn.ended.clone();
        let server = Arc::new(server_on(conn, &self.relay, self.auth.clone()).await?);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, server.clone());
        ended.notified().await;
        self.lock().remove(&id);
        let _ = server.close().await;
        Ok(())
    }
}

/// A TCP connection carrying TURN, seen as a packet connection with one peer: STUN messages
/// (20-byte header with their length) and ChannelData frames (4-byte header, padded to four
/// bytes on a stream, RFC 5766 §11.5) cut apart on reading and padded on writing.
pub struct TcpFramed {
    read: tokio::sync::Mutex<OwnedReadHalf>,
    write: tokio::sync::Mutex<OwnedWriteHalf>,
    local: SocketAddr,
    remote: SocketAddr,
    /// Told once the stream ends (or breaks).
    pub ended: Arc<Notify>,
}

impl TcpFramed {
    pub fn new(stream: TcpStream) -> std::io::Result<Self> {
        let (local, remote) = (stream.local_addr()?, stream.peer_addr()?);
        let (read, write) = stream.into_split();
        Ok(Self {
            read: tokio::sync::Mutex::new(read),
            write: tokio::sync::Mutex::new(write),
            local,
            remote,
            ended: Arc::new(Notify::new()),
        })
    }

    async fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut r = self.read.lock().await;
        let mut head = [0u8; 4];
        r.read_exact(&mut head).await?;
        let body = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let channel_data = head[0] & 0xC0 == 0x40;
        let len = if channel_data { 4 + body } else { 20 + body };
        if len > buf.len() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "a TURN frame larger than the buffer"));
        }
        buf[..4].copy_from_slice(&head);
        r.read_exact(&mut buf[4..len]).await?;
        if channel_data {
            let mut pad = [0u8; 3];
            r.read_exact(&mut pad[..padding(len)]).await?;
        }
        Ok(len)
    }
}

/// Bytes that pad a ChannelData frame of `len` bytes to four on a stream.
fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

#[async_trait::async_trait]
impl Conn for TcpFramed {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        match self.read_frame(buf).await {
            Ok(n) => Ok((n, self.remote)),
            Err(e) => {
                self.ended.notify_one();
                Err(e.into())
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.send_to(buf, self.remote).await
    }

    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        let mut w = self.write.lock().await;
        w.write_all(buf).await?;
        if buf.first().is_some_and(|b| b & 0xC0 == 0x40) {
            w.write_all(&[0u8; 3][..padding(buf.len())]).await?;
        }
        Ok(buf.len())
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.remote)
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.ended.notify_one();
        let _ = self.write.lock().await.shutdown().await;
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

fn password(secret: &[u8; 32], username: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    STANDARD.encode(hmac::sign(&key, username.as_bytes()).as_ref())
}

/// Checks REST-style usernames: not expired, signed with our secret.
struct RestAuth {
    secret: Arc<[u8; 32]>,
}

impl AuthHandler for RestAuth {
    fn auth_handle(&self, username: &str, realm: &str, src: SocketAddr) -> Result<Vec<u8>, turn::Error> {
        let expiry = username
            .split_once(':')
            .and_then(|(t, _)| t.parse::<u64>().ok())
            .ok_or_else(|| turn::Error::Other("not a username this server gave out".into()))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if expiry < now {
            tracing::debug!(%src, "expired TURN credentials");
            return Err(turn::Error::Other("expired credentials".into()));
        }
        Ok(generate_auth_key(username, realm, &password(&self.secret, username)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_keep_away_from_this_hosts_own_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or_else(|_| unreachable!());
        for refused in ["127.0.0.1", "::1", "::ffff:127.0.0.1", "0.0.0.0", "224.0.0.1", "ff02::1"] {
            assert!(!peer_allowed(ip(refused), false), "{refused}");
        }
        for allowed in ["192.168.1.20", "10.0.0.7", "203.0.113.9", "2001:db8::1"] {
            assert!(peer_allowed(ip(allowed), false), "{allowed}");
        }
        assert!(peer_allowed(ip("127.0.0.1"), true));
    }

    #[test]
    fn usernames_are_checked_for_expiry_and_form() {
        let auth = RestAuth { secret: Arc::new([7; 32]) };
        let src: SocketAddr = "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!());
        assert!(auth.auth_handle("1:someone", REALM, src).is_err(), "expired");
        assert!(auth.auth_handle("someone", REALM, src).is_err(), "not ours");
        let later = format!("{}:someone", u64::MAX / 2);
        let key = auth.auth_handle(&later, REALM, src).ok();
        assert_eq!(key, Some(generate_auth_key(&later, REALM, &password(&[7; 32], &later))));
    }
}

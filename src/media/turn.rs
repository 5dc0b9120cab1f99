//! The built-in TURN server (UDP, RFC 5766) and the time-limited credentials the API hands out.
//!
//! Credentials follow the TURN REST convention coturn and browsers' ICE configs use: the
//! username is `<expiry unix seconds>:<user id>`, the password is base64(HMAC-SHA1(secret,
//! username)). The server recomputes the password from the username, so it keeps no list of
//! credentials, refuses an expired username, and knows whose allocation it is. The secret is
//! derived from the vault's master key: credentials survive a restart and end with a rotation.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;
use turn::auth::{AuthHandler, generate_auth_key};
use turn::relay::relay_range::RelayAddressGeneratorRanges;
use turn::server::Server;
use turn::server::config::{ConnConfig, ServerConfig};
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
    url: String,
    ttl: Duration,
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
        let conn = tokio::net::UdpSocket::bind(addr).await.map_err(listen_err)?;
        let local = conn.local_addr().map_err(listen_err)?;
        let public = cfg.public_ip.unwrap_or(if addr.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            addr.ip()
        });
        let secret = Arc::new(secret);
        let server = Server::new(ServerConfig {
            conn_configs: vec![ConnConfig {
                conn: Arc::new(conn),
                relay_addr_generator: Box::new(RelayAddressGeneratorRanges {
                    relay_address: public,
                    min_port: cfg.turn_relay_port_min,
                    max_port: cfg.turn_relay_port_max,
                    max_retries: 16,
                    address: addr.ip().to_string(),
                    net: Arc::new(Net::new(None)),
                }),
            }],
            realm: REALM.to_owned(),
            auth_handler: Arc::new(RestAuth { secret: secret.clone() }),
            channel_bind_timeout: Duration::ZERO,
            alloc_close_notify: None,
        })
        .await
        .map_err(|e| TurnError::Start(e.to_string()))?;
        let host = match public {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        };
        let url = format!("turn:{host}:{}?transport=udp", local.port());
        Ok(Some(Self { server, secret, url, ttl: Duration::from_secs(cfg.turn_credential_ttl_s) }))
    }

    /// Fresh credentials for `user`.
    pub fn credentials(&self, user: Id) -> Credentials {
        let expires_at_s = (SystemTime::now() + self.ttl).duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let username = format!("{expires_at_s}:{user}");
        let password = password(&self.secret, &username);
        Credentials { urls: vec![self.url.clone()], username, password, expires_at_s }
    }

    /// Allocations open now.
    pub async fn allocations(&self) -> usize {
        self.server.get_allocations_info(None).await.map_or(0, |m| m.len())
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

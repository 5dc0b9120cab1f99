//! Egress: every call Outpost makes to the outside (webhook deliveries, health checks, the
//! service gateway, identity providers) goes through [`Egress`]: one HTTP client, with
//!
//! - **the address check before any packet**: a name is resolved once per connection attempt
//!   and only the addresses the policy lets through are handed to the connector, so a name that
//!   resolves to a refused address (or is rebound to one between checks) is never connected to;
//!   an address written in the URL is checked the same way before the request is sent. Refused
//!   unless the operator allow-lists them (`egress.allow_cidrs`): loopback, private, link-local
//!   (cloud metadata), shared (CGNAT), multicast, documentation, benchmarking and reserved
//!   ranges, and IPv6 forms that carry one of them (mapped, NAT64, 6to4) or tunnel (Teredo);
//! - redirects followed only as far as `egress.redirects_max`, each target checked again;
//! - no proxy from the environment (a proxy would connect where the check never looked);
//! - timeouts for connecting and for the whole call, a cap on the answer's bytes read;
//! - calls in flight bounded overall and per host;
//! - [`Breaker`], the one circuit breaker type.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// Address ranges outbound calls may reach although they are not public (loopback,
    /// private, link-local, ...), as CIDRs: `["10.20.0.0/16", "127.0.0.1/32", "fd00::/8"]`. An
    /// edge box calling services on its own network lists them here. Empty: public addresses
    /// only.
    pub allow_cidrs: Vec<String>,
    /// Reach only the ranges in `allow_cidrs`: public addresses are refused too, and host names
    /// other than `localhost` are refused before any lookup, so no call (and no DNS query)
    /// leaves for anywhere else. For an offline box, or a test run that must send nothing off
    /// the machine.
    pub allowed_only: bool,
    /// How long opening a connection may take.
    pub connect_timeout_ms: u64,
    /// How long a whole call may take (connecting, sending, the answer's head and body).
    pub timeout_ms: u64,
    /// An answer's body is read up to this many bytes; the rest is not read.
    pub response_bytes_max: u64,
    /// Redirects followed at most, each target checked like the first; 0 follows none.
    pub redirects_max: usize,
    /// Calls in flight at once, overall; more wait for a turn.
    pub concurrency_max: usize,
    /// Calls in flight at once to one host; more wait for a turn.
    pub per_host_concurrency_max: usize,
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self {
            allow_cidrs: Vec::new(),
            allowed_only: false,
            connect_timeout_ms: 5_000,
            timeout_ms: 15_000,
            response_bytes_max: 64 * 1024,
            redirects_max: 0,
            concurrency_max: 256,
            per_host_concurrency_max: 16,
        }
    }
}

impl EgressConfig {
    /// What is wrong with it, as (key, reason) pairs.
    pub fn issues(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, c) in self.allow_cidrs.iter().enumerate() {
            if let Err(e) = Cidr::from_str(c) {
                out.push((format!("egress.allow_cidrs.{i}"), e));
            }
        }
        if self.connect_timeout_ms < 10 {
            out.push(("egress.connect_timeout_ms".into(), "must be at least 10".into()));
        }
        if self.timeout_ms < self.connect_timeout_ms {
            out.push(("egress.timeout_ms".into(), "must be at least egress.connect_timeout_ms".into()));
        }
        if self.response_bytes_max == 0 {
            out.push(("egress.response_bytes_max".into(), "must be at least 1".into()));
        }
        if self.redirects_max > 10 {
            out.push(("egress.redirects_max".into(), "must be at most 10".into()));
        }
        if self.concurrency_max == 0 {
            out.push(("egress.concurrency_max".into(), "must be at least 1".into()));
        }
        if self.per_host_concurrency_max == 0 {
            out.push(("egress.per_host_concurrency_max".into(), "must be at least 1".into()));
        }
        out
    }
}

/// An address range: `addr/len`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let net = IpAddr::from_str(addr.trim()).map_err(|_| format!("{s:?} is not an address or CIDR"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        let cidr = Cidr { net, len };
        if !cidr.contains(net) || cidr.masked(net) != net {
            return Err(format!("{s:?} has bits set past its prefix length"));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

impl Cidr {
    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask = if self.len == 0 { 0 } else { u32::MAX << (32 - u32::from(self.len)) };
                IpAddr::V4(Ipv4Addr::from(bits & mask))
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = if self.len == 0 { 0 } else { u128::MAX << (128 - u32::from(self.len)) };
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.net.is_ipv4() == ip.is_ipv4() && self.masked(ip) == self.net
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Cidr {
    Cidr { net: IpAddr::V4(Ipv4Addr::new(a, b, c, d)), len }
}

const fn v6(a: u16, b: u16, c: u16, d: u16, len: u8) -> Cidr {
    Cidr { net: IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0)), len }
}

/// Ranges that are not the public internet, with the reason each is refused. IPv6 forms that
/// carry an IPv4 address (mapped, NAT64, 6to4) are judged by that address first.
const REFUSED: &[(Cidr, &str)] = &[
    (v4(0, 0, 0, 0, 8), "\"this network\" (0.0.0.0/8)"),
    (v4(10, 0, 0, 0, 8), "private (10.0.0.0/8)"),
    (v4(100, 64, 0, 0, 10), "shared address space (100.64.0.0/10)"),
    (v4(127, 0, 0, 0, 8), "loopback (127.0.0.0/8)"),
    (v4(169, 254, 0, 0, 16), "link-local, where cloud metadata answers (169.254.0.0/16)"),
    (v4(172, 16, 0, 0, 12), "private (172.16.0.0/12)"),
    (v4(192, 0, 0, 0, 24), "IETF protocol assignments (192.0.0.0/24)"),
    (v4(192, 0, 2, 0, 24), "documentation (192.0.2.0/24)"),
    (v4(192, 88, 99, 0, 24), "6to4 relay anycast (192.88.99.0/24)"),
    (v4(192, 168, 0, 0, 16), "private (192.168.0.0/16)"),
    (v4(198, 18, 0, 0, 15), "benchmarking (198.18.0.0/15)"),
    (v4(198, 51, 100, 0, 24), "documentation (198.51.100.0/24)"),
    (v4(203, 0, 113, 0, 24), "documentation (203.0.113.0/24)"),
    (v4(224, 0, 0, 0, 4), "multicast (224.0.0.0/4)"),
    (v4(240, 0, 0, 0, 4), "reserved (240.0.0.0/4)"),
    (v6(0, 0, 0, 0, 96), "unspecified, loopback or IPv4-compatible (::/96)"),
    (v6(0x64, 0xff9b, 1, 0, 48), "local-use NAT64 (64:ff9b:1::/48)"),
    (v6(0x100, 0, 0, 0, 64), "discard-only (100::/64)"),
    (v6(0x2001, 0, 0, 0, 32), "Teredo (2001::/32)"),
    (v6(0x2001, 0xdb8, 0, 0, 32), "documentation (2001:db8::/32)"),
    (v6(0xfc00, 0, 0, 0, 7), "unique local, private (fc00::/7)"),
    (v6(0xfe80, 0, 0, 0, 10), "link-local (fe80::/10)"),
    (v6(0xfec0, 0, 0, 0, 10), "site-local (fec0::/10, deprecated)"),
    (v6(0xff00, 0, 0, 0, 8), "multicast (ff00::/8)"),
];

/// The IPv4 address an IPv6 address carries, and in which form: mapped (::ffff:0:0/96), NAT64
/// (64:ff9b::/96), 6to4 (2002::/16).
fn carried_v4(a: Ipv6Addr) -> Option<(Ipv4Addr, &'static str)> {
    let s = a.segments();
    let low32 = Ipv4Addr::from((u128::from(a) & 0xffff_ffff) as u32);
    if let Some(inner) = a.to_ipv4_mapped() {
        Some((inner, "an IPv4-mapped address"))
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some((low32, "a NAT64 address"))
    } else if s[0] == 0x2002 {
        Some((Ipv4Addr::from((u32::from(s[1]) << 16) | u32::from(s[2])), "a 6to4 address"))
    } else {
        None
    }
}

/// Why `ip` is not a public address, or `None` if it is one.
pub fn not_public(ip: IpAddr) -> Option<String> {
    if let IpAddr::V6(a) = ip {
        if let Some((inner, form)) = carried_v4(a) {
            return not_public(IpAddr::V4(inner)).map(|why| format!("{why}, as {form}"));
        }
    }
    REFUSED.iter().find(|(range, _)| range.contains(ip)).map(|(_, why)| (*why).to_owned())
}

/// Which addresses outbound calls may reach: public ones, and the operator's allow-list.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allow: Vec<Cidr>,
    allowed_only: bool,
}

impl AddressPolicy {
    pub fn new(cfg: &EgressConfig) -> Result<Self, String> {
        let allow = cfg.allow_cidrs.iter().map(|c| Cidr::from_str(c)).collect::<Result<_, _>>()?;
        Ok(Self { allow, allowed_only: cfg.allowed_only })
    }

    /// `Ok` if a call may look `host` up (every name, unless `egress.allowed_only`).
    pub fn check_name(&self, host: &str) -> Result<(), String> {
        if self.allowed_only && !host.trim_end_matches('.').eq_ignore_ascii_case("localhost") {
            return Err(format!(
                "{host} is a name, and egress.allowed_only calls addresses in egress.allow_cidrs only"
            ));
        }
        Ok(())
    }

    /// `Ok` if a call may connect to `ip`; else why not.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        let canonical = match ip {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        if self.allow.iter().any(|c| c.contains(ip) || c.contains(canonical)) {
            return Ok(());
        }
        match not_public(ip) {
            Some(why) => Err(format!("{ip} is {why}, and not in egress.allow_cidrs")),
            None if self.allowed_only => Err(format!("{ip} is not in egress.allow_cidrs (egress.allowed_only)")),
            None => Ok(()),
        }
    }
}

/// Why a call did not happen or did not finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("the URL cannot be called: {0}")]
    BadUrl(String),
    #[error("refused before connecting: {0}")]
    Refused(String),
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("no complete answer within {0} ms")]
    Timeout(u64),
    #[error("redirected more than {0} times")]
    TooManyRedirects(usize),
    #[error("the call failed: {0}")]
    Failed(String),
}

/// A refusal raised inside the client (by the resolver or the redirect policy), found again in
/// the error it caused.
#[derive(Debug)]
struct RefusedHere(String);

impl fmt::Display for RefusedHere {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RefusedHere {}

/// Too many redirects, raised by the redirect policy.
#[derive(Debug)]
struct TooManyHere(usize);

impl fmt::Display for TooManyHere {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redirected more than {} times", self.0)
    }
}

impl std::error::Error for TooManyHere {}

/// The resolver the client connects through: only the addresses the policy lets through.
struct Guard {
    policy: Arc<AddressPolicy>,
}

impl Guard {
    /// `host`'s addresses that the policy lets through; an error names why none is.
    async fn allowed(policy: Arc<AddressPolicy>, host: String) -> Result<Vec<SocketAddr>, BoxError> {
        policy.check_name(&host).map_err(|why| Box::new(RefusedHere(why)) as BoxError)?;
        let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
        let mut refused = None;
        let allowed: Vec<SocketAddr> = found
            .into_iter()
            .filter(|a| match policy.check(a.ip()) {
                Ok(()) => true,
                Err(why) => {
                    refused.get_or_insert(why);
                    false
                }
            })
            .collect();
        if allowed.is_empty() {
            let why = refused.map_or_else(|| format!("{host} has no address"), |w| format!("{host}: {w}"));
            return Err(Box::new(RefusedHere(why)));
        }
        Ok(allowed)
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl reqwest::dns::Resolve for Guard {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (policy, host) = (self.policy.clone(), name.as_str().to_owned());
        Box::pin(
            async move { Guard::allowed(policy, host).await.map(|a| Box::new(a.into_iter()) as reqwest::dns::Addrs) },
        )
    }
}

/// The same check for the MCP client's connections (reqwest 0.13, see [`Egress::mcp_client`]).
impl reqwest_mcp::dns::Resolve for Guard {
    fn resolve(&self, name: reqwest_mcp::dns::Name) -> reqwest_mcp::dns::Resolving {
        let (policy, host) = (self.policy.clone(), name.as_str().to_owned());
        Box::pin(async move {
            Guard::allowed(policy, host).await.map(|a| Box::new(a.into_iter()) as reqwest_mcp::dns::Addrs)
        })
    }
}

fn mcp_client(cfg: &EgressConfig, policy: &Arc<AddressPolicy>) -> Result<reqwest_mcp::Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system roots leave https refused, not the server down.
    let found = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(found.certs);
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("the MCP client's TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest_mcp::Client::builder()
        .no_proxy()
        .dns_resolver(Arc::new(Guard { policy: policy.clone() }))
        .redirect(reqwest_mcp::redirect::Policy::none())
        .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(concat!("Outpost/", env!("CARGO_PKG_VERSION")))
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| format!("the MCP client: {e}"))
}

/// A URL's target checked before anything is sent: scheme, no credentials in it, and an
/// address written in it.
pub fn check_url(policy: &AddressPolicy, url: &reqwest::Url) -> Result<(), EgressError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(EgressError::BadUrl(format!("the scheme must be http or https, not {:?}", url.scheme())));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(EgressError::BadUrl("credentials do not belong in the URL".into()));
    }
    match url.host() {
        None => Err(EgressError::BadUrl("the URL names no host".into())),
        Some(url::Host::Ipv4(a)) => policy.check(IpAddr::V4(a)).map_err(EgressError::Refused),
        Some(url::Host::Ipv6(a)) => policy.check(IpAddr::V6(a)).map_err(EgressError::Refused),
        Some(url::Host::Domain(d)) => policy.check_name(d).map_err(EgressError::Refused),
    }
}

/// Bounds of one call, where they differ from the configuration's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// The whole call: connecting, sending, the answer's head and body.
    pub timeout_ms: u64,
    /// The answer's body is read up to this many bytes.
    pub response_bytes_max: u64,
}

/// An answer, its body read up to the cap.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
    /// The body went on past the cap.
    pub truncated: bool,
}

struct Inner {
    client: reqwest::Client,
    /// MCP sessions' client (see [`Egress::mcp_client`]).
    mcp: reqwest_mcp::Client,
    policy: Arc<AddressPolicy>,
    cfg: EgressConfig,
    all: Arc<Semaphore>,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// The one outbound HTTP client (see the module's documentation).
#[derive(Clone)]
pub struct Egress {
    inner: Arc<Inner>,
}

impl Egress {
    pub fn new(cfg: &EgressConfig) -> Result<Self, String> {
        let policy = Arc::new(AddressPolicy::new(cfg)?);
        let redirect_policy = policy.clone();
        let redirects_max = cfg.redirects_max;
        let redirects = if redirects_max == 0 {
            reqwest::redirect::Policy::none()
        } else {
            reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > redirects_max {
                    return attempt.error(TooManyHere(redirects_max));
                }
                match check_url(&redirect_policy, attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(e) => {
                        let why = format!("a redirect to {}: {e}", attempt.url());
                        attempt.error(RefusedHere(why))
                    }
                }
            })
        };
        let client = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(Guard { policy: policy.clone() }))
            .redirect(redirects)
            .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(cfg.per_host_concurrency_max)
            .user_agent(concat!("Outpost/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("the outbound client: {e}"))?;
        let mcp = mcp_client(cfg, &policy)?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                mcp,
                policy,
                cfg: cfg.clone(),
                all: Arc::new(Semaphore::new(cfg.concurrency_max)),
                hosts: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The address policy calls are held to (for checking a URL when it is registered).
    pub fn policy(&self) -> &AddressPolicy {
        &self.inner.policy
    }

    /// [`check_url`], and for a name, its addresses resolved and checked now (a refusal said
    /// before a connection is tried; the resolver checks them again at each connection).
    pub async fn check_resolved(&self, url: &reqwest::Url) -> Result<(), EgressError> {
        check_url(&self.inner.policy, url)?;
        let Some(url::Host::Domain(d)) = url.host() else { return Ok(()) };
        match Guard::allowed(self.inner.policy.clone(), d.to_owned()).await {
            Ok(_) => Ok(()),
            Err(e) => match e.downcast::<RefusedHere>() {
                Ok(r) => Err(EgressError::Refused(r.0)),
                Err(e) => Err(EgressError::Connect(e.to_string())),
            },
        }
    }

    /// The client MCP sessions run on: the MCP SDK's Streamable HTTP transport is written for
    /// reqwest 0.13, so it has its own client, held to the same rules as the rest: the same
    /// resolver (every address checked before a connection), no proxy, no redirects at all,
    /// the same connect timeout, TLS with rustls on ring and the system's roots. There is no
    /// whole-call timeout (an MCP session's event stream stays open); each request has its own
    /// (`src/mcp.rs`). A URL written with an address must still be checked with
    /// [`check_url`] before it is used.
    pub fn mcp_client(&self) -> reqwest_mcp::Client {
        self.inner.mcp.clone()
    }

    /// A request to build; send it with [`Egress::send`].
    pub fn request(&self, method: reqwest::Method, url: reqwest::Url) -> reqwest::RequestBuilder {
        self.inner.client.request(method, url)
    }

    /// Sends `request` once: checked, within the concurrency bounds and the timeouts, its
    /// answer's body read up to the cap.
    pub async fn send(&self, request: reqwest::Request) -> Result<Answer, EgressError> {
        let cfg = &self.inner.cfg;
        self.send_within(request, CallLimits { timeout_ms: cfg.timeout_ms, response_bytes_max: cfg.response_bytes_max })
            .await
    }

    /// [`Egress::send`] with a call's own timeout and cap on the answer's body.
    pub async fn send_within(&self, mut request: reqwest::Request, limits: CallLimits) -> Result<Answer, EgressError> {
        check_url(&self.inner.policy, request.url())?;
        let host = request.url().host_str().unwrap_or_default().to_ascii_lowercase();
        let _turns = self.turns(&host).await;
        let CallLimits { timeout_ms, response_bytes_max } = limits;
        *request.timeout_mut() = Some(Duration::from_millis(timeout_ms));
        let call = async {
            let mut resp = self.inner.client.execute(request).await.map_err(|e| classify(&e, timeout_ms))?;
            let status = resp.status().as_u16();
            let headers = std::mem::take(resp.headers_mut());
            let cap = usize::try_from(response_bytes_max).unwrap_or(usize::MAX);
            let mut body = Vec::new();
            let mut truncated = false;
            while let Some(chunk) = resp.chunk().await.map_err(|e| classify(&e, timeout_ms))? {
                let room = cap - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if chunk.len() > room {
                    truncated = true;
                    break;
                }
            }
            Ok(Answer { status, headers, body, truncated })
        };
        // The client's own timeout covers the body too; this one also bounds the wait for turns.
        tokio::time::timeout(Duration::from_millis(timeout_ms), call)
            .await
            .unwrap_or(Err(EgressError::Timeout(timeout_ms)))
    }

    /// A turn overall and one for `host`, waited for in that order.
    async fn turns(&self, host: &str) -> (OwnedSemaphorePermit, OwnedSemaphorePermit) {
        let all = self.inner.all.clone().acquire_owned().await.expect("never closed");
        let one = {
            let mut hosts = self.inner.hosts.lock().expect("hosts");
            // Hosts nobody is calling are forgotten, so the map holds only hosts in use.
            if hosts.len() > 1024 {
                hosts.retain(|_, s| Arc::strong_count(s) > 1);
            }
            hosts
                .entry(host.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.inner.cfg.per_host_concurrency_max)))
                .clone()
        };
        let one = one.acquire_owned().await.expect("never closed");
        (all, one)
    }
}

/// The error a failed call becomes; a refusal raised inside the client is found in its chain.
fn classify(e: &reqwest::Error, timeout_ms: u64) -> EgressError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<RefusedHere>() {
            return EgressError::Refused(r.0.clone());
        }
        if let Some(t) = s.downcast_ref::<TooManyHere>() {
            return EgressError::TooManyRedirects(t.0);
        }
        source = s.source();
    }
    if e.is_timeout() {
        EgressError::Timeout(timeout_ms)
    } else if e.is_connect() {
        EgressError::Connect(chain(e))
    } else {
        EgressError::Failed(chain(e))
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A circuit breaker's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Outcomes are counted over this window (in ten slices, the oldest dropped as time goes).
    pub window: Duration,
    /// The breaker opens only once the window holds at least this many calls ...
    pub min_calls: u32,
    /// ... and at least this share of them failed.
    pub failure_ratio: f64,
    /// How long it stays open before letting probes through.
    pub open_for: Duration,
    /// Probes let through at once when half-open; this many successes in a row close it.
    pub probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30),
            min_calls: 10,
            failure_ratio: 0.5,
            open_for: Duration::from_secs(15),
            probes: 3,
        }
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

const SLICES: usize = 10;

#[derive(Debug)]
enum Phase {
    Closed { slices: [(u32, u32); SLICES], slice_at: Instant, current: usize },
    Open { until: Instant },
    HalfOpen { in_flight: u32, succeeded: u32 },
}

/// Closed → open after too many failures over a window → half-open probes after a while →
/// closed after enough of them succeed (open again on a failed probe).
#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    phase: Mutex<Phase>,
}

/// Leave to make one call; give it back with [`Breaker::record`].
#[derive(Debug)]
#[must_use = "record the call's outcome"]
pub struct Pass {
    probe: bool,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        Self { cfg, phase: Mutex::new(Self::closed()) }
    }

    fn closed() -> Phase {
        Phase::Closed { slices: [(0, 0); SLICES], slice_at: Instant::now(), current: 0 }
    }

    pub fn state(&self) -> BreakerState {
        let mut phase = self.phase.lock().expect("breaker");
        self.advance(&mut phase);
        match *phase {
            Phase::Closed { .. } => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Open whose time is up turns half-open; a closed window drops its stale slices.
    fn advance(&self, phase: &mut Phase) {
        let now = Instant::now();
        match phase {
            Phase::Open { until } if now >= *until => *phase = Phase::HalfOpen { in_flight: 0, succeeded: 0 },
            Phase::Closed { slices, slice_at, current } => {
                let slice = self.cfg.window / SLICES as u32;
                let mut steps = 0;
                while now.duration_since(*slice_at) >= slice && steps <= SLICES {
                    *slice_at += slice;
                    *current = (*current + 1) % SLICES;
                    slices[*current] = (0, 0);
                    steps += 1;
                }
                if steps > SLICES {
                    *slice_at = now;
                }
            }
            _ => {}
        }
    }

    /// Leave to call, or how long until the breaker lets a call through.
    pub fn admit(&self) -> Result<Pass, Duration> {
        let mut phase = self.phase.lock().expect("breaker");
        self.advance(&mut phase);
        match &mut *phase {
            Phase::Closed { .. } => Ok(Pass { probe: false }),
            Phase::Open { until } => Err(until.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))),
            Phase::HalfOpen { in_flight, .. } if *in_flight < self.cfg.probes => {
                *in_flight += 1;
                Ok(Pass { probe: true })
            }
            Phase::HalfOpen { .. } => Err(self.cfg.open_for / SLICES as u32),
        }
    }

    /// How the call went. The pass is taken so that each is recorded once.
    #[allow(clippy::needless_pass_by_value)]
    pub fn record(&self, pass: Pass, ok: bool) {
        let Pass { probe } = pass;
        let mut phase = self.phase.lock().expect("breaker");
        self.advance(&mut phase);
        let reopen = Phase::Open { until: Instant::now() + self.cfg.open_for };
        match &mut *phase {
            Phase::Closed { slices, current, .. } => {
                if probe {
                    return;
                }
                let s = &mut slices[*current];
                s.0 += 1;
                s.1 += u32::from(!ok);
                let (calls, failed) = slices.iter().fold((0, 0), |(c, f), s| (c + s.0, f + s.1));
                if calls >= self.cfg.min_calls && f64::from(failed) >= self.cfg.failure_ratio * f64::from(calls) {
                    *phase = reopen;
                }
            }
            Phase::HalfOpen { in_flight, succeeded } if probe => {
                *in_flight = in_flight.saturating_sub(1);
                if ok {
                    *succeeded += 1;
                    if *succeeded >= self.cfg.probes {
                        *phase = Self::closed();
                    }
                } else {
                    *phase = reopen;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refused_ranges_cover_every_way_to_name_a_local_address() {
        for s in [
            "0.0.0.0",
            "127.0.0.1",
            "127.0.0.2",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.100.100.200",
            "192.0.0.170",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b:1::1",
            "2002:7f00:1::",
            "2001:0:4136:e378::1",
            "2001:db8::1",
            "fe80::1",
            "fec0::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "100::1",
        ] {
            assert!(not_public(ip(s)).is_some(), "{s} must be refused");
        }
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "169.253.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::",
            "2001:4860::8888",
        ] {
            assert_eq!(not_public(ip(s)), None, "{s} is public");
        }
    }

    #[test]
    fn the_allow_list_opens_exactly_its_ranges() {
        let cfg = EgressConfig { allow_cidrs: vec!["127.0.0.2/32".into(), "fd00::/8".into()], ..Default::default() };
        let p = AddressPolicy::new(&cfg).unwrap();
        assert_eq!(p.check(ip("127.0.0.2")), Ok(()));
        assert_eq!(p.check(ip("::ffff:127.0.0.2")), Ok(()));
        assert_eq!(p.check(ip("fd12::1")), Ok(()));
        let refused = p.check(ip("127.0.0.1")).unwrap_err();
        assert!(refused.contains("loopback") && refused.contains("egress.allow_cidrs"), "{refused}");
        assert!(p.check(ip("fc00::1")).is_err());
        assert!(p.check(ip("8.8.8.8")).is_ok());
    }

    #[test]
    fn allowed_only_reaches_the_allow_list_and_looks_up_no_name_but_localhost() {
        let cfg = EgressConfig { allow_cidrs: vec!["127.0.0.0/8".into()], allowed_only: true, ..Default::default() };
        let p = AddressPolicy::new(&cfg).unwrap();
        assert_eq!(p.check(ip("127.0.0.1")), Ok(()));
        assert!(p.check(ip("8.8.8.8")).unwrap_err().contains("allowed_only"));
        assert!(p.check(ip("10.0.0.1")).is_err());
        let check = |u: &str| check_url(&p, &reqwest::Url::parse(u).unwrap());
        assert_eq!(check("http://localhost:9/"), Ok(()));
        assert_eq!(check("http://LOCALHOST./"), Ok(()));
        assert_eq!(check("http://127.0.0.1:9/"), Ok(()));
        for refused in ["https://example.org/hook", "http://1.1.1.1/", "http://localhost.example.org/"] {
            assert!(matches!(check(refused), Err(EgressError::Refused(_))), "{refused}");
        }
    }

    #[test]
    fn cidrs_are_checked_when_the_config_is() {
        for bad in ["10.0.0.1/8", "10.0.0.0/33", "nonsense", "::1/129", "10.0.0.0/"] {
            let cfg = EgressConfig { allow_cidrs: vec![bad.into()], ..Default::default() };
            let issues = cfg.issues();
            assert_eq!(issues.len(), 1, "{bad}: {issues:?}");
            assert_eq!(issues[0].0, "egress.allow_cidrs.0");
        }
        assert!(EgressConfig::default().issues().is_empty());
        assert_eq!(Cidr::from_str("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
    }

    #[test]
    fn urls_are_checked_before_anything_is_sent() {
        let p = AddressPolicy::default();
        let check = |u: &str| check_url(&p, &reqwest::Url::parse(u).unwrap());
        assert!(matches!(check("http://127.0.0.1:9/"), Err(EgressError::Refused(_))));
        // The URL standard reads these as 127.0.0.1 too.
        assert!(matches!(check("http://2130706433/"), Err(EgressError::Refused(_))));
        assert!(matches!(check("http://0x7f.1/"), Err(EgressError::Refused(_))));
        assert!(matches!(check("http://[::ffff:7f00:1]/"), Err(EgressError::Refused(_))));
        assert!(matches!(check("ftp://example.org/"), Err(EgressError::BadUrl(_))));
        assert!(matches!(check("https://user:pw@example.org/"), Err(EgressError::BadUrl(_))));
        assert_eq!(check("https://example.org/hook"), Ok(()));
    }

    /// A loopback server on `ip` answering every request with `answer` (or nothing, if empty);
    /// counts the connections it accepted.
    async fn server(ip: &str, answer: String) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        server_with(ip, |_| answer).await
    }

    /// The same, its answer made knowing its own address.
    async fn server_with(
        ip: &str,
        answer: impl FnOnce(SocketAddr) -> String,
    ) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = answer(addr);
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    if answer.is_empty() {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    let _ = conn.write_all(answer.as_bytes()).await;
                });
            }
        });
        (addr, accepted)
    }

    fn ok_with(body: &str) -> String {
        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
    }

    fn egress(allow: &[&str], redirects_max: usize) -> Egress {
        let cfg = EgressConfig {
            allow_cidrs: allow.iter().map(|s| (*s).to_owned()).collect(),
            redirects_max,
            response_bytes_max: 1024,
            timeout_ms: 500,
            connect_timeout_ms: 200,
            ..Default::default()
        };
        Egress::new(&cfg).unwrap()
    }

    async fn get(e: &Egress, url: &str) -> Result<Answer, EgressError> {
        e.send(e.request(reqwest::Method::GET, url.parse().unwrap()).build().unwrap()).await
    }

    #[tokio::test]
    async fn refused_targets_get_no_connection() {
        let (addr, accepted) = server("127.0.0.2", ok_with("hi")).await;
        let (local, local_accepted) = server("127.0.0.1", ok_with("hi")).await;
        let e = egress(&[], 0);
        let by_address = get(&e, &format!("http://{addr}/")).await.unwrap_err();
        assert!(matches!(&by_address, EgressError::Refused(why) if why.contains("loopback")), "{by_address:?}");
        // A name is resolved and its addresses checked before the connector sees them.
        let by_name = get(&e, &format!("http://localhost:{}/", local.port())).await.unwrap_err();
        assert!(matches!(&by_name, EgressError::Refused(why) if why.contains("localhost")), "{by_name:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(local_accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
        // Allow-listed, the same address is called, and the answer is capped.
        let e = egress(&["127.0.0.2/32"], 0);
        let small = get(&e, &format!("http://{addr}/")).await.unwrap();
        assert_eq!((small.status, small.body.as_slice(), small.truncated), (200, &b"hi"[..], false));
        let (big, _) = server("127.0.0.2", ok_with(&"x".repeat(5000))).await;
        let capped = get(&e, &format!("http://{big}/")).await.unwrap();
        assert_eq!((capped.body.len(), capped.truncated), (1024, true));
        // Only the listed address: its neighbour on loopback stays refused.
        assert!(matches!(get(&e, &format!("http://{local}/")).await, Err(EgressError::Refused(_))));
    }

    #[tokio::test]
    async fn redirects_are_followed_only_to_allowed_targets() {
        let (refused, refused_accepted) = server("127.0.0.3", ok_with("secret")).await;
        let (allowed, _) = server("127.0.0.2", ok_with("fine")).await;
        let redirect = |to: String| format!("HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\n\r\n");
        let (to_refused, _) = server("127.0.0.2", redirect(format!("http://{refused}/"))).await;
        let (to_name, _) = server("127.0.0.2", redirect(format!("http://localhost:{}/", refused.port()))).await;
        let (to_allowed, _) = server("127.0.0.2", redirect(format!("http://{allowed}/"))).await;
        let e = egress(&["127.0.0.2/32"], 2);
        let err = get(&e, &format!("http://{to_refused}/")).await.unwrap_err();
        assert!(matches!(&err, EgressError::Refused(why) if why.contains("a redirect to")), "{err:?}");
        // A name in the redirect is resolved and checked like any other.
        let err = get(&e, &format!("http://{to_name}/")).await.unwrap_err();
        assert!(matches!(&err, EgressError::Refused(why) if why.contains("localhost")), "{err:?}");
        assert_eq!(refused_accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
        let followed = get(&e, &format!("http://{to_allowed}/")).await.unwrap();
        assert_eq!(followed.body, b"fine");
        // A loop ends at the limit.
        let (looping, _) = server_with("127.0.0.2", |me| redirect(format!("http://{me}/"))).await;
        assert_eq!(get(&e, &format!("http://{looping}/")).await.unwrap_err(), EgressError::TooManyRedirects(2));
        // With redirects off, the 302 itself is the answer.
        let e = egress(&["127.0.0.2/32"], 0);
        assert_eq!(get(&e, &format!("http://{to_allowed}/")).await.unwrap().status, 302);
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let (silent, _) = server("127.0.0.2", String::new()).await;
        let e = egress(&["127.0.0.2/32"], 0);
        assert_eq!(get(&e, &format!("http://{silent}/")).await.unwrap_err(), EgressError::Timeout(500));
    }

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            window: Duration::from_secs(10),
            min_calls: 4,
            failure_ratio: 0.5,
            open_for: Duration::from_secs(5),
            probes: 2,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_breaker_opens_half_opens_and_closes() {
        let b = breaker();
        // Failures below the minimum number of calls do not open it.
        for _ in 0..3 {
            b.record(b.admit().unwrap(), false);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.record(b.admit().unwrap(), false);
        assert_eq!(b.state(), BreakerState::Open);
        let wait = b.admit().unwrap_err();
        assert!(wait <= Duration::from_secs(5) && wait > Duration::from_secs(4), "{wait:?}");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // Two probes at once, no more.
        let (p1, p2) = (b.admit().unwrap(), b.admit().unwrap());
        assert!(b.admit().is_err());
        b.record(p1, true);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.record(p2, true);
        assert_eq!(b.state(), BreakerState::Closed);
        // A failed probe opens it again.
        for _ in 0..4 {
            b.record(b.admit().unwrap(), false);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = b.admit().unwrap();
        b.record(probe, false);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn old_failures_leave_the_window() {
        let b = breaker();
        for _ in 0..3 {
            b.record(b.admit().unwrap(), false);
        }
        // Past the window, the three failures no longer count with the next one.
        tokio::time::advance(Duration::from_secs(11)).await;
        b.record(b.admit().unwrap(), false);
        assert_eq!(b.state(), BreakerState::Closed);
        // Mostly successes keep it closed.
        for i in 0..20 {
            b.record(b.admit().unwrap(), i % 4 != 3);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
